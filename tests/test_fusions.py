"""Fusion rules: what fires (Counters), what must not (and why), and the numbers: the NumPy
interpreter before and after, and onnxruntime on the fused export, within 1e-5 (float32).
Then every bundled spec at -O2 against -O1 on both backends, with left and right padding, and
with the KV cache; the fused ops' kernels against onnxruntime; the cached session."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from conftest import SPECS, perturbed_params

import archc
from archc.backends.numpy_interp import run_graph
from archc.backends.onnx_export import export_onnx
from archc.backends.ort import cached_session, clear_session_cache, run_cached, run_onnx
from archc.cli import random_inputs
from archc.ir.graph import Graph
from archc.ir.types import TensorType
from archc.ir.verify import verify
from archc.ops import OPS, fused
from archc.passes import PIPELINES
from archc.passes.fusions import RULESETS, explain
from archc.passes.rewrite import Match, Rule, apply_rules

rng = np.random.default_rng(0)
LOWEST = float(np.finfo(np.float32).min)


class G:
    """A small graph built op by op, with its feeds."""

    def __init__(self):
        self.g, self.feeds = Graph("t"), {}

    def input(self, name, value, dims=None):
        value = np.asarray(value)
        dtype = {"f": "float32", "i": "int64", "b": "bool"}[value.dtype.kind]
        self.feeds[name] = value
        return self.g.add_input(name, TensorType(dtype, tuple(dims or value.shape)))

    def f32(self, name, *shape, dims=None):
        return self.input(name, rng.standard_normal(shape).astype(np.float32), dims)

    def const(self, v, dtype=np.float32):
        return self.g.add_const(np.asarray(v, dtype))

    def __getattr__(self, op):
        def emit(*inputs, **attrs):
            t = OPS[op].infer(*(i.type for i in inputs), **attrs)
            return self.g.add_op(op, inputs, attrs, type=t)
        return emit


def fuse(b: G, y, expect: dict[str, int], ort: bool = True) -> dict[str, str]:
    """Apply every rule set to b's graph with output y; assert what fired and the numbers."""
    b.g.set_output("y", y)
    before = run_graph(b.g, b.feeds, {})["y"]
    why_not: dict[str, str] = {}
    fired = apply_rules(b.g, RULESETS, why_not=why_not)
    verify(b.g)
    assert fired == Counter(expect), (fired, why_not)
    np.testing.assert_allclose(run_graph(b.g, b.feeds, {})["y"], before, atol=1e-5, rtol=0)
    if ort:
        theirs = run_onnx(export_onnx(b.g), b.feeds)["y"]
        np.testing.assert_allclose(theirs, before, atol=1e-5, rtol=0)
    return why_not


# ---------------------------------------------------------------- the engine
class _Twice(Rule):
    name = "twice"
    commute = True

    def pattern(self, op, x):
        return op.add(op.mul(x, x, _name="sq"), x)

    def check(self, m):
        return m if m["x"].type.rank == 2 else Match.fail("x is not a matrix", m["x"])

    def rewrite(self, op, m):
        return op.mul(m["x"], op.add(m["x"], op.const(np.float32(1))))


def test_engine_counts_commutes_and_explains():
    b = G()
    x, v = b.f32("x", 3, 4), b.f32("v", 4)
    y = b.add(b.add(b.mul(x, x), x), b.add(x, b.mul(x, x)))  # both operand orders
    y = b.add(y, b.add(b.mul(v, v), v))  # a vector: the check refuses it
    b.g.set_output("y", y)
    before = run_graph(b.g, b.feeds, {})["y"]
    why: dict[str, str] = {}
    assert apply_rules(b.g, [_Twice()], why_not=why) == Counter(twice=2)
    np.testing.assert_allclose(run_graph(b.g, b.feeds, {})["y"], before, rtol=1e-6)
    assert why == {}
    b2 = G()  # a rule that never fired reports the failure that got furthest
    v2 = b2.f32("v", 4)
    b2.g.set_output("y", b2.add(b2.mul(v2, v2), v2))
    assert apply_rules(b2.g, [_Twice()], why_not=why) == Counter()
    assert why == {"twice": f"x is not a matrix (at {v2!r})"}


def test_engine_leaves_patterns_whose_intermediates_are_used_elsewhere():
    b = G()
    x = b.f32("x", 3, 4)
    sq = b.mul(x, x)
    b.g.set_output("sq", sq)
    b.g.set_output("y", b.add(sq, x))
    why: dict[str, str] = {}
    assert apply_rules(b.g, [_Twice()], why_not=why) == Counter()
    assert why["twice"].startswith(f"{sq!r} (`mul`) is also used outside the pattern")


