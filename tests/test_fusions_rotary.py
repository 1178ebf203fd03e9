"""Rotary fusion and attention over a KV cache (issue 13): each rotary form (rotate-half,
interleaved, partial) under each rope scaling that lowers differently fuses to `rotary`, and
cached attention to `sdpa_past` (ONNX Attention or GroupQueryAttention with past and
present). Checked: what
fired, what must not and why, and the numbers: -O2 on NumPy and onnxruntime against the unfused
-O1 graph within 1e-5 (float32), incremental decoding against the full sequence within 1e-4,
and the imported transformers fixtures against transformers' own logits within 1e-4."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, perturbed_params
from safetensors.numpy import load_file
from test_fusions import G, fuse

import archc
from archc.backends.numpy_interp import run_graph
from archc.backends.onnx_export import export_onnx
from archc.backends.onnx_gate import outer_refs
from archc.backends.ort import run_onnx
from archc.hf import import_hf
from archc.kvcache import Session, incremental_logits
from archc.lower import lower
from archc.ops import sdpa_past

rng = np.random.default_rng(13)
LOWEST = float(np.finfo(np.float32).min)


def _f(*shape):
    return rng.standard_normal(shape).astype(np.float32)


# Each fused op against onnxruntime on its own one-node model (tests/test_ops.py requires a case
# per op); `sdpa_past`'s three results and `kv_present` are checked by the test below.
OP_CASES = {
    "rotary": [([_f(2, 3, 5, 8), _f(5, 4) * 3], {}),
               ([_f(2, 3, 5, 8), _f(2, 5, 4) * 3], {"interleaved": True, "scale": 1.3}),
               ([_f(1, 2, 4, 16), _f(4, 4) * 3], {"scale": 0.8}),
               ([_f(2, 2, 3, 12), _f(2, 3, 2) * 3], {"interleaved": True})],
    "sdpa_past": [], "kv_present": [],
}


@pytest.mark.parametrize("arrays, attrs", OP_CASES["rotary"])
def test_rotary_kernel_matches_onnxruntime(arrays, attrs):
    b = G()
    fuse(b, b.rotary(*(b.input(f"x{i}", a) for i, a in enumerate(arrays)), **attrs), {})


def _attention_ref(q, k, v, bias, scale):  # float64, query i is token P + i
    g = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, g, axis=1).astype(np.float64), np.repeat(v, g, axis=1)
    s = q.astype(np.float64) @ np.swapaxes(k, -1, -2) * scale + bias
    t, n = q.shape[2], k.shape[2]
    s = np.where(np.arange(n)[None] <= np.arange(n - t, n)[:, None], s, LOWEST)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize("lowering", ["concat", "onnx", "gqa"])
@pytest.mark.parametrize("past, new, d", [(5, 3, 8), (6, 1, 8), (0, 4, 8), (4, 1, 12)])
def test_sdpa_past_results_match_onnxruntime_and_the_formula(past, new, d, lowering,
                                                             monkeypatch):
    # with "gqa": GQA runs for (6, 1) and (0, 4); ONNX Attention for (5, 3) (several new tokens
    # after a past, batch 2) and for head size 12 (GQA takes multiples of 8)
    monkeypatch.setattr(sdpa_past, "CACHED_ATTENTION", lowering)
    b = G()
    q, k, v = b.f32("q", 2, 4, new, d), b.f32("k", 2, 2, new, d), b.f32("v", 2, 2, new, d)
    pk, pv = b.f32("pk", 2, 2, past, d), b.f32("pv", 2, 2, past, d)
    keep = np.ones((2, 1, new, past + new), bool)
    keep[1, :, :, :2] = False  # left padding of row 1; its first query then sees no key
    keep[1, :, 0, :] = False
    bias = b.input("bias", np.where(keep, 0, LOWEST).astype(np.float32))
    t = b.sdpa_past(q, k, v, pk, pv, bias, scale=0.3, causal=True)
    b.g.set_output("y", b.tuple_get(t, index=0))
    b.g.set_output("pk_out", b.kv_present(t, pk, k, index=1))
    b.g.set_output("pv_out", b.kv_present(t, pv, v, index=2))
    ours, theirs = run_graph(b.g, b.feeds, {}), run_onnx(export_onnx(b.g), b.feeds)
    f = b.feeds
    kk, vv = np.concatenate([f["pk"], f["k"]], 2), np.concatenate([f["pv"], f["v"]], 2)
    want = _attention_ref(f["q"], kk, vv, f["bias"], 0.3)
    np.testing.assert_allclose(ours["y"], want, atol=1e-5, rtol=0)
    for name, ref in (("y", ours["y"]), ("pk_out", kk), ("pv_out", vv)):
        assert theirs[name].shape == ref.shape
        np.testing.assert_allclose(theirs[name], ref, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- rotary forms and scalings
YARN = "scaling = yarn, factor = 4, original_max = 16"
LONG = ("scaling = longrope, factor = 2, original_max = 6, short_factor = [1, 1, 2, 2], "
        "long_factor = [1, 2, 4, 8]")
FORMS = [  # (rope, fused by, sequence lengths: both sides of a length-dependent switch)
    ("rope(theta = 100)", {"rotary_half": 1}, (5,)),
    ("rope(theta = 100, interleaved = true)", {"rotary_interleaved": 1}, (5,)),
    ("rope(theta = 100, fraction = 0.5)", {"rotary_half_partial": 1}, (5,)),
    ("rope(theta = 100, dim = 4, interleaved = true)", {"rotary_interleaved_partial": 1}, (5,)),
    ("rope(theta = 100, fraction = 0.5, interleaved = true, scaling = linear, factor = 4)",
     {"rotary_interleaved_partial": 1}, (5,)),
    ("rope(theta = 10000, scaling = llama3, factor = 8, original_max = 16)",
     {"rotary_half": 1}, (5,)),
    (f"rope(theta = 100, {YARN})", {"rotary_half": 1, "rotary_scaled": 1}, (5,)),
    (f"rope(theta = 100, interleaved = true, {YARN})",
     {"rotary_interleaved": 1, "rotary_scaled": 1}, (5,)),
    (f"rope(theta = 100, fraction = 0.5, interleaved = true, {YARN})",
     {"rotary_interleaved_partial": 1, "rotary_partial_scaled": 1}, (5,)),
    ("rope(theta = 100, scaling = dynamic, factor = 2, max_pos = 6)", {"rotary_half": 1},
     (5, 9)),
    (f"rope(theta = 100, fraction = 0.5, {LONG})",
     {"rotary_half_partial": 1, "rotary_partial_scaled": 1}, (5, 7)),
]


def _rotary_spec(rope: str, pos: str = "input_ids", extra: str = "") -> str:
    return f"""
    model m {{
      input input_ids: int64[batch, seq]
      input one: int64[1, 1]
      input s: float32[16]
      input q: float32[batch, 2, seq, 16]
      output y = rotary(q, positions({pos}), {rope}){extra}
    }}"""


def _both(src: str, seq: int):
    """(-O1 graph, -O2 graph, O1's NumPy output, O2's NumPy and onnxruntime outputs)."""
    module = archc.parse(src)
    o1, o2 = archc.optimize(lower(module), 1), archc.optimize(lower(module), 2, verify=True)
    used = {n.name for n in o1.inputs.values()}
    feeds = {k: v for k, v in {"input_ids": np.zeros((2, seq), np.int64), "q": _f(2, 2, seq, 16),
                               "one": np.zeros((1, 1), np.int64), "s": _f(16)}.items()
             if k in used}
    ref = archc.run(o1, feeds)["y"]
    return o1, o2, ref, [archc.run(o2, feeds, backend=b)["y"] for b in ("numpy", "onnxruntime")]


@pytest.mark.parametrize("rope, fired, seqs", FORMS, ids=[
    "half", "interleaved", "half_partial", "interleaved_partial", "linear", "llama3", "yarn",
    "yarn_interleaved", "yarn_partial", "dynamic", "longrope_partial"])
def test_rotary_forms_fuse_and_equal_the_unfused_graph(rope, fired, seqs):
    for seq in seqs:
        _, o2, ref, outs = _both(_rotary_spec(rope), seq)
        got = {k: v for k, v in o2.meta["fusions"].fired.items() if k.startswith("rotary")}
        assert got == fired
        ops = {n.op for n in o2.nodes() if n.kind == "op"}
        assert "rotary" in ops and "rope" not in ops
        for out in outs:
            np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


def test_rotary_does_not_fuse_angles_that_broadcast_over_the_tokens():
    # one angle row for every token: RotaryEmbedding wants a cos/sin row per token
    _, o2, ref, outs = _both(_rotary_spec("rope(theta = 100)", pos="one"), 5)
    report = o2.meta["fusions"]
    assert not any(k.startswith("rotary") for k in report.fired)
    assert "one row per token" in report.why_not["rotary_half"]
    for out in outs:
        np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


def test_a_tensor_multiplier_is_not_an_attention_factor():
    _, o2, ref, outs = _both(_rotary_spec("rope(theta = 100)", extra=" * s"), 5)
    report = o2.meta["fusions"]
    assert report.fired["rotary_half"] == 1 and "rotary_scaled" not in report.fired
    assert "must be a constant" in report.why_not["rotary_scaled"]
    for out in outs:
        np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- the KV cache: GQA with past
@pytest.fixture(scope="module")
def llama():
    module = archc.parse_file(ROOT / "specs" / "llama_tiny.arch")
    full = archc.optimize(lower(module), 1)
    o1 = archc.optimize(lower(module, cache=True), 1)
    o2 = archc.optimize(lower(module, cache=True), 2, verify=True)
    ids = np.random.default_rng(1).integers(0, 1024, (2, 9))
    mask = np.ones_like(ids)
    mask[1, :2] = 0  # left padding
    w = perturbed_params(full)
    return full, o1, o2, w, ids, mask


@pytest.mark.parametrize("lowering", ["concat", "onnx", "gqa"])
def test_cached_attention_fuses_to_attention_with_past(llama, lowering, monkeypatch):
    monkeypatch.setattr(sdpa_past, "CACHED_ATTENTION", lowering)
    _, _, o2, w, _, _ = llama
    fired = o2.meta["fusions"].fired
    assert fired["sdpa_past"] == 4 and fired["rotary_half"] == 8 and "sdpa_masked" not in fired
    model = export_onnx(o2, w)
    made_by = {o: n for n in model.graph.node for o in n.output}
    assert "RotaryEmbedding" in {n.op_type for n in model.graph.node}
    assert "Identity" not in {n.op_type for n in model.graph.node}
    # each layer: If(all ones and (one token or GQA can run),
    #                If(one token, Attention over the concats with no mask, GQA with past and no
    #                   bias),
    #                the CACHED_ATTENTION lowering),
    # and one If in front of them all that builds the bias only when an exact branch may run
    ifs = [n for n in model.graph.node if n.op_type == "If"]
    assert len(ifs) == 5 and not any(n.op_type == "Attention" for n in model.graph.node)
    (gate,) = [n for n in ifs if n.name == "gated_values"]
    assert {n.input[0] for n in ifs} == {gate.input[0]}  # the layers' condition, once

    def branch(node, which):
        return next(a.g for a in node.attribute if a.name == f"{which}_branch")

    for i in range(4):
        past = [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        node = made_by[f"present.{i}.key"]
        assert node in ifs and list(node.output[1:]) == [f"present.{i}.key",
                                                         f"present.{i}.value"]
        (inner,) = [m for m in branch(node, "then").node if m.op_type == "If"]
        step = branch(inner, "then")
        made = {o: m for m in step.node for o in m.output}
        (att,) = [m for m in step.node if m.op_type == "Attention"]
        assert len(att.input) == 3  # no mask: one token sees every key
        assert [made[o.name].input[0] for o in step.output[1:]] == past
        (gqa,) = [m for m in branch(inner, "else").node if m.op_type == "GroupQueryAttention"]
        assert list(gqa.input[3:5]) == past and len(gqa.input) == 7  # no bias
        assert not set(gate.output) & outer_refs(branch(node, "then"))
        other = branch(node, "else")
        assert set(gate.output) <= outer_refs(other)  # the bias and its row check
        made = {o: m for m in other.node for o in m.output}
        presents = [made[o.name] for o in other.output[1:]]
        if lowering == "concat":  # the presents are the Concats the Attention reads
            (att,) = [m for m in other.node if m.op_type == "Attention"]
            assert [m.op_type for m in presents] == ["Concat"] * 2
            assert [m.input[0] for m in presents] == past
            assert list(att.input[1:3]) == [m.output[0] for m in presents]
        elif lowering == "onnx":
            (att,) = [m for m in other.node if m.op_type == "Attention"]
            assert presents == [att, att] and list(att.input[4:6]) == past
        else:  # GQA with a bias where it can run, behind an If of its own
            assert presents[0].op_type == "If" and presents[0] is presents[1]
            (gqa,) = [m for m in branch(presents[0], "then").node
                      if m.op_type == "GroupQueryAttention"]
            assert list(gqa.input[3:5]) == past and len(gqa.input) == 11  # the bias


@pytest.mark.parametrize("lowering", ["concat", "onnx", "gqa"])
def test_incremental_decode_with_attention_past_equals_the_full_sequence(llama, lowering,
                                                                         monkeypatch):
    monkeypatch.setattr(sdpa_past, "CACHED_ATTENTION", lowering)
    full, o1, o2, w, ids, mask = llama
    ref = archc.run(full, {"input_ids": ids, "attention_mask": mask}, w)["logits"]
    real = mask.astype(bool)
    unfused = incremental_logits(o1, w, ids, mask, 4)
    for backend in ("numpy", "onnxruntime"):
        got = incremental_logits(o2, w, ids, mask, 4, backend)
        assert np.abs(got - ref)[real].max() <= 1e-4, backend
        np.testing.assert_allclose(got, unfused, atol=1e-5, rtol=0)  # padding rows too
        s = Session(o2, w, backend)  # several new tokens after a past: a chunked prefill
        chunks = [s.prefill(ids[:, :3], mask[:, :3]), s.step(ids[:, 3:7], mask[:, 3:7]),
                  s.step(ids[:, 7:], mask[:, 7:])]
        assert np.abs(np.concatenate(chunks, 1) - ref)[real].max() <= 1e-4, backend


# ---------------------------------------------------------------- transformers fixtures at -O2
FIXTURES = ROOT / "tests" / "fixtures" / "hf"
BOUNDED = "is bounded (past_window"
HF = {  # family -> (rotary rules that fire, True or why the cache keeps plain `sdpa`)
    "llama": ({"rotary_half"}, True),
    "cohere": ({"rotary_interleaved"}, True),
    "gptj": ({"rotary_interleaved_partial"}, True),
    "gpt_neox": ({"rotary_half_partial"}, True),
    "qwen3": ({"rotary_half", "rotary_scaled"}, True),  # yarn
    "phi3": ({"rotary_half_partial", "rotary_partial_scaled"}, BOUNDED),  # longrope, window 5
    "olmo2": ({"rotary_half"}, True),  # linear
    "llama3": ({"rotary_half"}, True),
    "llama_dynamic": ({"rotary_half"}, True),
    "gemma2": ({"rotary_half"}, True),  # softcap; its local layers' caches are bounded
    "mistral": ({"rotary_half"}, BOUNDED),  # a sliding window bounds the cache
    "deepseek_v3": ({"rotary_interleaved", "rotary_scaled"},  # yarn with mscale
                    "are not a KV cache"),  # the cache holds the latent, not the keys
}


# llama_dynamic runs past its context length on purpose (dynamic rope scales there)
@pytest.mark.filterwarnings("ignore:.*past the model's context length")
@pytest.mark.parametrize("family", sorted(HF))
def test_hf_decoders_match_transformers_at_o2_with_the_rules_firing(family, tmp_path: Path):
    rules, past = HF[family]  # past: True, or the reason sdpa_past gives
    spec = import_hf(FIXTURES / family, tmp_path).spec
    w = load_file(str(tmp_path / "model.safetensors"))
    ref = np.load(FIXTURES / family / "reference.npz")
    real = ref["attention_mask"].astype(bool)
    g = archc.compile(spec, level=2)
    gc = archc.optimize(lower(archc.parse(spec), cache=True), 2)
    for graph in (g, gc):
        fired = graph.meta["fusions"].fired
        rotary = Counter({k: v for k, v in fired.items() if k.startswith("rotary")})
        assert set(rotary) == rules and len(set(rotary.values())) == 1, fired
        assert not any(n.op == "rope" for n in graph.nodes() if n.kind == "op")
    report = gc.meta["fusions"]
    assert ("sdpa_past" in report.fired) == (past is True)
    if past is not True:
        assert past in report.why_not["sdpa_past"]
    feeds = {"input_ids": ref["input_ids"], "attention_mask": ref["attention_mask"]}
    for backend in ("numpy", "onnxruntime"):
        err = np.abs(archc.run(g, feeds, w, backend=backend)["logits"] - ref["logits"])
        assert err[real].max() <= 1e-4, backend
        got = incremental_logits(gc, w, ref["input_ids"], ref["attention_mask"],
                                 int(ref["prefill"]), backend)
        assert np.abs(got - ref["incremental_logits"])[real].max() <= 1e-4, backend
