"""Incremental decoding through the KV cache: every family's fixture, prefill K tokens then one
token a step, on both backends, against transformers' own cached decoding (within 1e-4)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import ROOT

import archc
from archc.cli import main
from archc.hf import DECODERS, import_hf
from archc.kvcache import Session, generate, incremental_logits
from archc.lower import lower

FIXTURES = ROOT / "tests" / "fixtures" / "hf"


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("imported")
    out = {}
    for fam in DECODERS:
        import_hf(FIXTURES / fam, root / fam)
        module = archc.parse_file(root / fam / "model.arch")
        g = archc.optimize(lower(module, cache=True), level=1, verify=True)
        out[fam] = (g, archc.load_weights(g, str(root / fam / "model.safetensors")), root / fam)
    return out


@pytest.mark.parametrize("family", DECODERS)
def test_incremental_logits_match_transformers(family, imported):
    g, w, _ = imported[family]
    ref = np.load(FIXTURES / family / "reference.npz")
    real = ref["attention_mask"].astype(bool)
    for backend in ("numpy", "onnxruntime"):
        got = incremental_logits(g, w, ref["input_ids"], ref["attention_mask"],
                                 int(ref["prefill"]), backend)
        err = np.abs(got - ref["incremental_logits"])[real].max()
        assert err <= 1e-4, f"{family} on {backend}: {err:.3g}"


def test_cache_layout_is_what_onnxruntime_users_expect(imported):
    g, w, _ = imported["llama"]  # GQA: 2 kv heads of 8 dims
    model = archc.export_onnx(g, w)
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
              for i in model.graph.input}
    outputs = [o.name for o in model.graph.output]
    assert inputs["past_key_values.0.key"] == ["batch", 2, "past", 8]
    assert inputs["attention_mask"] == ["batch", "past+seq"]
    assert outputs[0] == "logits" and outputs[1:3] == ["present.0.key", "present.0.value"]
    onnx.checker.check_model(model, full_check=True)


@pytest.mark.parametrize("family, bounded", [("mistral", [0, 1]), ("gemma2", [0, 2])])
def test_sliding_window_caches_are_bounded_by_the_window(family, bounded, imported):
    g, w, _ = imported[family]
    ref = np.load(FIXTURES / family / "reference.npz")
    for backend in ("numpy", "onnxruntime"):
        s = Session(g, w, backend)
        s.prefill(ref["input_ids"][:, :6], ref["attention_mask"][:, :6])
        s.step(ref["input_ids"][:, 6:7])
        lengths = [s.past[f"past_key_values.{i}.key"].shape[2] for i in range(len(s.past) // 2)]
        assert [i for i, n in enumerate(lengths) if n == 3] == bounded  # window 4 keeps 3
        assert all(n == 7 for i, n in enumerate(lengths) if i not in bounded)


def test_session_step_by_step_equals_one_pass(imported):
    g, w, _ = imported["llama"]
    full = archc.compile(imported["llama"][2] / "model.arch")
    ids = np.random.default_rng(0).integers(0, 96, (1, 6))
    want = archc.run(full, {"input_ids": ids, "attention_mask": np.ones_like(ids)}, w)["logits"]
    s = Session(g, w)
    got = [s.prefill(ids[:, :2])] + [s.step(ids[:, t:t + 1]) for t in range(2, 6)]
    np.testing.assert_allclose(np.concatenate(got, 1), want, atol=1e-5)
    assert s.past["past_key_values.0.key"].shape == (1, 2, 6, 8)


def test_generate_is_greedy_over_full_recomputation(imported):
    g, w, path = imported["gpt2"]
    full = archc.compile(path / "model.arch")
    ids = np.array([[5, 17, 3]])
    out = generate(g, w, ids, steps=4, backend="onnxruntime")
    seq = ids
    for _ in range(4):
        logits = archc.run(full, {"input_ids": seq, "attention_mask": np.ones_like(seq)}, w)
        seq = np.concatenate([seq, logits["logits"][:, -1].argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(out, seq)


def test_cli_incremental_and_generate(imported, tmp_path, capsys):
    _, _, path = imported["qwen2"]
    ref = np.load(FIXTURES / "qwen2" / "reference.npz")
    np.savez(tmp_path / "in.npz", input_ids=ref["input_ids"],
             attention_mask=ref["attention_mask"])
    spec, weights = str(path / "model.arch"), str(path / "model.safetensors")
    assert main(["run", spec, "--weights", weights, "--inputs", str(tmp_path / "in.npz"),
                 "--out", str(tmp_path / "o.npz"), "--incremental", "5",
                 "--backend", "onnxruntime"]) == 0
    with np.load(tmp_path / "o.npz") as f:
        err = np.abs(f["logits"] - ref["incremental_logits"])[ref["attention_mask"] == 1].max()
    assert err <= 1e-4
    assert main(["generate", spec, "--weights", weights, "--ids", "1,2,3", "--steps", "3"]) == 0
    assert len(capsys.readouterr().out.strip().split("\n")[-1].split(",")) == 6
    assert main(["compile", spec, "--weights", weights, "--kv-cache", "-o",
                 str(tmp_path / "m.onnx")]) == 0
    names = [i.name for i in onnx.load(str(tmp_path / "m.onnx")).graph.input]
    assert "past_key_values.1.value" in names


def test_an_encoder_asked_to_decode_incrementally_says_why(capsys):
    """BERT keeps no KV cache: its one cause (E0202) is reported, not the mask's shape error."""
    assert main(["compile", str(ROOT / "specs" / "bert_base.arch"), "--kv-cache", "-o",
                 "/dev/null"]) != 0
    err = capsys.readouterr().err
    assert "error[E0202]: model `bert_base` cannot decode incrementally" in err
    assert "error[E0201]" not in err


