"""`archc verify`: NumPy -O0 against onnxruntime -O2 on derived inputs, on every bundled spec
and every imported fixture (full sequence, and step by step through the KV cache); a wrong
ONNX lowering fails it, and would not on inputs shorter than the window it drops."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest import ROOT, SPECS

import archc
from archc.cli import main
from archc.hf import DECODERS, import_hf
from archc.ops import OPS
from archc.verify import compare, verify

FIXTURES = ROOT / "tests" / "fixtures" / "hf"
FOLDERS = sorted(p.name for p in FIXTURES.iterdir() if (p / "config.json").exists())
SEQ2SEQ = ("bart", "marian", "mbart", "mt5", "pegasus", "t5")
SPEC = {s.stem: s for s in SPECS}
# bundled specs that decode through a KV cache, and those whose cache form is refused (why)
CACHED = {"custom_attention", "fid", "gpt2_small", "gptj_parallel", "interleaved_local_global",
          "llama_tiny", "moe_general", "pondernet", "sandwich", "scale_norm", "t5_small_style"}
NO_CACHE_FORM = {"retro": "attention mask"}
# features the derived inputs must exercise: (case, words in one feature line)
EXPECTED = [("interleaved_local_global", "seq 11 > sliding window 4"),
            ("interleaved_local_global", "seq 11 > KV cache window 4"),
            ("txl_memory", "> a memory keeping its last 8"),
            ("longformer_full", "> dilated band reaching 6"),
            ("longformer_style", "> band of 2 each side"),
            ("moe_general", "every expert hit in 2/2 routers (8 experts)"),
            ("mistral", "seq 11 > sliding window 4"), ("mistral", "> KV cache window 4"),
            ("gemma2", "softcap 5"), ("gemma2", "softcap 3"), ("gemma2", "> sliding window 4"),
            ("longformer_w6", "> band of 3 each side"), ("modernbert", "> band of"),
            ("mixtral", "every expert hit in 2/2 routers (4 experts)"),
            ("qwen2_moe", "every expert hit"), ("deepseek_v3", "every expert hit"),
            ("gpt_oss", "every expert hit"), ("switch", "every expert hit in 2/2 routers"),
            ("t5_small_style", "> the last relative bucket at 128"),
            ("t5", "> the last relative bucket at 20"), ("t5_variant", "> log-spaced")]


def _modes(report) -> set[str]:
    return {c.mode for c in report.checks}


def _expect_features(case: str, report) -> None:
    for name, words in EXPECTED:
        if name == case:
            assert any(words in f for f in report.plan.features), (words, report.render())
    padded = [f for f in report.plan.features if "left-padded" in f]
    if "attention_mask" in report.plan.inputs:
        assert padded, report.render()
        mask = report.plan.inputs["attention_mask"]
        assert mask[0].all() and not mask[1, ..., 0].any() and not mask[2, ..., -1].any()


_REPORTS: dict[tuple[str, str], object] = {}  # each case verified once per session


@pytest.fixture(scope="module")
def imports(tmp_path_factory):
    return tmp_path_factory.mktemp("verify_hf")


def _report(kind: str, name: str, root):
    if (kind, name) not in _REPORTS:
        if kind == "spec":
            _REPORTS[kind, name] = verify(archc.parse_file(SPEC[name]))
        else:
            imported = import_hf(FIXTURES / name, root / name)
            _REPORTS[kind, name] = verify(archc.parse(imported.spec, str(root / name /
                                                                      "model.arch")),
                                          weights=str(root / name / "model.safetensors"))
    return _REPORTS[kind, name]


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_every_bundled_spec_verifies(spec, imports):
    report = _report("spec", spec.stem, imports)
    assert report.passed, report.render()
    assert {c.output for c in report.checks if c.mode == "full"} == \
        set(archc.lower(archc.parse_file(spec)).outputs)
    if spec.stem in CACHED:
        assert _modes(report) == {"full", "incremental"}, report.render()
        assert report.plan.seq > report.plan.prefill
    else:
        assert _modes(report) == {"full"}
        if spec.stem in NO_CACHE_FORM:
            assert NO_CACHE_FORM[spec.stem] in report.skipped["incremental"]
    assert not report.plan.gaps, report.render()
    _expect_features(spec.stem, report)


@pytest.mark.parametrize("name", FOLDERS)
def test_every_imported_fixture_verifies(name, imports):
    report = _report("hf", name, imports)
    assert report.passed, report.render()
    family = json.loads((FIXTURES / name / "config.json").read_text())["model_type"]
    if family in DECODERS or family in SEQ2SEQ:
        # transformers' own cached decoding differs from its one pass for length-dependent
        # RoPE scaling (dynamic NTK, Phi-3's long factors): there `steps` is the check
        if name in ("llama_dynamic", "phi3"):
            assert "differently from one pass" in report.skipped["incremental"]
            assert _modes(report) == {"full", "steps"}
        else:
            assert "incremental" in _modes(report), report.render()
    assert not report.plan.gaps, report.render()
    _expect_features(name, report)


# Every spelling the norm and GELU rules know, written out by hand.
SPELLED = """
model spelled {
  input input_ids: int64[batch, seq]
  x = embed(input_ids, 32, 16) as wte
  w = param(16, init = ones) as scale
  n = x * rsqrt(mean(x * x, keepdims = true) + 1e-6) * w
  n = n / sqrt(mean(n ** 2.0, keepdims = true) + 1e-6) * w
  c = n - mean(n, keepdims = true)
  l = c * rsqrt(mean(c * c, keepdims = true) + 1e-5) * w
  c = l - mean(l, keepdims = true)
  l = c / sqrt(mean(c ** 2.0, keepdims = true) + 1e-5) * w
  h = l * 0.5 * (erf(l / 1.4142135623730951) + 1.0)
  output y = h * 0.5 * (tanh((h + h * h * h * 0.044715) * 0.7978845608028654) + 1.0)
}
"""
# archc's own `rms_norm` / `layer_norm` ops: no .arch layer emits them (IR built by hand,
# tests/test_fusions.py), so no spec can reach these rules
UNREACHABLE = {"rms_norm_op", "layer_norm_op", "layer_norm_op_bias"}


def test_every_fusion_rule_is_verified_somewhere(imports):
    from archc.passes.fusions import RULESETS

    spelled = verify(archc.parse(SPELLED))
    assert spelled.passed, spelled.render()
    reports = [spelled] + [_report("spec", s.stem, imports) for s in SPECS] + \
        [_report("hf", name, imports) for name in FOLDERS]
    fired = {rule for r in reports for f in r.fusions.values() for rule in f}
    rules = {r.name for rs in RULESETS for r in rs}
    assert rules - UNREACHABLE <= fired, sorted(rules - UNREACHABLE - fired)


# ---------------------------------------------------------------- it can fail
def _drop(monkeypatch, op: str, attr: str) -> None:
    """Make `op`'s ONNX lowering ignore `attr`, as an exporter that drops a feature would."""
    real = OPS[op]

    def lowering(b, *args, **attrs):
        attrs.pop(attr, None)
        return real.onnx(b, *args, **attrs)

    monkeypatch.setitem(OPS, op, dataclasses.replace(real, onnx=lowering))


