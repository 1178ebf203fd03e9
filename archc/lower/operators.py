"""Operators in expressions: arithmetic, `@`, comparisons, `and`/`or`/`not`, and subscripts.

On compile-time numbers they compute (`4 * d`); on tensors they emit ops. A number meeting a
tensor becomes a constant of the tensor's dtype (`ids != 1` compares int64). A bool tensor is
not a number: `cont * y` with a bool `cont` is an error; write `cast(cont, float32) * y`.
A symbolic dim (`seq`) meeting a tensor is read at run time (`x / seq`).
"""

from __future__ import annotations

import math
import operator

import numpy as np

from archc.frontend import ast
from archc.ir.graph import Node
from archc.lower.signature import POISON, SymDim, describe

# Compile-time arithmetic is bounded: a spec cannot make archc compute 10 ** 10 ** 10.
MAX_INT_BITS = 256

_NUM_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
            "//": operator.floordiv, "%": operator.mod, "**": operator.pow, "==": operator.eq,
            "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
            ">=": operator.ge}
TENSOR_OPS = {"+": "add", "-": "sub", "*": "mul", "/": "div", "**": "pow", "%": "mod",
              "@": "matmul",
              "==": "equal", "!=": "not_equal", "<": "less", "<=": "less_equal",
              ">": "greater", ">=": "greater_equal", "and": "logical_and", "or": "logical_or"}


def is_num(v) -> bool:
    return isinstance(v, int | float)  # bools included: `true + 1` is 2, as in Python


def numeric(ev, op: str, a, b, span):
    if op == "**" and isinstance(a, int) and isinstance(b, int) and b > 0 and \
            abs(a) > 1 and b * max(1, abs(a).bit_length()) > MAX_INT_BITS:
        ev.err("E0111", f"`{a} ** {b}` is too large for a compile-time number", span,
               f"over {MAX_INT_BITS} bits", help="compile-time integers are bounded")
        return POISON
    try:
        out = _NUM_OPS[op](a, b)
    except (ZeroDivisionError, OverflowError) as err:
        ev.err("E0104", f"cannot compute `{op}`: {err}", span, "here")
        return POISON
    if isinstance(out, complex) or (isinstance(out, int) and out.bit_length() > MAX_INT_BITS) \
            or (isinstance(out, float) and not math.isfinite(out)):
        ev.err("E0111", f"`{op}` gives a number archc cannot use ({out})", span, "here")
        return POISON
    return out


def finite(ev, fn, v, span):
    """fn(v) for a compile-time function such as sqrt(d); inf or nan is an error."""
    try:
        with np.errstate(all="ignore"):
            out = float(fn(float(v)))
    except (OverflowError, TypeError):  # an integer past float range
        out = math.inf
    if not math.isfinite(out):
        ev.err("E0111", f"this gives {out}, not a number archc can use", span, "here")
        return POISON
    return out


def binop(ev, e: ast.BinOp):
    a, b = ev.eval(e.left), ev.eval(e.right)
    if a is POISON or b is POISON:
        return POISON
    if e.op in ("and", "or") and isinstance(a, bool) and isinstance(b, bool):
        return (a and b) if e.op == "and" else (a or b)
    if is_num(a) and is_num(b) and e.op in _NUM_OPS:
        return numeric(ev, e.op, a, b, e.span)
    if e.op in ("==", "!=") and (a is None or b is None or not (
            isinstance(a, Node) or isinstance(b, Node))):
        return (a == b) == (e.op == "==")  # options, words, `none`: compile-time equality
    bools = [v for v in (a, b) if isinstance(v, Node) and v.type.dtype == "bool"]
    if e.op in TENSOR_OPS and bools and e.op not in ("and", "or", "==", "!="):
        ev.err("E0104", f"cannot apply `{e.op}` to {describe(a)} and {describe(b)}", e.span,
               "a bool tensor is not a number",
               help="cast it first, e.g. `cast(m, float32)`")
        return POISON
    if e.op in TENSOR_OPS and (isinstance(a, Node) or isinstance(b, Node)):
        like = a if isinstance(a, Node) else b
        x, y = as_tensor(ev, a, like), as_tensor(ev, b, like)
        if x is not None and y is not None:
            return ev.emit(e.span, TENSOR_OPS[e.op], x, y)
    ev.err("E0104", f"cannot apply `{e.op}` to {describe(a)} and {describe(b)}", e.span, "here")
    return POISON


