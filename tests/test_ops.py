"""Every op: all four parts present, and its NumPy kernel equals onnxruntime on a one-op model."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archc.backends.numpy_interp import run_graph
from archc.backends.onnx_export import export_onnx
from archc.backends.ort import run_onnx
from archc.ir.graph import Graph
from archc.ir.types import ShapeError, TensorType
from archc.ops import OPS
from archc.passes.infer_shapes import infer_node

rng = np.random.default_rng(0)
f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
i64 = lambda lo, hi, *s: rng.integers(lo, hi, s, dtype=np.int64)  # noqa: E731
ties = lambda *s: i64(0, 3, *s).astype(np.float32)  # noqa: E731  (floats with many equal values)
n = lambda v: np.array(v, np.int64)  # noqa: E731  (an int64 scalar: a run-time size)
END = 2**63 - 1  # `end` of a slice to the end of the axis


@dataclass
class Sym:
    """An input declared with symbolic dims (`Sym(f32(2, 9), (2, "seq"))`): the exported model
    then has a dynamic dim there, as it does for a spec's `seq`."""

    value: np.ndarray
    dims: tuple

# op -> (input arrays, attrs): one or more cases per op; a `Sym` input keeps its string dims
# symbolic in the graph and the exported model.
CASES: dict[str, list[tuple[list[np.ndarray], dict]]] = {
    "add": [([f32(2, 3, 4), f32(4)], {})], "sub": [([f32(2, 3), f32(2, 1)], {})],
    "mul": [([f32(3, 4), f32(1, 4)], {})], "div": [([f32(3, 4), f32(4) + 3], {})],
    "mod": [([rng.integers(-9, 9, (3, 4)), np.array([3, -4, 5, 7])], {})],
    "pow": [([np.abs(f32(3, 4)) + 0.1, np.float32(1.5) + f32(4) * 0], {})],
    "neg": [([f32(3, 4)], {})], "exp": [([f32(3, 4)], {})],
    "sqrt": [([np.abs(f32(5))], {})], "tanh": [([f32(3, 4)], {})], "cos": [([f32(6)], {})],
    "sin": [([f32(6)], {})], "relu": [([f32(3, 4)], {})], "sigmoid": [([f32(3, 4)], {})],
    "erf": [([f32(64) * 3], {})], "silu": [([f32(3, 4)], {})],
    "gelu": [([f32(64) * 3], {"approximate": "none"}), ([f32(64) * 3], {"approximate": "tanh"})],
    "cast": [([f32(3, 4) * 4], {"to": "int64"})],
    "where": [([f32(3, 4) > 0, f32(3, 4), f32(4)], {})],
    "mask_fill": [([f32(2, 3, 4), f32(3, 4) > 0], {})],
    "logical_and": [([f32(3, 4) > 0, f32(4) > 0], {})],
    "dropout": [([f32(3, 4)], {"p": 0.1})],
    "matmul": [([f32(2, 3, 4), f32(4, 5)], {}), ([f32(2, 2, 3, 4), f32(2, 2, 4, 3)], {})],
    "softmax": [([f32(2, 3, 5) * 4], {"axis": -1})],
    "layer_norm": [([f32(2, 3, 8), f32(8), f32(8)], {"eps": 1e-5}),
                   ([f32(2, 8), f32(8)], {"eps": 1e-6})],
    "rms_norm": [([f32(2, 3, 8), f32(8)], {"eps": 1e-6})],
    "reshape": [([f32(2, 3, 8)], {"shape": (0, 0, 2, 4)}),
                ([f32(2, 3, 2, 4)], {"shape": (0, 0, -1)})],
    "transpose": [([f32(2, 3, 4, 5)], {"perm": (0, 2, 1, 3)})],
    "concat": [([f32(2, 3), f32(2, 5)], {"axis": -1})],
    "slice": [([f32(2, 9)], {"axis": -1, "start": 2, "end": 7}),
              ([Sym(f32(2, 9), (2, "seq"))], {"axis": -1, "start": -4, "end": END}),
              ([Sym(f32(2, 9), (2, "seq"))], {"axis": 1, "start": 0, "end": 4}),
              ([Sym(f32(9, 2), ("seq", 2))], {"axis": 0, "start": -20, "end": -2}),
              ([Sym(f32(3, 2), ("seq", 2))], {"axis": 0, "start": 1, "end": 8})],
    "gather": [([f32(10, 4), rng.integers(0, 10, (2, 3))], {}),
               ([f32(3, 10, 4), i64(-10, 10, 2, 5)], {"axis": 1}),
               ([f32(3, 4, 6), i64(0, 6, 5)], {"axis": -1})],
    "take": [([f32(2, 5, 4)], {"axis": 1, "index": 0})],
    "positions": [([f32(2, 7, 3)], {"axis": 1, "offset": 2})],
    "causal_mask": [([np.arange(2, 7), np.arange(7)], {"window": 0}),
                    ([np.arange(6), np.arange(6)], {"window": 3})],
    "padding_mask": [([np.array([[1, 1, 0], [0, 1, 1]], np.int64)], {})],
    "rope_angles": [([np.arange(5, dtype=np.int64)], {"dim": 8, "theta": 10000.0})],
    "rope": [([f32(2, 3, 5, 8), f32(5, 4)], {"interleaved": False}),
             ([f32(2, 3, 5, 8), f32(2, 5, 2)], {"interleaved": True}),
             ([f32(2, 3, 5, 8), f32(5, 3)], {"interleaved": False})],
    "sinusoidal": [([np.arange(6, dtype=np.int64)], {"dim": 8})],
    "reduce_sum": [([f32(2, 3, 4)], {"axis": 1}), ([f32(2, 3, 4)], {"axis": -1, "keepdims": True})],
    "cumsum": [([rng.integers(0, 2, (2, 6))], {"axis": -1})],
    "moe_gates": [([f32(2, 5, 6)], {"k": 2}), ([f32(3, 4)], {"k": 1})],
    "last": [([f32(2, 3, 9, 4)], {"axis": 2, "n": 4}), ([f32(2, 3, 2, 4)], {"axis": 2, "n": 4})],
    "equal": [([rng.integers(0, 3, (2, 5)), rng.integers(0, 3, (5,))], {})],
    "not_equal": [([rng.integers(0, 3, (2, 5)), np.array(1)], {})],
    "logical_or": [([f32(3, 4) > 0, f32(4) > 0], {})],
    "logical_not": [([f32(3, 4) > 0], {})],
    "band_mask": [([np.arange(7), np.arange(7)], {"radius": 2})],
    "dim_size": [([f32(2, 7, 3)], {"axis": 1})],
    "tail": [([f32(2, 9, 3), f32(2, 4)], {"axis": 1, "ref_axis": 1})],
    "repeat_kv": [([f32(2, 2, 5, 4)], {"groups": 3})],
    "relative_buckets": [([np.arange(31, 40), np.arange(40)], {
                             "num_buckets": 32, "max_distance": 20, "bidirectional": True}),
                         ([np.arange(30), np.arange(30)], {
                             "num_buckets": 16, "max_distance": 12, "bidirectional": False})],
    "log": [([np.abs(f32(3, 4)) + 0.1], {})], "rsqrt": [([np.abs(f32(3, 4)) + 0.1], {})],
    "abs": [([f32(3, 4)], {}), ([i64(-5, 5, 3, 4)], {})], "floor": [([f32(3, 4) * 4], {})],
    "elu": [([f32(3, 4) * 3], {}), ([f32(3, 4) * 3], {"alpha": 0.5})],
    "softplus": [([np.array([-1e4, -100, -20, -1, 0, 1, 20, 100, 1e4], np.float32)], {}),
                 ([f32(3, 4) * 5], {})],
    "clip": [([f32(3, 4)], {"lo": -0.5, "hi": 0.5}), ([f32(3, 4)], {"lo": 0.0}),
             ([f32(3, 4)], {"hi": 0.25}), ([i64(-5, 5, 3, 4)], {"lo": -2, "hi": 3})],
    "less": [([i64(0, 3, 2, 5), i64(0, 3, 5)], {}), ([f32(3, 4), f32(4)], {})],
    "less_equal": [([i64(0, 3, 2, 5), i64(0, 3, 5)], {}), ([ties(3, 4), ties(3, 1)], {})],
    "greater": [([i64(0, 3, 2, 5), i64(0, 3, 5)], {}), ([f32(3, 4), f32(4)], {})],
    "greater_equal": [([i64(0, 3, 2, 5), n(1)], {}), ([ties(3, 4), ties(4)], {})],
    "maximum": [([f32(2, 3, 4), f32(4)], {}), ([i64(-5, 5, 3, 4), i64(-5, 5, 3, 1)], {})],
    "minimum": [([f32(2, 3, 4), f32(4)], {}), ([i64(-5, 5, 3, 4), i64(-5, 5, 3, 1)], {})],
    "reduce_mean": [([f32(2, 3, 4)], {"axis": 1}),
                    ([f32(2, 3, 4)], {"axis": -1, "keepdims": True})],
    "reduce_max": [([f32(2, 3, 4)], {"axis": 0}), ([i64(-9, 9, 2, 5)], {"axis": -1,
                                                                      "keepdims": True})],
    "reduce_min": [([f32(2, 3, 4)], {"axis": 2}), ([i64(-9, 9, 2, 5)], {"axis": -2})],
    "argmax": [([ties(4, 6)], {"axis": -1}), ([ties(4, 6)], {"axis": 0, "keepdims": True}),
               ([i64(0, 3, 3, 5)], {"axis": 1})],
    "log_softmax": [([f32(2, 3, 5) * 4], {"axis": -1}), ([f32(2, 3, 5) * 40], {"axis": 1})],
    "topk_values": [([ties(3, 8)], {"k": 3}), ([f32(4, 5)], {"k": 2, "axis": 0}),
                    ([i64(0, 4, 2, 6)], {"k": 6, "axis": -1})],
    "topk_indices": [([ties(3, 8)], {"k": 3}), ([ties(4, 5)], {"k": 4, "axis": 0}),
                     ([i64(0, 4, 2, 6)], {"k": 5, "axis": 1})],
    "pad": [([f32(2, 3, 4)], {"axis": 1, "before": 2, "after": 1}),
            ([f32(2, 3)], {"axis": -1, "before": 0, "after": 3, "value": 1.5}),
            ([i64(0, 9, 2, 3)], {"axis": 0, "before": 1, "after": 0, "value": 7}),
            ([f32(2, 3) > 0], {"axis": -1, "before": 1, "after": 1, "value": True}),
            ([Sym(f32(2, 5, 3), (2, "seq", 3))], {"axis": -2, "before": 1, "after": 1})],
    "full": [([n(2), n(3)], {"dims": (2, 3), "value": 1.5, "dtype": "float32"}),
             ([n(4), n(3)], {"dims": ("seq", 3), "value": 7, "dtype": "int64"}),
             ([], {"dims": (), "value": True, "dtype": "bool"})],
    "arange": [([n(5)], {"dim": 5}), ([n(0)], {"dim": "seq"})],
    "reshape_to": [([f32(2, 3, 4), n(6), n(4)], {"dims": (6, 4)}),
                   ([Sym(f32(2, 3, 4), ("batch", 3, 4)), n(2), n(12)], {"dims": ("batch", 12)}),
                   ([f32(2, 0, 4), n(0), n(3)], {"dims": (0, 3)})],
    "avg_pool1d": [([f32(2, 9, 3)], {"kernel": 3}), ([f32(2, 9, 3)], {"kernel": 2, "stride": 3}),
                   ([Sym(f32(2, 8, 3), ("batch", "seq", 3))], {"kernel": 4, "stride": 1})],
    "max_pool1d": [([f32(2, 9, 3)], {"kernel": 3}), ([f32(2, 9, 3)], {"kernel": 2, "stride": 3}),
                   ([Sym(f32(2, 8, 3), (2, "seq", 3))], {"kernel": 3, "stride": 2})],
    "conv1d": [([f32(2, 9, 4), f32(5, 4, 3), f32(5)], {}),
               ([f32(2, 11, 4), f32(5, 4, 3)], {"stride": 2, "dilation": 2}),
               ([Sym(f32(2, 8, 4), ("batch", "seq", 4)), f32(6, 4, 2), f32(6)], {"stride": 3})],
}


