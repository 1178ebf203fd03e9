"""Small predicates the fusion checks share: scalar constants, last-axis reductions, dtypes."""

from __future__ import annotations

import numpy as np

from archc.ir.graph import Node
from archc.passes.rewrite import Match, MatchFailure


def scalar(node: Node) -> float | None:
    """The value of a one-element float const, else None."""
    if node.kind != "const" or node.value.size != 1 or node.value.dtype.kind != "f":
        return None
    return float(node.value.reshape(-1)[0])


def is_last_axis(node: Node, attr: str = "axis") -> bool:
    axis = node.attrs.get(attr, -1)
    return axis == -1 or axis == node.inputs[0].type.rank - 1


def mean_last_keepdims(node: Node) -> MatchFailure | None:
    """`reduce_mean(.., axis=last, keepdims=True)`, the statistic every norm takes."""
    if not is_last_axis(node):
        return Match.fail(f"{node!r} averages axis {node.attrs.get('axis')}, not the last", node)
    if not node.attrs.get("keepdims", False):
        return Match.fail(f"{node!r} drops the reduced axis (keepdims is false)", node)
    return None


def float32(*nodes: Node) -> MatchFailure | None:
    for n in nodes:
        if n.type is None or n.type.dtype != "float32":
            return Match.fail(f"{n!r} is {n.type}; the fused op takes float32", n)
    return None


def vector_of(w: Node, x: Node, what: str) -> MatchFailure | None:
    """w is a [D] vector over x's last dim (what a fused norm's scale or bias must be)."""
    if w.type.shape != x.type.shape[-1:]:
        return Match.fail(f"the {what} {w!r} is {w.type}, the fused op needs "
                          f"[{x.type.shape[-1]}] (one per channel of {x!r})", w)
    return None


def close(value: float | None, want: float, tol: float = 1e-6) -> bool:
    return value is not None and bool(np.isclose(value, want, rtol=tol, atol=tol))
