"""Primitives for the memory and retrieval catalogue (`archc/stdlib/memory_retrieval.arch`):
merging two axes into one and splitting one back.

`reshape` cannot do this when an axis is symbolic: its `-1` needs a single symbol left over,
and a symbol moved to another position is read at run time but cannot meet `-1`. So
`[batch, passages, len, d] -> [batch*passages, len, d]` (Fusion-in-Decoder's encoder, RETRO's
neighbours) has no spelling with `reshape`. These two emit `reshape_to` with the sizes read
at run time (`dim_size`, and `mul` for the merged axis), and name the merged axis by the
product of the two symbols (`batch*passages`), so a later `split_axis` can check it.
"""

from __future__ import annotations

import numpy as np

from archc.ir.graph import Node
from archc.ir.types import Dim
from archc.lower.builder import LayerBuilder
from archc.lower.layers import layer
from archc.lower.signature import Arg

T = "tensor"


def product(a: Dim, b: Dim) -> Dim:
    """The dim of two merged axes: an int when both are, else the symbol `a*b`."""
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    def factor(d: Dim) -> str:  # `batch`, `4`, `batch*n` stay bare; `m+seq` gets brackets
        s = str(d)
        return s if all(p.isidentifier() or p.isdigit() for p in s.split("*")) else f"({s})"
    return f"{factor(a)}*{factor(b)}"


def _size(b: LayerBuilder, x: Node, axis: int) -> Node:
    d = x.type.shape[axis]
    if isinstance(d, int):
        return b.const(d, np.int64)
    return b.op("dim_size", x, axis=axis)


def _axis(b: LayerBuilder, x: Node, axis: int, last: int) -> int:
    """`axis` as a non-negative index, with `last` more axes after it."""
    r = x.type.rank
    if not -r <= axis < r or axis % r + last >= r:
        b.fail("E0201", f"axis {axis} of {x.type} has no {'next ' if last else ''}axis to use",
               f"rank {r}", span=b.at("axis"))
    return axis % r


@layer("merge_axes", 1, Arg("x", T), Arg("axis", "int", 0), owns=False,
       doc="[.., A, B, ..] -> [.., A*B, ..]: axis and the next one merged (row-major)")
def merge_axes(b, x, axis):
    ax = _axis(b, x, axis, 1)
    shape = x.type.shape
    dims = (*shape[:ax], product(shape[ax], shape[ax + 1]), *shape[ax + 2:])
    sizes = [_size(b, x, i) for i in range(x.type.rank)]
    sizes[ax:ax + 2] = [b.op("mul", sizes[ax], sizes[ax + 1])]
    return b.op("reshape_to", x, *sizes, dims=dims)


@layer("split_axis", 2, Arg("x", T), Arg("like", T), Arg("axis", "int", 0),
       Arg("like_axis", "int", None), owns=False,
       doc="[.., A*B, ..] -> [.., A, B, ..], A and B read from `like`'s axes like_axis and the "
           "next (like_axis defaults to axis)")
def split_axis(b, x, like, axis, like_axis):
    ax = _axis(b, x, axis, 0)
    lax = _axis(b, like, axis if like_axis is None else like_axis, 1)
    a, c = like.type.shape[lax], like.type.shape[lax + 1]
    merged = x.type.shape[ax]
    want = product(a, c)  # checked when both are sizes or both are symbols
    if type(merged) is type(want) and merged != want:
        b.fail("E0201", f"cannot split dim {merged} of {x.type} into {a} x {c} (from {like.type})",
               "here", span=b.at("like"))
    dims = (*x.type.shape[:ax], a, c, *x.type.shape[ax + 1:])
    sizes = [_size(b, x, i) for i in range(x.type.rank)]
    sizes[ax:ax + 1] = [_size(b, like, lax), _size(b, like, lax + 1)]
    return b.op("reshape_to", x, *sizes, dims=dims)