def unop(ev, e: ast.UnaryOp):
    v = ev.eval(e.operand)
    if v is POISON:
        return v
    if e.op == "not" and isinstance(v, bool):
        return not v
    if e.op == "-" and is_num(v) and not isinstance(v, bool):
        return -v
    if isinstance(v, Node) and (e.op == "-") != (v.type.dtype == "bool"):
        return ev.emit(e.span, "neg" if e.op == "-" else "logical_not", v)
    ev.err("E0104", f"cannot apply `{e.op}` to {describe(v)}", e.span, "here")
    return POISON


def as_tensor(ev, v, like: Node) -> Node | None:
    """A tensor operand: tensors as they are, numbers as constants of `like`'s dtype, a
    symbolic dim as its run-time size; None for anything else."""
    if isinstance(v, Node):
        return v
    if isinstance(v, SymDim):
        size = ev.emit(None, "dim_size", v.ref, axis=v.axis)
        return size if like.type.dtype == "int64" else ev.emit(None, "cast", size, to="float32")
    if not is_num(v) or like.type.dtype == "bool":
        return None
    if like.type.dtype == "int64" and ((isinstance(v, float) and not v.is_integer())
                                       or not -2**63 <= v < 2**63):  # `ids + 1e300`
        return None
    dtype = np.int64 if like.type.dtype == "int64" else np.float32
    return ev.graph.add_const(np.asarray(v, dtype), scope=ev.scope.prefix)


def subscript(ev, e: ast.Subscript):
    """`x[i]` takes an index, `x[a:b]` slices, `...` stands for the axes not written."""
    x = ev.eval(e.value)
    if x is POISON:
        return x
    if isinstance(x, tuple):  # a list of values: `parts[0]`
        i = ev.eval(e.index[0]) if len(e.index) == 1 else None
        if isinstance(i, int) and -len(x) <= i < len(x):
            return x[i]
        ev.err("E0104", f"index must be an integer in -{len(x)}..{len(x) - 1}", e.span, "here")
        return POISON
    if not isinstance(x, Node):
        ev.err("E0104", f"cannot index {describe(x)}", e.value.span, "not a tensor")
        return POISON
    items = list(e.index)
    dots = [i for i, it in enumerate(items) if isinstance(it, ast.Ellipsis_)]
    if len(dots) > 1 or len(items) - len(dots) > x.type.rank:
        ev.err("E0201", f"too many indices for {x.type}", e.span, f"rank {x.type.rank}")
        return POISON
    if dots:
        fill = x.type.rank - (len(items) - 1)
        items[dots[0]:dots[0] + 1] = [None] * fill
    axis, out = 0, x
    for it in items:
        if it is None or (isinstance(it, ast.Slice) and it.start is None and it.stop is None):
            axis += 1
            continue
        if isinstance(it, ast.Slice):
            start, stop = (_int(ev, s, 0 if s is it.start else 2**63 - 1)
                           for s in (it.start, it.stop))
            if start is POISON or stop is POISON:
                return POISON
            size = out.type.shape[axis]
            if isinstance(size, int) and not range(size)[start:stop]:
                shown = f"{start or ''}:{'' if stop >= 2**62 else stop}"
                ev.err("E0201", f"slice `{shown}` of a dim of {size} is empty", it.span,
                       f"axis {axis} of {out.type}")
                return POISON
            out = ev.emit(it.span, "slice", out, axis=axis, start=start, end=stop)
            axis += 1
        else:
            index = _int(ev, it, 0)
            if index is POISON:
                return POISON
            size = out.type.shape[axis]
            if isinstance(size, int) and not -size <= index < size:
                ev.err("E0201", f"index {index} is out of range for a dim of {size}", it.span,
                       f"axis {axis} of {out.type}")
                return POISON
            out = ev.emit(it.span, "take", out, axis=axis, index=index)
    return out


def _int(ev, expr, default: int):
    if expr is None:
        return default
    v = ev.eval(expr)
    if v is POISON or (isinstance(v, int) and not isinstance(v, bool)):
        return v
    ev.err("E0104", "an index or slice bound must be a compile-time integer", expr.span,
           f"this is {describe(v)}")
    return POISON
