"""Data movement: reshape, transpose, concat, slice, gather, and positions from a dynamic length."""

from __future__ import annotations

import numpy as np

from archc.ir.types import ShapeError, TensorType, dim_add, fmt_shape, numel
from archc.ops.registry import expect_dtype, register_op


def _reshape_infer(x: TensorType, shape: tuple[int, ...]) -> TensorType:
    """ONNX semantics: 0 copies the input dim at that position, -1 takes what is left."""
    out = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    if -1 in out:
        rest = [d for i, d in enumerate(x.shape) if not (i < len(shape) and shape[i] == 0)]
        symbols = [d for d in rest if isinstance(d, str)]
        known = numel(tuple(d for d in shape if d not in (0, -1)))
        if not symbols:
            out[out.index(-1)] = numel(tuple(rest)) // max(known, 1)
        elif len(symbols) == 1 and numel(tuple(rest)) == known:  # the one symbol left is -1
            out[out.index(-1)] = symbols[0]
        else:
            raise ShapeError(f"cannot infer -1 when reshaping {x} to {fmt_shape(shape)}")
    if all(isinstance(d, int) for d in (*out, *x.shape)) and numel(out) != numel(x.shape):
        raise ShapeError(f"cannot reshape {x} to {fmt_shape(tuple(out))}")
    return x.with_shape(out)


def _reshape(x, shape):
    target = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(target)


register_op("reshape", 1, {"shape": True}, infer=_reshape_infer, numpy=_reshape,
            onnx=lambda b, x, shape: b.op("Reshape", x, b.const(np.array(shape, np.int64))))


def _transpose_infer(x: TensorType, perm: tuple[int, ...]) -> TensorType:
    if sorted(perm) != list(range(x.rank)):
        raise ShapeError(f"perm {perm} does not fit rank {x.rank}")
    return x.with_shape(x.shape[p] for p in perm)


register_op("transpose", 1, {"perm": True}, infer=_transpose_infer,
            numpy=lambda x, perm: np.transpose(x, perm),
            onnx=lambda b, x, perm: b.op("Transpose", x, perm=list(perm)))


def _concat_infer(*ts: TensorType, axis: int) -> TensorType:
    first = ts[0]
    ax = axis % first.rank
    for t in ts[1:]:
        if t.rank != first.rank or any(a != c for i, (a, c) in enumerate(
                zip(t.shape, first.shape)) if i != ax):
            raise ShapeError(f"cannot concat {first} and {t} on axis {axis}")
    total = first.shape[ax]
    for t in ts[1:]:
        total = dim_add(total, t.shape[ax])
    return first.with_shape((*first.shape[:ax], total, *first.shape[ax + 1:]))


register_op("concat", (1, 64), {"axis": True}, infer=_concat_infer,
            numpy=lambda *xs, axis: np.concatenate(xs, axis=axis),
            onnx=lambda b, *xs, axis: b.op("Concat", *xs, axis=axis))


def _slice_infer(x: TensorType, axis: int, start: int, end: int) -> TensorType:
    ax = axis % x.rank
    dim = x.shape[ax]
    if not isinstance(dim, int):
        raise ShapeError(f"slice needs a static dim, got {dim}")
    length = len(range(dim)[start:end])
    return x.with_shape((*x.shape[:ax], length, *x.shape[ax + 1:]))


def _slice(x, axis, start, end):
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, end)
    return x[tuple(index)]


def _slice_onnx(b, x, axis, start, end):
    ints = [np.array([v], np.int64) for v in (start, end, axis)]
    return b.op("Slice", x, *map(b.const, ints))


register_op("slice", 1, {"axis": True, "start": True, "end": True}, infer=_slice_infer,
            numpy=_slice, onnx=_slice_onnx)


def _gather_infer(table: TensorType, idx: TensorType) -> TensorType:
    expect_dtype(idx, "int64", what="indices")
    return table.with_shape((*idx.shape, *table.shape[1:]))


register_op("gather", 2, infer=_gather_infer,
            numpy=lambda table, idx: np.take(table, idx, axis=0),
            onnx=lambda b, table, idx: b.op("Gather", table, idx, axis=0))


def _take_infer(x: TensorType, axis: int, index: int) -> TensorType:
    ax = axis % x.rank
    return x.with_shape((*x.shape[:ax], *x.shape[ax + 1:]))


