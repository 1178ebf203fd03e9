"""Every op: all four parts present, and its NumPy kernel equals onnxruntime on a one-op model."""

from __future__ import annotations

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

# op -> (input arrays, attrs): one or more cases per op; dims given as strings stay symbolic.
CASES: dict[str, list[tuple[list[np.ndarray], dict]]] = {
    "add": [([f32(2, 3, 4), f32(4)], {})], "sub": [([f32(2, 3), f32(2, 1)], {})],
    "mul": [([f32(3, 4), f32(1, 4)], {})], "div": [([f32(3, 4), f32(4) + 3], {})],
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
    "slice": [([f32(2, 9)], {"axis": -1, "start": 2, "end": 7})],
    "gather": [([f32(10, 4), rng.integers(0, 10, (2, 3))], {})],
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
}


def _single_op_graph(op: str, arrays, attrs) -> Graph:
    g = Graph(op)
    dtype = {"f": "float32", "i": "int64", "b": "bool"}
    ins = [g.add_input(f"x{i}", TensorType(dtype[a.dtype.kind], a.shape))
           for i, a in enumerate(map(np.asarray, arrays))]
    node = g.add_op(op, ins, attrs)
    node.type = infer_node(node)
    g.set_output("y", node)
    return g


def test_every_op_has_all_parts_and_a_test_case():
    for name, op in OPS.items():
        assert callable(op.infer) and callable(op.numpy) and callable(op.onnx), name
        assert name in CASES, f"op `{name}` has no differential test case"


@pytest.mark.parametrize("op", sorted(CASES))
def test_numpy_kernel_matches_onnxruntime(op):
    for arrays, attrs in CASES[op]:
        arrays = [np.asarray(a) for a in arrays]
        g = _single_op_graph(op, arrays, attrs)
        feeds = {f"x{i}": a for i, a in enumerate(arrays)}
        ours = run_graph(g, feeds, {})["y"]
        theirs = run_onnx(export_onnx(g), feeds)["y"]
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        assert tuple(g.outputs["y"].type.shape) == ours.shape  # the shape rule agrees
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