def _value(a) -> np.ndarray:
    return a.value if isinstance(a, Sym) else np.asarray(a)


def _single_op_graph(op: str, arrays, attrs) -> Graph:
    g = Graph(op)
    dtype = {"f": "float32", "i": "int64", "b": "bool"}
    ins = [g.add_input(f"x{i}", TensorType(dtype[_value(a).dtype.kind],
                                           a.dims if isinstance(a, Sym) else a.shape))
           for i, a in enumerate(arrays)]
    node = g.add_op(op, ins, attrs)
    node.type = infer_node(node)
    g.set_output("y", node)
    return g


def _cases_elsewhere() -> dict:
    """Ops tested by their own runner: FUSED_CASES in test_fusions.py, and OP_CASES in each
    tests/test_catalogue_*.py, tests/test_fusions_*.py, tests/test_quantize*.py and
    tests/test_moe_sparse.py (a catalogue, fusion, quantization or experts module adds its
    ops' cases there, not here)."""
    from test_fusions import FUSED_CASES

    cases = dict(FUSED_CASES)
    here = Path(__file__).parent
    for path in sorted([*here.glob("test_catalogue_*.py"), *here.glob("test_fusions_*.py"),
                        *here.glob("test_quantize*.py"), here / "test_moe_sparse.py"]):
        cases.update(getattr(importlib.import_module(path.stem), "OP_CASES", {}))
    return cases