# ---------------------------------------------------------------- norms
def _rms(b, x, w, eps, form="", order=0):
    sq = b.pow(x, b.const(2.0)) if form == "pow" else b.mul(x, x)
    mean = b.reduce_mean(sq, axis=-1, keepdims=True)
    var = b.add(mean, eps) if order == 0 else b.add(eps, mean)
    n = b.mul(x, b.rsqrt(var)) if form == "rsqrt" else b.div(x, b.sqrt(var))
    return b.mul(n, w) if order == 0 else b.mul(w, n)


@pytest.mark.parametrize("form,order", [("", 0), ("", 1), ("pow", 0), ("rsqrt", 1)])
def test_rms_norm_variants_fuse(form, order):
    b = G()
    x, w = b.f32("x", 2, 5, 8), b.f32("w", 8)
    fuse(b, _rms(b, x, w, b.const(1e-6), form, order), {"rms_norm" + (form and "_" + form): 1})


def test_rms_norm_with_unit_offset_weight_and_residual_fuses_to_a_skip_norm():
    b = G()
    a, r, w = b.f32("a", 2, 5, 8), b.f32("r", 2, 5, 8), b.f32("w", 8)
    s = b.add(a, r)
    y = b.add(_rms(b, s, b.add(w, b.const(1.0)), b.const(1e-6)), s)  # the residual reads s on
    fuse(b, y, {"rms_norm": 1, "skip_rms_norm": 1})
    assert {n.op for n in b.g.nodes() if n.kind == "op"} >= {"skip_rms_norm", "tuple_get"}


@pytest.mark.parametrize("case,reason", [
    ("axis", "averages axis 1, not the last"),
    ("keepdims", "keepdims is false"),
    ("weight", "the fused op needs [8]"),
    ("eps", "is not a scalar float constant"),
])
def test_rms_norm_negatives(case, reason):
    b = G()
    x = b.f32("x", 8, 8) if case == "keepdims" else b.f32("x", 2, 8, 8)
    w = b.f32("w", 8, 8) if case == "weight" else b.f32("w", 8)
    eps = b.const(np.full(8, 1e-6) if case == "eps" else 1e-6)
    mean = b.reduce_mean(b.mul(x, x), axis=1 if case == "axis" else -1,
                         keepdims=case != "keepdims")
    why = fuse(b, b.mul(b.div(x, b.sqrt(b.add(mean, eps))), w), {})
    assert reason in why["rms_norm"]


def test_int_inputs_do_not_fuse():
    b = G()
    x = b.input("x", rng.integers(-3, 3, (2, 4, 8)))
    w = b.input("w", np.ones(8, np.int64))
    why = fuse(b, b.rms_norm(x, w, eps=1e-6), {}, ort=False)  # int norms do not export
    assert "the fused op takes float32" in why["rms_norm_op"]


def _layer_norm(b, x, w, beta, eps=1e-5):
    xc = b.sub(x, b.reduce_mean(x, axis=-1, keepdims=True))
    y = b.mul(b.div(xc, b.sqrt(b.add(b.reduce_mean(b.mul(xc, xc), axis=-1, keepdims=True),
                                       b.const(eps)))), w)
    return y if beta is None else b.add(beta, y)


@pytest.mark.parametrize("bias", [False, True])
def test_layer_norm_fuses_with_and_without_bias_and_skip(bias):
    b = G()
    a, r, w, beta = b.f32("a", 2, 5, 8), b.f32("r", 2, 5, 8), b.f32("w", 8), b.f32("beta", 8)
    y = _layer_norm(b, b.add(a, r), w, beta if bias else None)
    expect = {"layer_norm": 1, "skip_layer_norm" + ("_bias" if bias else ""): 1}
    fuse(b, y, {**expect, **({"layer_norm_bias": 1} if bias else {})})


def test_layer_norm_of_a_broadcast_residual_fuses_without_the_skip():
    b = G()
    x, pos, w = b.f32("x", 2, 5, 8), b.f32("pos", 5, 8), b.f32("w", 8)
    why = fuse(b, b.layer_norm(b.add(x, pos), w, eps=1e-5), {"layer_norm_op": 1})
    assert "broadcasts" in why["skip_layer_norm"]