register_op("take", 1, {"axis": True, "index": True}, infer=_take_infer,
            numpy=lambda x, axis, index: np.take(x, index, axis=axis),
            onnx=lambda b, x, axis, index: b.op("Gather", x, b.const(np.array(index, np.int64)),
                                                axis=axis))


def _positions_infer(x: TensorType, axis: int, offset: int = 0) -> TensorType:
    return TensorType("int64", (x.shape[axis],))


def _positions(x, axis, offset=0):  # [.., T, ..] -> [T]: offset, offset+1, ..., offset+T-1
    return np.arange(offset, offset + x.shape[axis], dtype=np.int64)


def _positions_onnx(b, x, axis, offset=0):
    n = b.dim(x, axis)
    start = b.const(np.array(offset, np.int64))
    return b.op("Range", start, b.op("Add", n, start), b.const(np.array(1, np.int64)))


register_op("positions", 1, {"axis": True, "offset": False}, infer=_positions_infer,
            numpy=_positions, onnx=_positions_onnx)


def _reduce_infer(x: TensorType, axis: int, keepdims: bool = False) -> TensorType:
    ax = axis % x.rank
    dims = (*x.shape[:ax], 1, *x.shape[ax + 1:]) if keepdims else (*x.shape[:ax], *x.shape[ax + 1:])
    return x.with_shape(dims)


register_op("reduce_sum", 1, {"axis": True, "keepdims": False}, infer=_reduce_infer,
            numpy=lambda x, axis, keepdims=False: x.sum(axis=axis, keepdims=keepdims),
            onnx=lambda b, x, axis, keepdims=False: b.op(
                "ReduceSum", x, b.const(np.array([axis], np.int64)), keepdims=int(keepdims)))

register_op("cumsum", 1, {"axis": True}, infer=lambda x, axis: x,
            numpy=lambda x, axis: np.cumsum(x, axis=axis).astype(x.dtype),
            onnx=lambda b, x, axis: b.op("CumSum", x, b.const(np.array(axis, np.int64))))


def _dim_size_infer(x: TensorType, axis: int) -> TensorType:
    return TensorType("int64", ())


register_op("dim_size", 1, {"axis": True}, infer=_dim_size_infer,  # x.shape[axis] at run time
            numpy=lambda x, axis: np.array(x.shape[axis], np.int64),
            onnx=lambda b, x, axis: b.dim(x, axis))


def _tail_infer(x: TensorType, ref: TensorType, axis: int, ref_axis: int) -> TensorType:
    ax = axis % x.rank
    return x.with_shape((*x.shape[:ax], ref.shape[ref_axis], *x.shape[ax + 1:]))


def _tail(x, ref, axis, ref_axis):  # the last ref.shape[ref_axis] entries of x along axis
    n = ref.shape[ref_axis]
    return _slice(x, axis, x.shape[axis] - n, x.shape[axis])


def _tail_onnx(b, x, ref, axis, ref_axis):
    n = b.op("Unsqueeze", b.dim(ref, ref_axis), b.const(np.array([0], np.int64)))
    big = b.const(np.array([np.iinfo(np.int64).max], np.int64))
    return b.op("Slice", x, b.op("Neg", n), big, b.const(np.array([axis], np.int64)))


register_op("tail", 2, {"axis": True, "ref_axis": True}, infer=_tail_infer, numpy=_tail,
            onnx=_tail_onnx)


def _last_infer(x: TensorType, axis: int, n: int) -> TensorType:
    ax = axis % x.rank
    return x.with_shape((*x.shape[:ax], f"min({x.shape[ax]},{n})" if isinstance(
        x.shape[ax], str) else min(x.shape[ax], n), *x.shape[ax + 1:]))


register_op("last", 1, {"axis": True, "n": True}, infer=_last_infer,  # the last n (or fewer)
            numpy=lambda x, axis, n: _slice(x, axis, max(0, x.shape[axis] - n), x.shape[axis]),
            onnx=lambda b, x, axis, n: b.op(
                "Slice", x, b.const(np.array([-n], np.int64)),
                b.const(np.array([np.iinfo(np.int64).max], np.int64)),
                b.const(np.array([axis], np.int64))))