def test_every_op_has_all_parts_and_a_test_case():
    elsewhere = _cases_elsewhere()
    for name, op in OPS.items():
        assert callable(op.infer) and callable(op.numpy) and callable(op.onnx), name
        assert name in CASES or name in elsewhere, f"op `{name}` has no differential test case"


@pytest.mark.parametrize("op", sorted(CASES))
def test_numpy_kernel_matches_onnxruntime(op):
    for arrays, attrs in CASES[op]:
        _check_against_onnxruntime(op, arrays, attrs)


def _check_against_onnxruntime(op, arrays, attrs):
    arrays = [a if isinstance(a, Sym) else np.asarray(a) for a in arrays]
    g = _single_op_graph(op, arrays, attrs)
    feeds = {f"x{i}": _value(a) for i, a in enumerate(arrays)}
    ours = run_graph(g, feeds, {})["y"]
    theirs = run_onnx(export_onnx(g), feeds)["y"]
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    typed = g.outputs["y"].type.shape  # the shape rule agrees, on every static dim
    assert len(typed) == ours.ndim
    assert all(t == o for t, o in zip(typed, ours.shape) if isinstance(t, int)), (typed, ours.shape)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_kernels_match_independent_formulas():
    x = f32(4, 16) * 3
    import math

    erf = np.vectorize(math.erf)(x.astype(np.float64))
    np.testing.assert_allclose(OPS["erf"].numpy(x), erf, atol=1e-6)
    gelu = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    np.testing.assert_allclose(OPS["gelu"].numpy(x, approximate="none"), gelu, atol=1e-5)
    # rope: rotating by position p then q gives the same dot product as relative position q-p
    q, k = f32(1, 1, 1, 8), f32(1, 1, 1, 8)
    def rot(v, p):
        return OPS["rope"].numpy(v, OPS["rope_angles"].numpy(np.array([p]), dim=8, theta=100.0))
    d1 = float((rot(q, 3) * rot(k, 1)).sum())
    d2 = float((rot(q, 12) * rot(k, 10)).sum())
    assert abs(d1 - d2) < 1e-4
    # T5 buckets at known points (from the published bucketing: exact below 8, log up to 128)
    b = OPS["relative_buckets"].numpy(np.arange(200), np.arange(200), num_buckets=32,
                                      max_distance=128,
                                      bidirectional=True)[0]  # query 0 against keys 0..199
    assert [b[0], b[1], b[7], b[8], b[12], b[199]] == [0, 17, 23, 24, 25, 31]
    assert b[63] == 16 + 8 + int(np.log(63 / 8) / np.log(128 / 8) * 8)