# ---------------------------------------------------------------- GELU
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_and_bias_gelu_fuse(approximate):
    b = G()
    x, w, bias = b.f32("x", 2, 5, 8), b.f32("w", 8, 16), b.f32("bias", 16)
    h = b.gelu(b.add(b.matmul(x, w), bias), approximate=approximate)
    fuse(b, b.gelu(h, approximate=approximate), {"bias_gelu": 1, "gelu": 1})


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_spelled_out_gelu_fuses(approximate):
    b = G()
    x = b.f32("x", 2, 5, 8)
    if approximate == "none":
        gate = b.erf(b.div(x, b.const(np.sqrt(2))))
    else:
        cube = b.mul(b.mul(x, x), x)
        inner = b.add(x, b.mul(cube, b.const(0.044715)))
        gate = b.tanh(b.mul(inner, b.const(np.sqrt(2 / np.pi))))
    y = b.mul(b.add(b.const(1.0), gate), b.mul(b.const(0.5), x))
    fuse(b, y, {f"gelu_{'erf' if approximate == 'none' else 'tanh'}_spelled": 1})


def test_gelu_negatives():
    b = G()
    x, bias = b.f32("x", 2, 5, 8), b.f32("bias", 5, 8)
    y = b.gelu(b.add(x, bias), approximate="none")  # a [T, D] bias is no projection bias
    z = b.mul(b.mul(x, b.const(0.4)), b.add(b.erf(b.div(x, b.const(np.sqrt(2)))),
                                            b.const(1.0)))
    why = fuse(b, b.add(y, z), {"gelu": 1})
    assert "the fused op needs [8]" in why["bias_gelu"]
    assert "is not the constant 0.5 of GELU" in why["gelu_erf_spelled"]