def test_a_dropped_sliding_window_fails_and_short_inputs_would_miss_it(monkeypatch, capsys):
    spec = SPEC["interleaved_local_global"]  # local layers: a causal window of 4
    _drop(monkeypatch, "causal_mask", "window")  # the mask, and the fused kernel's own window
    _drop(monkeypatch, "sdpa", "window")
    short = verify(archc.parse_file(spec), seq=4, prefill=2)
    assert short.passed, short.render()  # no key is ever 4 places back: the bug hides
    assert any("sliding window 4 needs seq > 4" in g for g in short.plan.gaps)
    report = verify(archc.parse_file(spec))
    assert not report.passed and report.plan.seq > 4
    full = next(c for c in report.checks if c.mode == "full")
    assert not full.passed and full.max_abs > 1e-2 and full.argmax < 1
    assert main(["verify", str(spec)]) == 1
    out, err = capsys.readouterr()
    assert "FAIL" in out and "error[E0610]" in err and "`logits` (full)" in err


def test_a_dropped_softcap_fails(monkeypatch, tmp_path, capsys):
    import_hf(FIXTURES / "gemma2", tmp_path)
    _drop(monkeypatch, "sdpa", "softcap")
    assert main(["verify", str(tmp_path / "model.arch"), "--weights",
                 str(tmp_path / "model.safetensors"), "--json"]) == 1
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert not data["passed"] and "error[E0610]" in err
    assert any(not c["passed"] and c["mode"] == "full" for c in data["checks"])


