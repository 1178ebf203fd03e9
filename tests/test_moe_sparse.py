"""Sparse experts (issue 13): the `experts` fusion rewrites the dense mixture-of-experts form to
`moe_experts`, which runs each expert on its routed tokens only. Checked against the dense form
(<= 1e-5, NumPy and onnxruntime) on every bundled MoE spec, every imported MoE family (and
transformers' logits), with the KV cache, with experts no token picks; the kernel against an
einsum over every expert; the rule's refusals with their reasons."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ROOT, SPECS, perturbed_params
from hypothesis import given, settings
from hypothesis import strategies as st

import archc
from archc.backends.numpy_interp import run_graph
from archc.backends.onnx_export import export_onnx
from archc.backends.ort import run_onnx
from archc.hf import import_checkpoint
from archc.ir.graph import Graph
from archc.ir.printer import print_graph
from archc.ir.types import TensorType
from archc.kvcache import incremental_logits
from archc.lower import lower
from archc.ops import OPS
from archc.passes.fusions.experts import EXPERTS
from archc.passes.infer_shapes import infer_node
from archc.passes.rewrite import apply_rules

TOL = 1e-5
rng = np.random.default_rng(13)


def _f32(*shape, scale=0.3):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _gates(b, t, e, k, dead=()):  # k positive gates per token, none on the `dead` experts
    z = rng.standard_normal((b, t, e))
    z[..., list(dead)] = -np.inf
    g = np.zeros((b, t, e), np.float32)
    np.put_along_axis(g, np.argsort(-z, -1)[..., :k], rng.uniform(0.1, 1, (b, t, k)), -1)
    return g


# moe_experts' differential cases (x, gates, W1, [W3], W2, [biases]), attrs: gated SiLU with an
# expert no token picks, a ReLU MLP with biases, GPT-OSS's clamped SwiGLU, tanh GELU, 2-D x.
OP_CASES = {"moe_experts": [
    ([_f32(2, 5, 8), _gates(2, 5, 4, 2, dead=(3,)), _f32(4, 8, 6), _f32(4, 8, 6), _f32(4, 6, 8)],
     {"act": "silu", "gated": True, "bias": False}),
    ([_f32(2, 5, 8), _gates(2, 5, 4, 1), _f32(4, 8, 6), _f32(4, 6, 7), _f32(4, 6), _f32(4, 7)],
     {"act": "relu", "gated": False, "bias": True}),
    ([_f32(1, 6, 8), _gates(1, 6, 4, 2), _f32(4, 8, 6, scale=2), _f32(4, 8, 6, scale=2),
      _f32(4, 6, 8), _f32(4, 6), _f32(4, 6), _f32(4, 8)],
     {"act": "silu", "gated": True, "bias": True, "limit": 1.5, "alpha": 1.702}),
    ([_f32(1, 3, 8), _gates(1, 3, 4, 2), _f32(4, 8, 6), _f32(4, 6, 8)],
     {"act": "gelu_tanh", "gated": False, "bias": False}),
    ([_f32(7, 8), _gates(1, 7, 3, 3)[0], _f32(3, 8, 5), _f32(3, 8, 5), _f32(3, 5, 8)],
     {"act": "gelu", "gated": True, "bias": False}),
]}


def _one_op(arrays, attrs) -> Graph:
    g = Graph("moe")
    ins = [g.add_input(f"x{i}", TensorType("float32", a.shape)) for i, a in enumerate(arrays)]
    node = g.add_op("moe_experts", ins, attrs)
    node.type = infer_node(node)
    g.set_output("y", node)
    return g


def _dense(x, gates, *ws, act, gated, bias, limit=0.0, alpha=1.702):
    """Every expert on every token (einsum over the bank), weighted by the gates: the form the
    library's blocks lower to, written independently of both backends."""
    n = 3 if gated else 2
    mats, vecs = ws[:n], ws[n:] if bias else [0.0] * n
    x = x.astype(np.float64)
    g = np.einsum("...d,edh->...eh", x, mats[0]) + vecs[0]
    op, attrs = {"gelu_tanh": ("gelu", {"approximate": "tanh"})}.get(act, (act, {}))
    if gated:
        u = np.einsum("...d,edh->...eh", x, mats[1]) + vecs[1]
        if limit:
            g = np.minimum(g, limit)
            h = g / (1 + np.exp(-alpha * g)) * (np.clip(u, -limit, limit) + 1)
        else:
            h = OPS[op].numpy(g, **attrs) * u
    else:
        h = OPS[op].numpy(g, **attrs)
    y = np.einsum("...eh,ehd->...ed", h, mats[-1]) + vecs[-1]
    return (y * gates[..., None]).sum(-2)