# ---------------------------------------------------------------- attention
def _attention(b: G, *, heads=4, kv=2, t=6, s=None, d=8, mask="mask_fill", causal=True,
               window=0, pad=True, softcap=0.0, bias=False, scale=0.35, batch=2):
    """q [B,H,T,D] and k, v [B,KV,S,D] as inputs; the core spelled as `attend` writes it."""
    kdim = "seq" if s is None else "ctx"
    s = s or t
    ids = b.input("ids", np.zeros((batch, t), np.int64), dims=("batch", "seq"))
    q = b.f32("q", batch, heads, t, d, dims=("batch", heads, "seq", d))
    k = b.f32("k", batch, kv, s, d, dims=("batch", kv, kdim, d))
    v = b.f32("v", batch, kv, s, d, dims=("batch", kv, kdim, d))
    if heads != kv:
        k, v = b.repeat_kv(k, groups=heads // kv), b.repeat_kv(v, groups=heads // kv)
    sc = b.matmul(q, b.transpose(k, perm=(0, 1, 3, 2)))
    if scale:
        sc = b.mul(b.const(scale), sc)
    if softcap:
        sc = b.mul(b.tanh(b.div(sc, b.const(softcap))), b.const(softcap))
    if bias:
        sc = b.add(b.f32("pb", 1, heads, t, s, dims=(1, heads, "seq", kdim)), sc)
    keep = None
    if causal:
        pos = b.positions(ids, axis=1)
        kpos = pos if kdim == "seq" else b.positions(
            b.input("kids", np.zeros((batch, s), np.int64), dims=("batch", kdim)), axis=1)
        keep = b.causal_mask(pos, kpos, window=window)
    if pad:
        m = np.ones((batch, s), np.int64)
        m[0, :2] = 0  # left padding: queries 0 and 1 of row 0 see no key when causal
        m[-1, -2:] = 0  # right padding
        pm = b.padding_mask(b.input("mask", m, dims=("batch", kdim)))
        keep = pm if keep is None else b.logical_and(keep, pm)
    if keep is not None:
        sc = b.mask_fill(sc, keep) if mask == "mask_fill" else b.where(keep, sc, b.const(mask))
    return b.matmul(b.softmax(sc, axis=-1), v)


ATTENTION_CASES = {
    "gqa_causal_padded": ({}, "sdpa_masked"),
    "mha": ({"kv": 4}, "sdpa_masked"),
    "mqa_where": ({"kv": 1, "mask": LOWEST}, "sdpa_where"),
    "unmasked_unscaled": ({"causal": False, "pad": False, "scale": 0}, "sdpa"),
    "softcap": ({"softcap": 2.0}, "sdpa_masked"),
    "position_bias": ({"bias": True}, "sdpa_masked"),
    "window": ({"t": 9, "window": 3}, "sdpa_masked"),
    "bidirectional_padded": ({"causal": False}, "sdpa_masked"),
    "causal_only": ({"pad": False}, "sdpa_masked"),
    "causal_window_only": ({"pad": False, "t": 9, "window": 3}, "sdpa_masked"),
    "causal_only_cross": ({"pad": False, "s": 6}, "sdpa_masked"),
    "cross": ({"s": 5, "causal": False}, "sdpa_masked"),
}


@pytest.mark.parametrize("target", ["gqa", "onnx"])
@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_attention_fuses_on_both_lowerings(case, target, monkeypatch):
    monkeypatch.setattr(fused, "SELF_ATTENTION", target)
    kwargs, rule = ATTENTION_CASES[case]
    b = G()
    fuse(b, _attention(b, **kwargs), {rule: 1})
    (node,) = [n for n in b.g.nodes() if n.op == "sdpa"]
    causal = kwargs.get("causal", True) and "s" not in kwargs  # causal over one sequence
    assert node.attrs.get("causal", False) == causal
    # a bias unless the mask is only the causal mask (the kernel's `causal` applies it)
    masked = kwargs.get("pad", True) or (kwargs.get("causal", True) and not causal)
    assert (len(node.inputs) >= 4) == (masked or kwargs.get("bias", False))
    # the key mask rides along (5th input) only when the bias is causal (windowed or not) &
    # padding, nothing else
    hint = causal and kwargs.get("pad", True) and not kwargs.get("bias")
    assert (len(node.inputs) == 5) == hint
    assert node.attrs.get("window", 0) == kwargs.get("window", 0)
    assert node.attrs.get("softcap", 0.0) == kwargs.get("softcap", 0.0)


@pytest.mark.parametrize("fill,fires", [(LOWEST, True), (-1e30, True), (-1e4, False)])
def test_attention_where_fill_must_be_minus_infinity(fill, fires):
    b = G()
    why = fuse(b, _attention(b, kv=4, mask=fill), {"sdpa_where": 1} if fires else {})
    if not fires:
        assert "is not effectively -inf" in why["sdpa_where"]


def test_attention_negatives():
    b = G()
    x = b.f32("x", 2, 4, 6, 8)
    k, v = b.f32("k", 2, 2, 6, 8), b.f32("v", 2, 4, 6, 8)
    sc = b.matmul(x, b.transpose(b.repeat_kv(k, groups=2), perm=(0, 1, 3, 2)))
    y1 = b.matmul(b.softmax(sc, axis=-1), v)  # k repeated, v not
    y2 = b.matmul(b.softmax(b.mul(b.matmul(x, b.transpose(x, perm=(0, 1, 3, 2))),
                                  b.const(0.3)), axis=2), x)  # softmax over the queries
    sc3 = b.matmul(x, b.transpose(x, perm=(0, 1, 3, 2)))
    b.g.set_output("scores", sc3)  # the scores are an output too
    y3 = b.matmul(b.softmax(sc3, axis=-1), x)
    why = fuse(b, b.add(b.add(y1, y2), y3), {})
    assert why["sdpa"] in {
        f"k is repeated 2x and v 1x (at {v!r})",
        f"softmax {y2.inputs[0]!r} runs over axis 2, not the keys (at {y2.inputs[0]!r})",
        f"{sc3!r} (`matmul`) is also used outside the pattern (at {y3!r})"}


# ---------------------------------------------------------------- every bundled spec
BIG = ("gpt2_small", "bert_base")  # 110M+ parameters: onnxruntime only (NumPy takes seconds)


def _padded_feeds(graph, batch=2, seq=7):
    feeds = random_inputs(graph, batch=batch, seq=seq, seed=3)
    for name in feeds:
        if "mask" in name and not name.startswith("global"):
            feeds[name][0, :2] = 0  # left padding
            feeds[name][-1, -2:] = 0  # right padding
    return feeds


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_specs_at_o2_equal_o1_on_both_backends(spec):
    o1, o2 = archc.compile(spec, level=1), archc.compile(spec, level=2)
    verify(o2)
    attention = [n for n in o1.nodes() if n.op == "softmax"
                 and o1.users(n)[0].op in ("matmul", "dropout")]
    assert sum(n.op == "sdpa" for n in o2.nodes()) == len(attention), explain(o2)
    assert not {n.op for n in o2.nodes()} & {"rms_norm", "layer_norm", "gelu"}, explain(o2)
    w = perturbed_params(o1)
    if spec.stem in BIG:  # weights fed as inputs: no 500 MB initializers to serialise
        feeds = {**_padded_feeds(o1, batch=1, seq=5), **w}
        ref = run_onnx(export_onnx(o1, check=False), feeds)
        outs = [run_onnx(export_onnx(o2, check=False), feeds)]
    else:
        feeds = _padded_feeds(o1)
        ref = archc.run(o1, feeds, w)
        outs = [run_onnx(export_onnx(o2, w), feeds), archc.run(o2, feeds, w)]
    for out in outs:
        for name in ref:
            np.testing.assert_allclose(out[name], ref[name], atol=1e-5, rtol=0, err_msg=name)


@pytest.mark.parametrize("name", ["llama_tiny", "interleaved_local_global"])
def test_kv_cache_at_o2_equals_o1(name):
    from archc.kvcache import incremental_logits

    module = archc.parse_file(SPECS[0].parent / f"{name}.arch")
    o1 = archc.optimize(archc.lower(module, cache=True), 1)
    o2 = archc.optimize(archc.lower(module, cache=True), 2)
    w = perturbed_params(o1)
    ids = rng.integers(0, 1000, (2, 9))
    mask = np.ones((2, 9), np.int64)
    mask[0, :2] = 0
    ref = incremental_logits(o1, w, ids, mask, 4)
    for backend in ("numpy", "onnxruntime"):
        out = incremental_logits(o2, w, ids, mask, 4, backend=backend)
        np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0, err_msg=backend)


