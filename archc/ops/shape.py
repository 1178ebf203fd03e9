"""Data movement: reshape, transpose, concat, slice, gather, pad, and shapes from run-time sizes."""

from __future__ import annotations

import numpy as np

from archc.ir.types import DTYPES, ShapeError, TensorType, dim_add, fmt_shape, numel
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
    symbols = sorted(d for d in out if isinstance(d, str))  # the same symbols on both sides:
    if symbols == sorted(d for d in x.shape if isinstance(d, str)) and \
            numel(tuple(out)) != numel(x.shape):  # the static sizes must match
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
            numpy=lambda x, perm: x.transpose(perm),
            onnx=lambda b, x, perm: b.op("Transpose", x, perm=list(perm)))


def _concat_infer(*ts: TensorType, axis: int) -> TensorType:
    first = ts[0]
    ax = axis % first.rank
    for t in ts[1:]:
        if t.dtype != first.dtype:
            raise ShapeError(f"cannot concat {first} and {t}: different dtypes")
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


_TO_END = 2**62  # an `end` at or past this means "to the end" (specs write INT64_MAX)


def _slice_infer(x: TensorType, axis: int, start: int, end: int) -> TensorType:
    ax = axis % x.rank
    dim = x.shape[ax]
    length = len(range(dim)[start:end]) if isinstance(dim, int) else _sliced(dim, start, end)
    return x.with_shape((*x.shape[:ax], length, *x.shape[ax + 1:]))


def _sliced(dim: str, start: int, end: int) -> str:
    """A symbolic dim after Python slicing: `seq[-4:]`, `seq[:4]`, `(past+seq)[1:-1]`."""
    if start == 0 and end >= _TO_END:
        return dim  # the whole axis
    lo = "" if start == 0 else str(start)
    hi = "" if end >= _TO_END else str(end)
    return f"{dim if dim.isidentifier() else f'({dim})'}[{lo}:{hi}]"


def _slice(x, axis, start, end):
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, end)
    return x[tuple(index)]


def _slice_onnx(b, x, axis, start, end):
    ints = [np.array([v], np.int64) for v in (start, end, axis)]
    return b.op("Slice", x, *map(b.const, ints))


register_op("slice", 1, {"axis": True, "start": True, "end": True}, infer=_slice_infer,
            numpy=_slice, onnx=_slice_onnx)


def _gather_infer(table: TensorType, idx: TensorType, axis: int = 0) -> TensorType:
    expect_dtype(idx, "int64", what="indices")
    if not -table.rank <= axis < table.rank:
        raise ShapeError(f"`axis` = {axis} is out of range for `table` ({table})")
    ax = axis % table.rank
    return table.with_shape((*table.shape[:ax], *idx.shape, *table.shape[ax + 1:]))


# `axis` is optional and absent in what lowering emits for embeddings (rows of a table), so
# those nodes print as they always have: `gather(%1, %2)`.
register_op("gather", 2, {"axis": False}, infer=_gather_infer,
            numpy=lambda table, idx, axis=0: np.take(table, idx, axis=axis),
            onnx=lambda b, table, idx, axis=0: b.op("Gather", table, idx, axis=axis))


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


def _pad_infer(x: TensorType, axis: int, before: int, after: int, value: float = 0) -> TensorType:
    if not -x.rank <= axis < x.rank:
        raise ShapeError(f"`axis` = {axis} is out of range for `x` ({x})")
    if before < 0 or after < 0:
        raise ShapeError(f"pad of `x` ({x}) needs `before` and `after` >= 0, got {before}, {after}")
    ax = axis % x.rank
    return x.with_shape((*x.shape[:ax], dim_add(x.shape[ax], before + after), *x.shape[ax + 1:]))


def _pad(x, axis, before, after, value=0):  # [.., N, ..] -> [.., before+N+after, ..]
    widths = [(0, 0)] * x.ndim
    widths[axis] = (before, after)
    return np.pad(x, widths, constant_values=np.array(value, x.dtype))


def _pad_onnx(b, x, axis, before, after, value=0):
    t = b.type_of(x)
    pads = np.zeros(2 * t.rank, np.int64)  # all begins, then all ends
    pads[axis % t.rank], pads[t.rank + axis % t.rank] = before, after
    fill = b.const(np.array(value, DTYPES[t.dtype]))
    return b.op("Pad", x, b.const(pads), fill, mode="constant")