def test_an_export_onnxruntime_refuses_is_a_failure_not_a_crash(monkeypatch):
    real = OPS["sdpa"]

    def broken(b, q, *rest, **attrs):
        return b.op("GroupQueryAttention", q, domain="com.microsoft")  # missing inputs

    monkeypatch.setitem(OPS, "sdpa", dataclasses.replace(real, onnx=broken))
    report = verify(archc.parse_file(SPEC["llama_tiny"]))
    full = next(c for c in report.checks if c.mode == "full")
    assert not report.passed and full.problem.startswith("export or onnxruntime failed")


def test_compare_measures_what_it_says():
    ref = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], np.float32)
    c = compare("full", "y", ref, ref + np.float32(1e-3), tol=1e-4)
    assert not c.passed and c.max_abs == pytest.approx(1e-3, rel=1e-3)
    assert c.max_rel == pytest.approx(1e-3 / 3, rel=1e-3) and c.argmax == 1.0
    swapped = compare("full", "y", ref, ref[::-1], tol=1.0)
    assert swapped.argmax == 0.0 and swapped.cosine == pytest.approx(10 / 14)
    assert compare("full", "y", ref, ref[:1], tol=1).problem.startswith("shape")
    nan = ref.copy()
    nan[0, 0] = np.nan
    assert compare("full", "y", ref, nan, tol=1).problem == "NaN or infinite values differ"
    assert compare("full", "y", nan, nan, tol=1).problem == "the NumPy reference holds NaN"
    inf = ref.copy()
    inf[1, 2] = -np.inf  # a masked logit, the same on both sides
    assert compare("full", "y", inf, inf.copy(), tol=0).passed
    real = np.array([True, False])
    assert compare("i", "y", ref, np.stack([ref[0], ref[1] + 5]), 1e-6, real).passed


# ---------------------------------------------------------------- the command line
def test_cli_text_and_json(capsys):
    spec = str(SPEC["llama_tiny"])
    assert main(["verify", spec, "--seed", "3"]) == 0
    out = capsys.readouterr().out
    for words in ("NumPy -O0 against onnxruntime -O2", "batch 3, seq 8, prefill 3",
                  "fusions   full:", "sdpa", "incremental", "PASS: 2/2"):
        assert words in out, out
    assert main(["verify", spec, "--json", "--tol", "1e-3"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] and data["tolerance"] == 1e-3 and data["model"] == "llama_tiny"
    assert data["inputs"]["shapes"]["input_ids"] == [3, 8]
    assert [c["mode"] for c in data["checks"]] == ["full", "incremental"]
    for c in data["checks"]:
        assert set(c) == {"mode", "output", "shape", "compared", "max_abs", "max_rel",
                          "argmax", "cosine", "passed"}
        assert c["passed"] and c["max_abs"] <= 1e-3 and c["cosine"] > 0.999999
    assert data["fusions"]["full"] and data["skipped"] == {} and data["not_exercised"] == []


def test_cli_bad_input_is_a_diagnostic(tmp_path, capsys):
    spec = str(SPEC["llama_tiny"])
    assert main(["verify", str(tmp_path / "missing.arch")]) == 1
    assert "error[E0004]" in capsys.readouterr().err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    assert main(["verify", spec, "--weights", str(junk)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error[") and "Traceback" not in err
    other = tmp_path / "other.safetensors"  # weights of another model
    g = archc.compile(SPEC["scale_norm"])
    archc.save_weights(archc.init_params(g), str(other))
    assert main(["verify", spec, "--weights", str(other)]) == 1
    assert capsys.readouterr().err.startswith("error[")
    assert main(["verify", spec, "--tol", "-1"]) == 1
    assert "`--tol -1" in capsys.readouterr().err


def test_a_position_table_caps_the_sequence_and_the_report_says_what_it_misses():
    spec = """
model short_table {
  input input_ids: int64[batch, seq]
  input attention_mask: int64[batch, seq]
  x = embed(input_ids, 32, 16) as wte
  x = x + pos_embed(input_ids, 9, 16) as wpe
  x = x + attention(x, 2, causal, window = 12, mask = attention_mask) as attn
  output logits = lm_head(x, 32)
}
"""
    report = verify(archc.parse(spec))
    assert report.passed and report.plan.seq == 9 and report.plan.prefill == 4
    assert "sliding window 12 needs seq > 12, got 9 (the position tables stop at 9)" in \
        report.plan.gaps
    assert report.as_json()["not_exercised"] == report.plan.gaps