def test_o0_and_o1_are_unchanged_and_export_at_opset_18():
    from archc.passes import (
        eliminate_common_subexpressions,
        eliminate_dead_code,
        fold_constants,
        infer_shapes,
    )

    assert PIPELINES[0] == (infer_shapes,)
    assert PIPELINES[1] == (infer_shapes, fold_constants, eliminate_common_subexpressions,
                            eliminate_dead_code)
    g = archc.compile(SPECS[0].parent / "llama_tiny.arch", level=1)
    model = export_onnx(g)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 18)]


# ---------------------------------------------------------------- fused kernels, sessions
def _f(*s):
    return rng.standard_normal(s).astype(np.float32)


# Single-op cases in tests/test_ops.py's format (its all-parts test reads them); tuple-valued ops
# have none: they are checked through `tuple_get` below and by the rules above.
FUSED_CASES = {
    "fused_rms_norm": [([_f(2, 3, 8), _f(8)], {"eps": 1e-6})],
    "fused_layer_norm": [([_f(2, 3, 8), _f(8), _f(8)], {"eps": 1e-5}),
                         ([_f(3, 8), _f(8)], {"eps": 1e-12})],
    "fused_gelu": [([_f(2, 5, 8) * 3], {"approximate": "none"}),
                   ([_f(2, 5, 8) * 3, _f(8)], {"approximate": "tanh"}),
                   ([_f(2, 5, 8) * 3, _f(8)], {"approximate": "none"})],
    "sdpa": [([_f(2, 4, 5, 8), _f(2, 2, 5, 8), _f(2, 2, 5, 8)], {"scale": 0.3}),
             ([_f(1, 2, 3, 4), _f(1, 2, 6, 4), _f(1, 2, 6, 4), _f(1, 2, 3, 6)],
              {"scale": 0.5, "softcap": 2.0})],
    "skip_rms_norm": [], "skip_layer_norm": [], "tuple_get": [],
}


@pytest.mark.parametrize("op", [k for k, v in FUSED_CASES.items() if v])
def test_fused_kernels_match_onnxruntime(op):
    for arrays, attrs in FUSED_CASES[op]:
        b = G()
        ins = [b.input(f"x{i}", a) for i, a in enumerate(arrays)]
        fuse(b, getattr(b, op)(*ins, **attrs), {})


@pytest.mark.parametrize("op", ["skip_rms_norm", "skip_layer_norm"])
def test_skip_norm_outputs_match_onnxruntime(op):
    b = G()
    t = getattr(b, op)(b.f32("a", 2, 3, 8), b.f32("r", 2, 3, 8), b.f32("w", 8), eps=1e-5)
    b.g.set_output("sum", b.tuple_get(t, index=1))
    fuse(b, b.tuple_get(t, index=0), {})
    theirs = run_onnx(export_onnx(b.g), b.feeds)
    np.testing.assert_allclose(theirs["sum"], b.feeds["a"] + b.feeds["r"], atol=1e-6)


def test_cached_session_is_built_once_per_graph_and_weights():
    clear_session_cache()
    g = archc.compile(SPECS[0].parent / "llama_tiny.arch", level=2)
    w = archc.init_params(g)
    feeds = random_inputs(g, 1, 5, 0)
    first = cached_session(g, w)
    assert cached_session(g, dict(w)) is first  # same arrays, another dict: reused
    np.testing.assert_allclose(run_cached(g, feeds, w)["logits"],
                               archc.run(g, feeds, w)["logits"], atol=1e-5, rtol=0)
    w2 = {**w, "norm.weight": w["norm.weight"] * 2}
    assert cached_session(g, w2) is not first  # a new array: a new session
    clear_session_cache()