register_op("pad", 1, {"axis": True, "before": True, "after": True, "value": False},
            infer=_pad_infer, numpy=_pad, onnx=_pad_onnx)


# ------------------------------------------------ shapes spelled by int64 scalars at run time
# `full`, `arange` and `reshape_to` take their sizes as int64 scalars (from `dim_size`), so a
# shape can follow the input; the `dims` attr is the same shape at the type level.
def _check_sizes(op: str, sizes: tuple[TensorType, ...], dims: tuple) -> None:
    if len(sizes) != len(dims):
        raise ShapeError(f"`{op}` has {len(sizes)} size inputs but `dims` = "
                         f"{fmt_shape(tuple(dims))} has {len(dims)} dims")
    for i, s in enumerate(sizes):
        if s.dtype != "int64" or s.rank != 0:
            raise ShapeError(f"size {i} of `{op}` is {s}: needs an int64 scalar (i64[])")
    bad = [d for d in dims if not isinstance(d, str) and not (
        isinstance(d, int | np.integer) and not isinstance(d, bool) and d >= 0)]
    if bad:
        raise ShapeError(f"`dims` of `{op}` holds {bad[0]!r}: needs ints >= 0 or symbols")


def _shape_of(b, sizes) -> str:  # N int64 scalars -> int64[N]
    if not sizes:
        return b.const(np.zeros(0, np.int64))
    zero = b.const(np.array([0], np.int64))
    parts = [b.op("Unsqueeze", s, zero) for s in sizes]
    return parts[0] if len(parts) == 1 else b.op("Concat", *parts, axis=0)


def _full_infer(*sizes: TensorType, dims: tuple, value: float, dtype: str) -> TensorType:
    if dtype not in DTYPES:
        raise ShapeError(f"`dtype` of `full` is {dtype!r}: needs one of {', '.join(DTYPES)}")
    _check_sizes("full", sizes, dims)
    return TensorType(dtype, tuple(dims))


def _full(*sizes, dims, value, dtype):  # N scalars -> [s0, .., sN-1], every entry `value`
    return np.full(tuple(int(s) for s in sizes), value, DTYPES[dtype])


register_op("full", (0, 8), {"dims": True, "value": True, "dtype": True}, infer=_full_infer,
            numpy=_full, onnx=lambda b, *sizes, dims, value, dtype: b.op(
                "Expand", b.const(np.array(value, DTYPES[dtype])), _shape_of(b, sizes)))


def _arange_infer(n: TensorType, dim: int | str) -> TensorType:
    _check_sizes("arange", (n,), (dim,))
    return TensorType("int64", (dim,))


register_op("arange", 1, {"dim": True}, infer=_arange_infer,  # n -> [n]: 0, 1, ..., n-1
            numpy=lambda n, dim: np.arange(int(n), dtype=np.int64),
            onnx=lambda b, n, dim: b.op("Range", b.const(np.array(0, np.int64)), n,
                                        b.const(np.array(1, np.int64))))


def _reshape_to_infer(x: TensorType, *sizes: TensorType, dims: tuple) -> TensorType:
    _check_sizes("reshape_to", sizes, dims)
    symbols = sorted(d for d in dims if isinstance(d, str))  # the same symbols both sides:
    if symbols == sorted(d for d in x.shape if isinstance(d, str)) and \
            numel(dims) != numel(x.shape):  # then the static sizes must match
        per = f" per {'*'.join(symbols)}" if symbols else ""
        raise ShapeError(f"cannot reshape `x` ({x}, {numel(x.shape)} elements{per}) to "
                         f"{fmt_shape(tuple(dims))} ({numel(dims)} elements{per})")
    return x.with_shape(dims)


# Sizes are taken literally: allowzero=1 makes a 0 mean an empty dim, not ONNX's "copy the dim".
register_op("reshape_to", (1, 9), {"dims": True}, infer=_reshape_to_infer,
            numpy=lambda x, *sizes, dims: x.reshape(tuple(int(s) for s in sizes)),
            onnx=lambda b, x, *sizes, dims: b.op("Reshape", x, _shape_of(b, sizes), allowzero=1))