@pytest.mark.parametrize("case", range(len(OP_CASES["moe_experts"])))
def test_kernel_equals_onnxruntime_and_the_dense_form(case):
    arrays, attrs = OP_CASES["moe_experts"][case]
    g = _one_op(arrays, attrs)
    feeds = {f"x{i}": a for i, a in enumerate(arrays)}
    ours = run_graph(g, feeds, {})["y"]
    theirs = run_onnx(export_onnx(g), feeds)["y"]
    w2 = arrays[4 if attrs["gated"] else 3]
    assert ours.shape == theirs.shape == arrays[0].shape[:-1] + w2.shape[-1:]
    np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=TOL)
    np.testing.assert_allclose(ours, _dense(*arrays, **attrs), atol=TOL, rtol=TOL)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(1, 6), st.integers(1, 5), st.data())
def test_kernel_equals_the_dense_form_on_random_routes(b, t, n_exp, data):
    k = data.draw(st.integers(1, n_exp))
    dead = data.draw(st.sets(st.integers(0, n_exp - 1), max_size=n_exp - k))
    gated, bias = data.draw(st.booleans()), data.draw(st.booleans())
    act = data.draw(st.sampled_from(["relu", "silu", "gelu", "sigmoid"]))
    mats = [_f32(n_exp, 4, 3)] * (2 if gated else 1) + [_f32(n_exp, 3, 5)]
    vecs = [_f32(n_exp, 3)] * (2 if gated else 1) + [_f32(n_exp, 5)] if bias else []
    arrays = [_f32(b, t, 4), _gates(b, t, n_exp, k, dead), *mats, *vecs]
    attrs = {"act": act, "gated": gated, "bias": bias}
    got = OPS["moe_experts"].numpy(*arrays, **attrs)
    assert got.shape == (b, t, 5) and got.dtype == np.float32
    np.testing.assert_allclose(got, _dense(*arrays, **attrs), atol=TOL, rtol=TOL)


def test_experts_off_route_never_run():
    """Expert 3 has NaN weights and no token: the dense form would give 0 * NaN = NaN
    everywhere; the sparse op never touches it, on both backends. One token (a decode step)
    also leaves experts with zero rows (an empty gather)."""
    for b, t in ((2, 5), (1, 1)):
        arrays = [_f32(b, t, 8), _gates(b, t, 4, 2, dead=(3,)),
                  *(_f32(4, *s) for s in ((8, 6), (8, 6), (6, 8)))]
        clean = _dense(*arrays, act="silu", gated=True, bias=False)
        for w in arrays[2:]:
            w[3] = np.nan
        g = _one_op(arrays, {"act": "silu", "gated": True, "bias": False})
        feeds = {f"x{i}": a for i, a in enumerate(arrays)}
        for out in (run_graph(g, feeds, {})["y"], run_onnx(export_onnx(g), feeds)["y"]):
            assert np.isfinite(out).all()
            np.testing.assert_allclose(out, clean, atol=TOL, rtol=TOL)


# ---------------------------------------------------------------- whole models
def _sparse(graph: Graph) -> tuple[Graph, int]:
    """The O1 graph with only the `experts` rules applied (so the comparison isolates them)."""
    fired = apply_rules(graph, [EXPERTS])["moe_experts"]
    return archc.optimize(graph, 1), fired


def _both_equal_dense(module, feeds, weights, expect: int):
    dense = archc.optimize(lower(module), 1)
    sparse, fired = _sparse(archc.optimize(lower(module), 1))
    assert fired == expect and fired == len(dense.meta["moe"])
    assert "moe_experts" not in print_graph(dense) and "moe_experts" in print_graph(sparse)
    want = archc.run(dense, feeds, weights)
    for backend in ("numpy", "onnxruntime"):
        got = archc.run(sparse, feeds, weights, backend=backend)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], atol=TOL, rtol=TOL,
                                       err_msg=f"{backend} {name}")
    full = archc.optimize(lower(module), 2)  # the real -O2 pipeline fires it too
    assert full.meta["fusions"].fired["moe_experts"] == expect
    routed = [full.params[p] for bank in full.meta["moe"] for p in bank["params"]]
    assert {u.op for w in routed for u in full.users(w)} == {"moe_experts"}  # no dense leftover
    return full


MOE_SPECS = [p for p in SPECS if any(w in p.read_text() for w in ("moe", "switch_ffn", "expert"))]


def test_the_bundled_moe_specs_are_found():
    assert {p.name for p in MOE_SPECS} >= {"switch.arch", "moe_general.arch"}


@pytest.mark.parametrize("path", MOE_SPECS, ids=[p.stem for p in MOE_SPECS])
def test_bundled_specs_equal_the_dense_form(path):
    module = archc.parse_file(path)
    graph = archc.optimize(lower(module), 1)
    ids = rng.integers(0, 512, (2, 9))
    mask = np.ones((2, 9), np.int64)
    mask[1, :3] = 0  # left padding: routed nowhere by moe_ffn's router
    _both_equal_dense(module, {"input_ids": ids, "attention_mask": mask},
                      perturbed_params(graph, 3), len(graph.meta["moe"]))


FIXTURES = ROOT / "tests" / "fixtures" / "hf"
FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "gpt_oss")