_dims = st.lists(st.integers(1, 4), min_size=1, max_size=4)


@settings(max_examples=40, deadline=None)
@given(_dims, st.data())
def test_broadcast_shape_rule_matches_numpy(shape, data):
    start = data.draw(st.integers(0, len(shape) - 1))
    other = [data.draw(st.sampled_from([d, 1])) for d in shape[start:]]
    a, b = np.zeros(shape, np.float32), np.zeros(other, np.float32)
    t = OPS["add"].infer(TensorType("float32", a.shape), TensorType("float32", b.shape))
    assert t.shape == (a + b).shape


def test_shape_rules_reject_mismatches():
    t = lambda *s: TensorType("float32", s)  # noqa: E731
    with pytest.raises(ShapeError, match="broadcast"):
        OPS["add"].infer(t("batch", "seq", 512), t("batch", "seq", 768))
    with pytest.raises(ShapeError, match="inner dims"):
        OPS["matmul"].infer(t("batch", 8, 16), t(12, 4))
    with pytest.raises(ShapeError):
        OPS["reshape"].infer(t(2, 3), shape=(4, 2))
    assert OPS["reshape"].infer(t("b", "s", 6, 4), shape=(0, 0, -1)).shape == ("b", "s", 24)


_REDUCTIONS = ["reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "argmax"]


def _small_ints(data, shape, dtype=np.float32) -> np.ndarray:
    """Values in 0..2 (many ties), from a seed hypothesis draws, so a failure replays."""
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    return np.random.default_rng(seed).integers(0, 3, shape).astype(dtype)


@settings(max_examples=40, deadline=None)
@given(_dims, st.sampled_from(_REDUCTIONS), st.booleans(), st.data())
def test_reduction_shape_rules_match_kernels(shape, op, keepdims, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = _small_ints(data, shape)  # argmax and top-k meet ties
    t = OPS[op].infer(TensorType("float32", x.shape), axis=axis, keepdims=keepdims)
    y = OPS[op].numpy(x, axis=axis, keepdims=keepdims)
    assert (t.shape, t.dtype) == (y.shape, {"f": "float32", "i": "int64"}[y.dtype.kind])
    # the first of the top-1 is the argmax, and its value the max, ties included
    k1 = {"axis": axis, "k": 1}
    top_i = OPS["topk_indices"].numpy(x, **k1)
    assert (top_i == OPS["argmax"].numpy(x, axis=axis, keepdims=True)).all()
    assert (OPS["topk_values"].numpy(x, **k1) == OPS["reduce_max"].numpy(x, axis, True)).all()
    np.testing.assert_allclose(np.exp(OPS["log_softmax"].numpy(x, axis=axis)).sum(axis), 1,
                               rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(_dims, st.sampled_from([*_REDUCTIONS, "topk_values", "topk_indices"]), st.data())
def test_reductions_match_onnxruntime_on_random_shapes(shape, op, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    attrs = {"axis": axis}
    if op.startswith("topk"):
        attrs["k"] = data.draw(st.integers(1, shape[axis]))
    else:
        attrs["keepdims"] = data.draw(st.booleans())
    _check_against_onnxruntime(op, [_small_ints(data, shape)], attrs)


_COMPARISONS = {"less": np.less, "less_equal": np.less_equal, "greater": np.greater,
                "greater_equal": np.greater_equal, "maximum": np.maximum, "minimum": np.minimum}


@settings(max_examples=40, deadline=None)
@given(_dims, st.sampled_from(sorted(_COMPARISONS)), st.sampled_from(["float32", "int64"]),
       st.data())
def test_comparison_rules_match_numpy(shape, op, dtype, data):
    start = data.draw(st.integers(0, len(shape) - 1))
    other = [data.draw(st.sampled_from([d, 1])) for d in shape[start:]]
    a, b = (_small_ints(data, s, dtype) for s in (shape, other))
    t = OPS[op].infer(TensorType(dtype, a.shape), TensorType(dtype, b.shape))
    y = OPS[op].numpy(a, b)
    assert t.shape == y.shape and t.dtype == {"b": "bool"}.get(y.dtype.kind, dtype)
    assert (y == _COMPARISONS[op](a, b)).all()
    run = lambda name, x, z: OPS[name].numpy(x, z)  # noqa: E731
    assert (run("less", a, b) == ~run("greater_equal", a, b)).all()
    assert (run("greater", a, b) == run("less", b, a)).all()
    assert (run("maximum", a, b) + run("minimum", a, b) == a + b).all()


def test_new_shape_rules_reject_bad_operands():
    t = lambda *s, dtype="float32": TensorType(dtype, s)  # noqa: E731
    i = lambda *s: t(*s, dtype="int64")  # noqa: E731
    bad = [
        ("less", (t("B", 3), i("B", 3)), {}, r"`a` is f32\[B,3\] but `b` is i64\[B,3\]"),
        ("greater", (t(3, dtype="bool"), t(3, dtype="bool")), {}, "float32 or two int64"),
        ("maximum", (t(2, 3), t(4, 3)), {}, r"`a` is f32\[2,3\] but `b` is f32\[4,3\]"),
        ("log", (i(3),), {}, r"`x` is i64\[3\]"),
        ("softplus", (t(3, dtype="bool"),), {}, "needs float32"),
        ("clip", (t(3),), {}, "needs `lo` or `hi`"),
        ("clip", (t(3),), {"lo": 1.0, "hi": 0.0}, "above `hi`"),
        ("reduce_mean", (t(2, 3),), {"axis": 2}, r"`axis` = 2 is out of range for `x` \(f32"),
        ("reduce_mean", (i(2, 3),), {"axis": 0}, "needs float32"),
        ("argmax", (t(2, 3, dtype="bool"),), {"axis": 0}, "float32 or int64"),
        ("log_softmax", (t(2, 3),), {"axis": -3}, "out of range"),
        ("topk_values", (t(2, 3),), {"k": 4}, r"`k` = 4 does not fit axis -1 of `x`"),
        ("topk_indices", (t(2, 3),), {"k": 0, "axis": 0}, "`k` = 0"),
        ("pad", (t(2, 3),), {"axis": 1, "before": -1, "after": 0}, ">= 0"),
        ("pad", (t(2, 3),), {"axis": 2, "before": 1, "after": 0}, "out of range"),
        ("gather", (t(10, 4), i(2)), {"axis": 2}, r"for `table` \(f32\[10,4\]\)"),
        ("gather", (t(10, 4), t(2)), {"axis": 1}, "indices must be int64"),
        ("full", (i(),), {"dims": (2, 3), "value": 0, "dtype": "float32"}, "has 2 dims"),
        ("full", (i(1),), {"dims": (2,), "value": 0, "dtype": "float32"}, r"size 0 .* i64\[1\]"),
        ("full", (), {"dims": (), "value": 0, "dtype": "float16"}, "`dtype` of `full`"),
        ("full", (i(),), {"dims": (-1,), "value": 0, "dtype": "int64"}, "ints >= 0"),
        ("arange", (t(),), {"dim": "n"}, r"size 0 of `arange` is f32\[\]"),
        ("reshape_to", (t(2, 3), i(), i()), {"dims": (4, 2)}, r"6 elements\) to \[4, 2\]"),
        ("avg_pool1d", (t(2, 3),), {"kernel": 2}, r"`x` is f32\[2,3\]: pooling needs"),
        ("max_pool1d", (t(2, 3, 4),), {"kernel": 4}, "fewer than the window 4"),
        ("max_pool1d", (t(2, 9, 4),), {"kernel": 2, "stride": 0}, "stride >= 1"),
        ("conv1d", (t("B", "T", 8), t(4, 3, 3)), {},
         r"`x` is f32\[B,T,8\] but `w` is f32\[4,3,3\]"),
        ("conv1d", (t("B", "T", 3), t(4, 3, 3), t(3)), {}, r"`bias` is f32\[3\] but `w`"),
        ("conv1d", (t(2, 4, 3), t(4, 3, 3)), {"dilation": 2}, "fewer than the window 5"),
    ]
    for op, types, attrs, message in bad:
        with pytest.raises(ShapeError, match=message):
            OPS[op].infer(*types, **attrs)


def test_new_shape_rules_keep_symbols():
    t = lambda *s: TensorType("float32", s)  # noqa: E731
    sl = lambda x, a, b: OPS["slice"].infer(x, axis=-1, start=a, end=b).shape[-1]  # noqa: E731
    assert [sl(t("seq"), -4, END), sl(t("seq"), 0, 4), sl(t("seq"), 1, -1)] == \
        ["seq[-4:]", "seq[:4]", "seq[1:-1]"]
    assert sl(t("past+seq"), -4, END) == "(past+seq)[-4:]" and sl(t("seq"), 0, END) == "seq"
    assert sl(t(9), -4, END) == 4 and sl(t(9), 2, 7) == 5  # static slices as before
    pad = OPS["pad"].infer(t("B", "seq"), axis=-1, before=1, after=1)
    assert pad.shape == ("B", "seq+2")
    assert OPS["gather"].infer(t(10, 4), TensorType("int64", ("B", "T"))).shape == ("B", "T", 4)
    conv = OPS["conv1d"].infer(t("B", "T", 8), t(16, 8, 3), dilation=2, stride=2)
    assert conv.shape == ("B", "pool(T,5,2)", 16)
    pool = OPS["avg_pool1d"].infer(t("B", "T", 8), kernel=5, stride=2)
    assert pool.shape == (*conv.shape[:2], 8)  # same window and stride: the same symbol
    assert OPS["max_pool1d"].infer(t(1, 10, 2), kernel=3).shape == (1, 3, 2)  # (10-3)//3+1


def test_gather_without_axis_prints_as_before():
    from archc.ir.printer import fmt_node

    g = _single_op_graph("gather", [f32(10, 4), i64(0, 10, 2)], {})
    assert fmt_node(g.outputs["y"]) == "%2:f32[2,4] = gather(%0, %1)"
