"""Reductions along one axis: sums, means, extrema, argmax, top-k, log-softmax and cumsum.

In opset 18 every Reduce* op takes its axes as an int64 input, not an attribute. Argmax and top-k
resolve ties to the lower index on both backends, as ONNX specifies.
"""

from __future__ import annotations

import numpy as np

from archc.ir.types import ShapeError, TensorType
from archc.ops.registry import register_op


def _reduce_infer(x: TensorType, axis: int, keepdims: bool = False) -> TensorType:
    ax = axis % x.rank
    dims = (*x.shape[:ax], 1, *x.shape[ax + 1:]) if keepdims else (*x.shape[:ax], *x.shape[ax + 1:])
    return x.with_shape(dims)


def _axes(b, axis: int) -> str:
    return b.const(np.array([axis], np.int64))


register_op("reduce_sum", 1, {"axis": True, "keepdims": False}, infer=_reduce_infer,
            numpy=lambda x, axis, keepdims=False: x.sum(axis=axis, keepdims=keepdims),
            onnx=lambda b, x, axis, keepdims=False: b.op(
                "ReduceSum", x, _axes(b, axis), keepdims=int(keepdims)))

register_op("cumsum", 1, {"axis": True}, infer=lambda x, axis: x,
            numpy=lambda x, axis: np.cumsum(x, axis=axis).astype(x.dtype, copy=False),
            onnx=lambda b, x, axis: b.op("CumSum", x, b.const(np.array(axis, np.int64))))


def check_axis(x: TensorType, axis: int, *dtypes: str) -> int:
    """`axis` normalised to 0..rank-1, after checking it and x's dtype (a ShapeError if not)."""
    if not -x.rank <= axis < x.rank:
        raise ShapeError(f"`axis` = {axis} is out of range for `x` ({x})")
    if x.dtype not in dtypes:
        raise ShapeError(f"`x` is {x}: needs {' or '.join(dtypes)}")
    return axis % x.rank


def _reduction(name: str, fn, onnx_op: str, *dtypes: str) -> None:
    """reduce_sum's schema and shape rule, with the axis and dtype checked first."""
    def infer(x: TensorType, axis: int, keepdims: bool = False) -> TensorType:
        check_axis(x, axis, *dtypes)
        return _reduce_infer(x, axis, keepdims)

    def kernel(x, axis, keepdims=False):  # [.., N, ..] -> [.., ..] or [.., 1, ..]
        return np.asarray(fn(x, axis=axis, keepdims=keepdims)).astype(x.dtype, copy=False)

    register_op(name, 1, {"axis": True, "keepdims": False}, infer=infer, numpy=kernel,
                onnx=lambda b, x, axis, keepdims=False: b.op(
                    onnx_op, x, _axes(b, axis), keepdims=int(keepdims)))


_reduction("reduce_mean", np.mean, "ReduceMean", "float32")
_reduction("reduce_max", np.max, "ReduceMax", "float32", "int64")
_reduction("reduce_min", np.min, "ReduceMin", "float32", "int64")


def _argmax_infer(x: TensorType, axis: int, keepdims: bool = False) -> TensorType:
    check_axis(x, axis, "float32", "int64")
    return _reduce_infer(x, axis, keepdims).with_dtype("int64")


register_op("argmax", 1, {"axis": True, "keepdims": False}, infer=_argmax_infer,
            numpy=lambda x, axis, keepdims=False: np.argmax(x, axis=axis, keepdims=keepdims),
            onnx=lambda b, x, axis, keepdims=False: b.op(  # np.argmax keeps the first of ties
                "ArgMax", x, axis=axis, keepdims=int(keepdims), select_last_index=0))


def _log_softmax(x, axis: int):  # [.., N, ..] -> same: (x - max) - log(sum(e^(x - max)))
    shifted = x - x.max(axis=axis, keepdims=True)
    return (shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))).astype(x.dtype)


def _log_softmax_infer(x: TensorType, axis: int) -> TensorType:
    check_axis(x, axis, "float32")
    return x


register_op("log_softmax", 1, {"axis": True}, infer=_log_softmax_infer, numpy=_log_softmax,
            onnx=lambda b, x, axis: b.op("LogSoftmax", x, axis=axis))


def _topk_infer(x: TensorType, k: int, axis: int = -1) -> TensorType:
    ax = check_axis(x, axis, "float32", "int64")
    dim = x.shape[ax]
    if k < 1 or (isinstance(dim, int) and k > dim):
        raise ShapeError(f"`k` = {k} does not fit axis {axis} of `x` ({x})")
    return x.with_shape((*x.shape[:ax], k, *x.shape[ax + 1:]))


def _topk_indices(x, k: int, axis: int = -1):  # [.., N, ..] -> [.., k, ..] int64
    # A stable sort of -x lists the largest first and keeps equal values in index order.
    order = np.argsort(-x, axis=axis, kind="stable")
    return np.take(order, np.arange(k), axis=axis).astype(np.int64)


def _topk_onnx(b, x, k: int, axis: int, output: int) -> str:
    outs = b.op_multi("TopK", x, b.const(np.array([k], np.int64)), n=2, axis=axis, largest=1,
                      sorted=1)
    return outs[output]


register_op("topk_values", 1, {"k": True, "axis": False}, infer=_topk_infer,
            numpy=lambda x, k, axis=-1: np.take_along_axis(x, _topk_indices(x, k, axis), axis),
            onnx=lambda b, x, k, axis=-1: _topk_onnx(b, x, k, axis, 0))
register_op("topk_indices", 1, {"k": True, "axis": False},
            infer=lambda x, k, axis=-1: _topk_infer(x, k, axis).with_dtype("int64"),
            numpy=_topk_indices, onnx=lambda b, x, k, axis=-1: _topk_onnx(b, x, k, axis, 1))
