"""The tensor primitives of the language: elementwise functions, reductions, shapes, constants.

Each is a `Signature` (what a spec may write) and a few lines that emit ops through the
`LayerBuilder`; the ops' shape rules check the operands, and a rejection becomes a diagnostic
naming the call. Lists are written `[a, b]`; a list of dims may hold symbolic dims (`seq`).
Parameters, state, masks and positions are in `archc/lower/intrinsics.py`.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

from archc.ir.graph import Node
from archc.ir.types import ShapeError
from archc.lower import (  # noqa: F401  (registers param, cache, masks, the catalogue's own)
    cat_adaptive,
    cat_memory,
    cat_sparse,
    intrinsics,
)
from archc.lower.builder import LayerBuilder
from archc.lower.layers import layer
from archc.lower.signature import Arg, SymDim, describe

T = "tensor"
DTYPE_NAMES = ("float32", "int64", "bool")


def _fn(name: str, op: str, doc: str, **attrs):
    layer(name, 1, Arg("x", T), owns=False, doc=doc)(lambda b, x: b.op(op, x, **attrs))


for _name, _doc in (("exp", "e^x"), ("log", "natural log"), ("sqrt", "square root"),
                    ("rsqrt", "1 / sqrt(x)"), ("abs", "|x|"), ("relu", "max(x, 0)"),
                    ("silu", "x * sigmoid(x)"), ("sigmoid", "1 / (1 + e^-x)"),
                    ("tanh", "tanh"), ("sin", "sine"), ("cos", "cosine"), ("erf", "error fn"),
                    ("softplus", "log(1 + e^x)"), ("floor", "round down")):
    _fn(_name, _name, _doc)
_fn("gelu", "gelu", "x * Phi(x) (erf form)", approximate="none")
_fn("gelu_tanh", "gelu", "gelu, tanh approximation", approximate="tanh")


@layer("elu", 1, Arg("x", T), Arg("alpha", "float", 1.0), owns=False, doc="x > 0 ? x : a(e^x-1)")
def elu(b, x, alpha):
    return b.op("elu", x, alpha=alpha)


@layer("dropout", 2, Arg("x", T), Arg("p", "float"), owns=False, doc="identity at inference")
def dropout(b, x, p):
    return b.op("dropout", x, p=p)


def _operand(b: LayerBuilder, v, like: Node, what: str) -> Node:
    from archc.lower.operators import as_tensor

    t = as_tensor(b.ev, v, like)
    if t is None and isinstance(v, int | float) and not isinstance(v, bool) and \
            like.type.dtype != "bool":
        b.fail("E0200", f"`{what}` = {v} does not fit {like.type.dtype}, the dtype of "
               f"{like.type}", "here", span=b.at(what))
    if t is None:
        b.fail("E0104", f"`{what}` must be a tensor or a number", f"this is {describe(v)}",
               span=b.at(what))
    return t


def _pairwise(b: LayerBuilder, op: str, a, c):
    like = a if isinstance(a, Node) else c
    if not isinstance(like, Node):  # two numbers: compute now
        if not all(isinstance(v, int | float) for v in (a, c)):
            b.fail("E0104", f"`{op}` needs tensors or numbers", "here")
        return (max if op == "maximum" else min)(a, c)
    return b.op(op, _operand(b, a, like, "x"), _operand(b, c, like, "y"))


def _binary(name: str, op: str, doc: str):
    layer(name, 2, Arg("x", "value"), Arg("y", "value"), owns=False, doc=doc)(
        lambda b, x, y: _pairwise(b, op, x, y))


_binary("maximum", "maximum", "elementwise max (numbers too)")
_binary("minimum", "minimum", "elementwise min (numbers too)")


@layer("where", 3, Arg("cond", T), Arg("x", "value"), Arg("y", "value"), owns=False,
       doc="x where cond is true, else y (a number takes the other operand's dtype)")
def where(b, cond, x, y):
    like = x if isinstance(x, Node) else y
    if not isinstance(like, Node):
        b.fail("E0104", "`where` needs a tensor in `x` or `y`", "two numbers")
    return b.op("where", cond, _operand(b, x, like, "x"), _operand(b, y, like, "y"))


@layer("clip", 1, Arg("x", T), Arg("lo", "float", None), Arg("hi", "float", None), owns=False,
       doc="clamp into [lo, hi]")
def clip(b, x, lo, hi):
    if lo is None and hi is None:
        b.fail("E0103", "`clip` needs `lo` or `hi`", "neither given")
    attrs = {k: v for k, v in (("lo", lo), ("hi", hi)) if v is not None}
    return b.op("clip", x, **attrs)


@layer("cast", 2, Arg("x", T), Arg("to", "enum", choices=DTYPE_NAMES), owns=False,
       doc="convert dtype; bools become 0/1")
def cast(b, x, to):
    return x if x.type.dtype == to else b.op("cast", x, to=to)


# ---------------------------------------------------------------- reductions
def _reduce(name: str, op: str, doc: str):
    @layer(name, 1, Arg("x", "value"), Arg("axis", "int", -1), Arg("keepdims", "bool", False),
           owns=False, doc=doc)
    def lower(b, x, axis, keepdims):
        if not isinstance(x, Node):
            b.fail("E0104", f"`{name}` needs a tensor", f"this is {describe(x)}", span=b.at("x"))
        return b.op(op, x, axis=_axis(b, x, axis), keepdims=keepdims)


_reduce("sum", "reduce_sum", "sum over `axis`")
_reduce("mean", "reduce_mean", "mean over `axis`")
_reduce("argmax", "argmax", "index of the largest entry over `axis` (int64)")


_reduce("max", "reduce_max", "maximum over `axis` (for two values: `maximum(a, b)`)")
_reduce("min", "reduce_min", "minimum over `axis` (for two values: `minimum(a, b)`)")


def _axis(b: LayerBuilder, x: Node, axis: int) -> int:
    if not -x.type.rank <= axis < x.type.rank:
        b.fail("E0201", f"axis {axis} is out of range for {x.type}", f"rank {x.type.rank}",
               span=b.at("axis"))
    return axis


@layer("cumsum", 1, Arg("x", T), Arg("axis", "int", -1), owns=False, doc="running sum")
def cumsum(b, x, axis):
    return b.op("cumsum", x, axis=_axis(b, x, axis) % x.type.rank)


@layer("softmax", 1, Arg("x", T), Arg("axis", "int", -1), owns=False, doc="softmax over axis")
def softmax(b, x, axis):
    return b.op("softmax", x, axis=_axis(b, x, axis))


@layer("log_softmax", 1, Arg("x", T), Arg("axis", "int", -1), owns=False, doc="log of softmax")
def log_softmax(b, x, axis):
    return b.op("log_softmax", x, axis=_axis(b, x, axis))


@layer("topk", 2, Arg("x", T), Arg("k", "int"), Arg("axis", "int", -1), owns=False,
       doc="(values, indices) of the k largest entries along axis, largest first")
def topk(b, x, k, axis):
    n = x.type.shape[_axis(b, x, axis)]
    if k < 1 or (isinstance(n, int) and k > n):
        b.fail("E0200", f"`k` = {k} must be in 1..{n}", "here", span=b.at("k"))
    return (b.op("topk_values", x, k=k, axis=axis), b.op("topk_indices", x, k=k, axis=axis))


# ---------------------------------------------------------------- shapes
def _dims(b: LayerBuilder, dims, what: str) -> list:
    out = []
    for d in dims:
        if isinstance(d, SymDim) or (isinstance(d, int) and not isinstance(d, bool)
                                     and (d > 0 or d == -1)):
            out.append(d)
        else:
            b.fail("E0104", f"`{what}` takes positive integers, symbolic dims or -1",
                   f"has {describe(d)}", span=b.at(what))
    return out


@layer("reshape", 2, Arg("x", T), Arg("shape", "list"), owns=False,
       doc="new shape; -1 once for what is left; symbolic dims such as `seq` allowed")
def reshape(b, x, shape):
    dims = _dims(b, shape, "shape")
    if dims.count(-1) > 1:  # `[-1, -1]`: nothing says how to share what is left
        b.fail("E0104", "`shape` can hold -1 only once", f"has {dims.count(-1)}",
               span=b.at("shape"))
    static = []
    for i, d in enumerate(dims):  # a symbol kept in place copies the input's dim (ONNX 0)
        if isinstance(d, SymDim):
            d = 0 if i < x.type.rank and x.type.shape[i] == d.name else None
        static.append(d)
    if None not in static and _static_ok(x, static):
        return b.op("reshape", x, shape=tuple(static))
    names = [d.name if isinstance(d, SymDim) else d for d in dims]
    sizes = [None if d == -1 else _size(b, d) for d in dims]
    if -1 in dims:  # what is left: numel(x) / the other sizes, read at run time
        i = dims.index(-1)
        total = _numel(b, x)
        for j, s in enumerate(sizes):
            if j != i:
                total = b.op("div", total, s)
        sizes[i], names[i] = total, _leftover(x, [n for n in names if n != -1])
    return b.op("reshape_to", x, *sizes, dims=tuple(names))


def _static_ok(x: Node, static: list) -> bool:
    """Whether the ONNX-style static reshape types: a -1 that would merge a symbolic dim with
    others cannot be named by its rule, so such a reshape takes the run-time path."""
    from archc.ops import OPS

    try:
        OPS["reshape"].infer(x.type, shape=tuple(static))
    except ShapeError:
        return False
    return True


def _numel(b: LayerBuilder, x: Node) -> Node:
    sizes = [b.const(d, np.int64) if isinstance(d, int) else b.op("dim_size", x, axis=axis)
             for axis, d in enumerate(x.type.shape)]
    return functools.reduce(lambda total, size: b.op("mul", total, size), sizes)


def _leftover(x: Node, known: list) -> int | str:
    """The type-level dim that -1 stands for: x's factors less the target's known ones, e.g.
    [batch, 4, 6] -> [-1, 6] leaves `batch*4`."""
    factors = list(x.type.shape)
    static = 1
    for d in known:
        if d in factors:
            factors.remove(d)
        elif isinstance(d, int):
            static *= d
    ints = int(np.prod([d for d in factors if isinstance(d, int)], dtype=np.int64)) // static
    syms = [d if d.isidentifier() else f"({d})" for d in factors if isinstance(d, str)]
    if not syms:
        return ints
    return "*".join(syms + ([str(ints)] if ints != 1 else []))


def _size(b: LayerBuilder, d) -> Node:
    if isinstance(d, SymDim):
        return b.op("dim_size", d.ref, axis=d.axis)
    return b.const(d, np.int64)


@layer("transpose", 2, Arg("x", T), Arg("perm", "list", None), owns=False,
       doc="permute axes; without `perm`, swap the last two")
def transpose(b, x, perm):
    r = x.type.rank
    perm = (*range(r - 2), r - 1, r - 2) if perm is None else perm
    if sorted(p % r if isinstance(p, int) and -r <= p < r else -1 for p in perm) != \
            list(range(r)):
        b.fail("E0201", f"`perm` {list(perm)} is not a permutation of {r} axes of {x.type}",
               "here", span=b.at("perm"))
    return b.op("transpose", x, perm=tuple(p % r for p in perm))


@layer("concat", 1, Arg("xs", "*value"), Arg("axis", "int", -1), owns=False,
       doc="join tensors along axis: concat(a, b, axis = 1)")
def concat(b, xs, axis):
    if not xs or not all(isinstance(x, Node) for x in xs):
        b.fail("E0104", "`concat` joins tensors", "give two or more tensors")
    return b.op("concat", *xs, axis=_axis(b, xs[0], axis))


@layer("chunk", 2, Arg("x", T), Arg("n", "int"), Arg("axis", "int", -1), owns=False,
       doc="n equal parts along axis (a static dim), as a list")
def chunk(b, x, n, axis):
    size = x.type.shape[_axis(b, x, axis)]
    if not isinstance(size, int) or n < 1 or size % n:
        b.fail("E0201", f"cannot cut dim {size} of {x.type} into {n} equal parts", "here",
               span=b.at("n"))
    return split(b, x, (size // n,) * n, axis)


@layer("split", 2, Arg("x", T), Arg("sizes", "list"), Arg("axis", "int", -1), owns=False,
       doc="parts of the given sizes along axis, as a list")
def split(b, x, sizes, axis):
    size = x.type.shape[_axis(b, x, axis)]
    if not all(isinstance(s, int) and s > 0 for s in sizes) or sum(sizes) != size:
        b.fail("E0201", f"sizes {list(sizes)} do not add up to dim {size} of {x.type}", "here",
               span=b.at("sizes"))
    starts = np.cumsum((0, *sizes)).tolist()
    return tuple(b.op("slice", x, axis=axis % x.type.rank, start=s, end=e)
                 for s, e in itertools.pairwise(starts))


@layer("gather", 2, Arg("table", T), Arg("index", T), Arg("axis", "int", 0), owns=False,
       doc="rows of table picked by integer index along axis")
def gather(b, table, index, axis):
    attrs = {"axis": axis % table.type.rank} if axis else {}
    return b.op("gather", table, index, **attrs)


@layer("pad", 3, Arg("x", T), Arg("before", "int"), Arg("after", "int"), Arg("axis", "int", -1),
       Arg("value", "float", 0.0), owns=False, doc="constant padding along axis")
def pad(b, x, before, after, axis, value):
    if before < 0 or after < 0:
        b.fail("E0200", "padding must be non-negative", "here")
    return b.op("pad", x, axis=_axis(b, x, axis) % x.type.rank, before=before, after=after,
                value=value)


@layer("dim", 2, Arg("x", T), Arg("axis", "int"), owns=False,
       doc="the size of axis: an integer, or a symbolic dim such as `seq`")
def dim(b, x, axis):
    d = x.type.shape[_axis(b, x, axis)]
    return d if isinstance(d, int) else SymDim(d, x, axis % x.type.rank)


# ---------------------------------------------------------------- constants
@layer("full", 2, Arg("shape", "list"), Arg("value", "float"),
       Arg("dtype", "enum", "float32", DTYPE_NAMES), owns=False,
       doc="a tensor of one value; the shape may hold symbolic dims")
def full(b, shape, value, dtype):
    dims = _dims(b, shape, "shape")
    if -1 in dims:
        b.fail("E0104", "`shape` cannot hold -1 here", "here", span=b.at("shape"))
    if all(isinstance(d, int) for d in dims):
        b.const_budget(dims, np.dtype(dtype).itemsize, "shape")
        return b.const(np.full(dims, value), np.dtype(dtype))
    return b.op("full", *(_size(b, d) for d in dims), value=value, dtype=dtype,
                dims=tuple(d.name if isinstance(d, SymDim) else d for d in dims))


@layer("zeros", 1, Arg("shape", "*value"), Arg("dtype", "enum", "float32", DTYPE_NAMES),
       owns=False, doc="zeros(batch, seq, d)")
def zeros(b, shape, dtype):
    return full(b, shape, 0.0, dtype)


@layer("ones", 1, Arg("shape", "*value"), Arg("dtype", "enum", "float32", DTYPE_NAMES),
       owns=False, doc="ones(batch, seq, d)")
def ones(b, shape, dtype):
    return full(b, shape, 1.0, dtype)


@layer("arange", 1, Arg("n", "dim"), owns=False, doc="0, 1, ..., n-1 (int64); n may be `seq`")
def arange(b, n):
    if isinstance(n, SymDim):
        return b.op("positions", n.ref, axis=n.axis)
    if n < 1:
        b.fail("E0200", f"`arange({n})` is empty", "here")
    b.const_budget((n,), 8, "n")
    return b.const(np.arange(n), np.int64)


# ---------------------------------------------------------------- pooling and convolution
def _pool(name: str, op: str):
    @layer(name, 2, Arg("x", T), Arg("kernel", "int"), Arg("stride", "int", None), owns=False,
           doc=f"{name} over the sequence axis of [B, T, C]")
    def lower(b, x, kernel, stride):
        if kernel < 1 or (stride is not None and stride < 1):
            b.fail("E0200", "`kernel` and `stride` must be positive", "here")
        return b.op(op, x, kernel=kernel, stride=stride or kernel)


_pool("avg_pool", "avg_pool1d")
_pool("max_pool", "max_pool1d")


@layer("conv1d", 2, Arg("x", T), Arg("w", T), Arg("bias", T, None), Arg("stride", "int", 1),
       Arg("dilation", "int", 1), owns=False,
       doc="1-D convolution over the sequence: x [B,T,Cin], w [Cout,Cin,K] -> [B,T',Cout]")
def conv1d(b, x, w, bias, stride, dilation):
    inputs = (x, w) if bias is None else (x, w, bias)
    return b.op("conv1d", *inputs, stride=stride, dilation=dilation)