ENCODER = """model enc {
  input input_ids: int64[batch, seq]
  input attention_mask: int64[batch, seq]
  %s
  x = embed(input_ids, 100, 16)
  output h = attention(x, 2, mask = attention_mask)
}
"""


def _cached_codes(spec: str) -> list[str]:
    with pytest.raises(archc.ArchcError) as e:
        lower(archc.parse(spec), cache=True)
    return [d.code for d in e.value.diagnostics]


def test_e0202_is_found_whatever_the_symptom_says():
    """The cached lowering fails on a `require` whose text never names the widened `past+seq`
    dim: the spec lowers cleanly without a cache and keeps none, so the cause is still E0202."""
    check = 'require(dim(attention_mask, 1) == dim(input_ids, 1), "the mask must cover the ids")'
    lower(archc.parse(ENCODER % check))
    assert _cached_codes(ENCODER % check) == ["E0202"]


def test_a_broken_encoder_keeps_its_own_errors_under_the_cache():
    """A spec that fails without the cache too is broken, not an encoder asked to decode: its
    errors stand (the mask's `past+seq` shape error among them) and there is no E0202."""
    codes = _cached_codes(ENCODER % "y = no_such_name")
    assert "E0202" not in codes
    assert "E0201" in codes and "E0100" in codes


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_experts_with_a_token_mask_decode_through_the_cache(backend):
    """moe_general routes under `mask = attention_mask`, which with a cache covers past and new
    tokens: the router and the balance loss take the new tokens' part (`tail`). A left-padded
    row included, prefill 3 then a token a step equals one pass (1e-5)."""
    module = archc.parse_file(ROOT / "specs" / "moe_general.arch")
    full, cached = archc.optimize(lower(module), 1), archc.optimize(lower(module, cache=True), 1)
    w = archc.init_params(full, 3)
    ids = np.random.default_rng(5).integers(0, 512, (2, 7))
    mask = np.ones_like(ids)
    mask[1, :2] = 0
    want = archc.run(full, {"input_ids": ids, "attention_mask": mask}, w)["logits"]
    got = incremental_logits(cached, w, ids, mask, 3, backend)
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-5, rtol=0)