@pytest.mark.parametrize("family", FAMILIES)
def test_imported_families_equal_the_dense_form_and_transformers(family):
    imported = import_checkpoint(FIXTURES / family)
    module = archc.parse(imported.spec, f"<{family}>")
    ref = np.load(FIXTURES / family / "reference.npz")
    feeds = {"input_ids": ref["input_ids"], "attention_mask": ref["attention_mask"]}
    full = _both_equal_dense(module, feeds, imported.weights, 2)
    real = ref["attention_mask"].astype(bool)
    w = {k: v for k, v in imported.weights.items() if k in full.params}
    got = archc.run(full, feeds, w)["logits"]  # -O2 (NumPy; onnxruntime ran the op above)
    assert np.abs(got - ref["logits"])[real].max() <= 1e-4


@pytest.mark.parametrize("family", ("mixtral", "gpt_oss"))
def test_kv_cache_decode_with_sparse_experts(family):
    """Prefill 3 tokens, then one token a step (top-2 of 4: two experts see no token)."""
    imported = import_checkpoint(FIXTURES / family)
    module = archc.parse(imported.spec, f"<{family}>")
    ref = np.load(FIXTURES / family / "reference.npz")
    dense = archc.optimize(lower(module), 1)
    w = {k: v for k, v in imported.weights.items() if k in dense.params}
    want = archc.run(dense, {"input_ids": ref["input_ids"],
                             "attention_mask": ref["attention_mask"]}, w)["logits"]
    cached = archc.optimize(lower(module, cache=True), 2)
    assert cached.meta["fusions"].fired["moe_experts"] == 2
    real = ref["attention_mask"].astype(bool)
    for backend in ("numpy", "onnxruntime"):
        got = incremental_logits(cached, w, ref["input_ids"], ref["attention_mask"], 3, backend)
        assert np.abs(got - want)[real].max() <= TOL, backend


# ---------------------------------------------------------------- what the rule refuses
BLOCK = """
block dense_moe(x, gates, act = silu, axis = 2, leak = false) {
  b = dim(x, 0)
  t = dim(x, 1)
  d = dim(x, -1)
  bank = expert_bank(d, 16, 4) as experts
  x5 = reshape(x, [b, t, 1, 1, d])
  g = x5 @ bank[0]
  y = act(g) * (x5 @ bank[1]) @ bank[2]
  out = sum(reshape(y, [b, t, 4, d]) * reshape(gates, [b, t, 4, 1]), axis = axis)
  if leak { return [out, g] }
  return out
}
model t {
  input x: float32[batch, seq, 8]
  gates = moe_gates(linear(x, 4, bias = false) as router, 2)
"""
CASES = [  # (name, model body, why not; None: it fires)
    ("written out", "  output y = dense_moe(x, gates) as moe", None),
    ("rescaled gates", "  output y = dense_moe(x, gates * 2.0) as moe", None),
    ("MLP experts, biases, capacity",
     "  output y = moe_ffn(x, 4, 2, 16, gated = false, bias = true, capacity = 1.0) as moe", None),
    ("GLU experts, biases, shared expert",
     "  output y = moe_ffn(x, 4, 2, 16, act = gelu, bias = true, shared = 1) as moe", None),
    ("composite act", "  output y = dense_moe(x, gates, act = relu2) as moe",
     "is not act(x W1) * (x W3)"),
    ("other axis", "  output y = dense_moe(x, gates, axis = 3) as moe",
     "sums axis 3, not the expert axis 2"),
    ("shared hidden", "  y, g = dense_moe(x, gates, leak = true) as moe\n  output y = y\n"
     "  output g = g", "(`matmul`) is also used outside the pattern"),
]


@pytest.mark.parametrize("name, body, why", CASES, ids=[c[0] for c in CASES])
def test_the_rule_fires_only_on_the_dense_form(name, body, why):
    module = archc.parse(BLOCK + body + "\n}\n", "t.arch")
    graph = archc.optimize(lower(module), 2)
    report = graph.meta["fusions"]
    if why is None:
        assert report.fired["moe_experts"] == 1
    else:
        assert report.fired["moe_experts"] == 0
        assert why in report.why_not["moe_experts"]
    dense = archc.optimize(lower(module), 1)
    feeds = {"x": _f32(2, 5, 8, scale=1)}
    w = {k: v + _f32(*v.shape) if "bias" in k else v
         for k, v in archc.init_params(dense, 0).items()}  # biases off zero
    want = archc.run(dense, feeds, w)
    for backend in ("numpy", "onnxruntime"):
        got = archc.run(graph, feeds, w, backend=backend)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], atol=TOL, rtol=TOL)


def test_output_is_deterministic():
    path = ROOT / "specs" / "moe_general.arch"
    texts = {print_graph(archc.optimize(lower(archc.parse_file(path)), 2)) for _ in range(2)}
    assert len(texts) == 1 and "moe_experts" in texts.pop()
