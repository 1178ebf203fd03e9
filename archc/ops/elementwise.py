"""Elementwise ops: arithmetic with NumPy broadcasting, activations, casts and selection."""

from __future__ import annotations

import numpy as np

from archc.ir.types import DTYPES, ShapeError, TensorType, broadcast
from archc.ops.registry import register_op, same

F32_MIN = float(np.finfo(np.float32).min)


def _binary(a: TensorType, b: TensorType) -> TensorType:
    if a.dtype != b.dtype:
        raise ShapeError(f"operands have different dtypes: {a.dtype} and {b.dtype}")
    return TensorType(a.dtype, broadcast(a.shape, b.shape))


def _binop(name: str, fn, onnx_op: str, commutative: bool = False) -> None:
    register_op(name, 2, infer=_binary, numpy=fn, commutative=commutative,
                onnx=lambda b, x, y: b.op(onnx_op, x, y))


_binop("add", np.add, "Add", commutative=True)
_binop("sub", np.subtract, "Sub")
_binop("mul", np.multiply, "Mul", commutative=True)
_binop("div", np.divide, "Div")
_binop("pow", np.power, "Pow")


def _mod_infer(a: TensorType, b: TensorType) -> TensorType:
    if a.dtype != "int64" or b.dtype != "int64":
        raise ShapeError(f"`%` on tensors takes int64 operands, got {a.dtype} and {b.dtype}")
    return _binary(a, b)


# Python's %: the result takes the divisor's sign (ONNX Mod with fmod=0, integers only).
register_op("mod", 2, infer=_mod_infer, numpy=np.mod,
            onnx=lambda b, x, y: b.op("Mod", x, y, fmod=0))


def _unop(name: str, fn, onnx_op: str, *dtypes: str) -> None:
    """A unary op; with `dtypes`, defined only on those (ONNX's Exp, Sin, ... take floats)."""
    register_op(name, 1, infer=_numeric(*dtypes) if dtypes else same, numpy=fn,
                onnx=lambda b, x: b.op(onnx_op, x))


def _numeric(*dtypes: str):
    """Shape rule of a unary op defined only on `dtypes` (log of an int64 is a spec bug)."""
    def infer(x: TensorType, **_) -> TensorType:
        if x.dtype not in dtypes:
            raise ShapeError(f"`x` is {x}: needs {' or '.join(dtypes)}")
        return x
    return infer


_unop("neg", np.negative, "Neg")
_unop("exp", np.exp, "Exp", "float32")
_unop("sqrt", np.sqrt, "Sqrt", "float32")
_unop("tanh", np.tanh, "Tanh", "float32")
_unop("cos", np.cos, "Cos", "float32")
_unop("sin", np.sin, "Sin", "float32")
_unop("relu", lambda x: np.maximum(x, 0).astype(x.dtype, copy=False), "Relu", "float32",
      "int64")
_unop("sigmoid", lambda x: (1 / (1 + np.exp(-x))).astype(x.dtype, copy=False), "Sigmoid",
      "float32")


def erf(x: np.ndarray) -> np.ndarray:
    """erf in float64, accurate to ~1e-12: a positive-term series below |x| = 3, the asymptotic
    erfc expansion above (where erf is within 2.3e-5 of 1)."""
    z = np.abs(np.asarray(x, np.float64))
    small = np.minimum(z, 3.0)
    # erf(z) = 2/sqrt(pi) exp(-z^2) sum_n 2^n z^(2n+1) / (1*3*...*(2n+1)); terms never cancel
    term = small.copy()
    total = small.copy()
    for n in range(1, 70):
        term = term * (2 * small * small) / (2 * n + 1)
        total += term
    series = 2 / np.sqrt(np.pi) * np.exp(-small * small) * total
    # erfc(z) ~ exp(-z^2) / (z sqrt(pi)) sum_n (-1)^n (2n-1)!! / (2 z^2)^n
    big = np.maximum(z, 3.0)
    acc, term = np.ones_like(big), np.ones_like(big)
    for n in range(1, 9):
        term = -term * (2 * n - 1) / (2 * big * big)
        acc += term
    tail = 1 - np.exp(-big * big) / (big * np.sqrt(np.pi)) * acc
    return np.sign(x) * np.where(z < 3.0, series, tail)


register_op("erf", 1, infer=_numeric("float32"),
            numpy=lambda x: erf(x).astype(x.dtype, copy=False),
            onnx=lambda b, x: b.op("Erf", x))


def _silu(x):  # x * sigmoid(x)
    return (x / (1 + np.exp(-x))).astype(x.dtype, copy=False)


register_op("silu", 1, infer=_numeric("float32"), numpy=_silu,
            onnx=lambda b, x: b.op("Mul", x, b.op("Sigmoid", x)))

_GELU_C = np.sqrt(2 / np.pi)


def _gelu(x, approximate: str = "none"):
    x64 = x.astype(np.float64)
    if approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        # in place on one float64 buffer, and x*x*x, not x**3: NumPy's power has fast paths
        # for squares and roots only, and a pow per element cost more than a GPT-2 prefill's
        # matmuls. Same roundings as the formula written out (times 0.5 is exact).
        y = np.asarray(x64 * x64)  # an array even for a rank-0 x, so `out=y` works
        y *= x64
        y *= 0.044715
        y += x64
        y *= _GELU_C
        np.tanh(y, out=y)
        y += 1
        y *= x64
        y *= 0.5
    else:  # 0.5 x (1 + erf(x / sqrt(2)))
        y = 0.5 * x64 * (1 + erf(x64 / np.sqrt(2)))
    return y.astype(x.dtype, copy=False)


def _gelu_onnx(b, x, approximate: str = "none"):
    # opset 18 has no Gelu: spell out the same formula the kernel uses.
    if approximate == "tanh":
        cube = b.op("Mul", b.op("Mul", x, x), x)
        inner = b.op("Add", x, b.op("Mul", cube, b.scalar(0.044715)))
        gate = b.op("Tanh", b.op("Mul", inner, b.scalar(_GELU_C)))
    else:
        gate = b.op("Erf", b.op("Div", x, b.scalar(np.sqrt(2))))
    half_x = b.op("Mul", x, b.scalar(0.5))
    return b.op("Mul", half_x, b.op("Add", gate, b.scalar(1.0)))


register_op("gelu", 1, {"approximate": False}, infer=_numeric("float32"), numpy=_gelu,
            onnx=_gelu_onnx)


def _cast_infer(t: TensorType, to: str) -> TensorType:
    return t.with_dtype(to)


_NP = {"float32": np.float32, "int64": np.int64, "bool": np.bool_}
_ONNX_DT = {"float32": 1, "int64": 7, "bool": 9}
register_op("cast", 1, {"to": True}, infer=_cast_infer,
            numpy=lambda x, to: x.astype(_NP[to]),
            onnx=lambda b, x, to: b.op("Cast", x, to=_ONNX_DT[to]))


def _where_infer(c: TensorType, x: TensorType, y: TensorType) -> TensorType:
    if c.dtype != "bool":
        raise ShapeError(f"condition must be bool, got {c.dtype}")
    return TensorType(_binary(x, y).dtype, broadcast(c.shape, x.shape, y.shape))


register_op("where", 3, infer=_where_infer, numpy=np.where,
            onnx=lambda b, c, x, y: b.op("Where", c, x, y))


def _mask_fill_infer(x: TensorType, keep: TensorType) -> TensorType:
    if keep.dtype != "bool":
        raise ShapeError(f"mask must be bool, got {keep.dtype}")
    return TensorType(x.dtype, broadcast(x.shape, keep.shape))


# Masked positions get float32's lowest value rather than -inf, so a fully masked row (a padding
# query) softmaxes to a uniform row instead of NaN, as transformers' eager attention does.
register_op("mask_fill", 2, infer=_mask_fill_infer,
            numpy=lambda x, keep: np.where(keep, x, np.float32(F32_MIN)).astype(x.dtype),
            onnx=lambda b, x, keep: b.op("Where", keep, x, b.scalar(F32_MIN)))


def _and_infer(a: TensorType, b: TensorType) -> TensorType:
    if a.dtype != "bool" or b.dtype != "bool":
        raise ShapeError("`and` needs bool operands")
    return TensorType("bool", broadcast(a.shape, b.shape))


register_op("logical_and", 2, infer=_and_infer, numpy=np.logical_and, commutative=True,
            onnx=lambda b, x, y: b.op("And", x, y))

# Dropout is written in specs and kept in the IR so a dump shows where it sits; at inference
# it is the identity (ONNX `Identity`), which is all archc runs.
register_op("dropout", 1, {"p": True}, infer=same, numpy=lambda x, p: x,
            onnx=lambda b, x, p: b.op("Identity", x), pure=False)


def _compare_infer(a: TensorType, b: TensorType) -> TensorType:
    return TensorType("bool", _binary(a, b).shape)


register_op("equal", 2, infer=_compare_infer, numpy=np.equal, commutative=True,
            onnx=lambda b, x, y: b.op("Equal", x, y))
register_op("not_equal", 2, infer=_compare_infer, numpy=np.not_equal, commutative=True,
            onnx=lambda b, x, y: b.op("Not", b.op("Equal", x, y)))
register_op("logical_or", 2, infer=_and_infer, numpy=np.logical_or, commutative=True,
            onnx=lambda b, x, y: b.op("Or", x, y))
register_op("logical_not", 1, infer=lambda t: _and_infer(t, t), numpy=np.logical_not,
            onnx=lambda b, x: b.op("Not", x))


# ---------------------------------------------------------------- unary math, clip, comparisons
def mismatch(a: str, ta: TensorType, b: str, tb: TensorType, why: str) -> ShapeError:
    """The one wording of a two-operand shape error: "`x` is f32[B,T,8] but `w` is f32[4,3]"."""
    return ShapeError(f"`{a}` is {ta} but `{b}` is {tb}: {why}")


def _unop_typed(name: str, fn, onnx, *dtypes: str) -> None:
    register_op(name, 1, infer=_numeric(*dtypes), numpy=lambda x: fn(x).astype(x.dtype, copy=False),
                onnx=onnx)


_unop_typed("log", np.log, lambda b, x: b.op("Log", x), "float32")
_unop_typed("rsqrt", lambda x: 1 / np.sqrt(x), lambda b, x: b.op("Reciprocal", b.op("Sqrt", x)),
            "float32")
_unop_typed("abs", np.abs, lambda b, x: b.op("Abs", x), "float32", "int64")
_unop_typed("floor", np.floor, lambda b, x: b.op("Floor", x), "float32")


def _softplus(x):  # [...] -> [...]: log(1 + e^x) = max(x, 0) + log1p(e^-|x|), never overflows
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


# onnxruntime's Softplus uses the same stable form (checked at +-1e4).
_unop_typed("softplus", _softplus, lambda b, x: b.op("Softplus", x), "float32")


def _elu(x, alpha: float = 1.0):  # [...] -> [...]: x > 0 ? x : alpha (e^x - 1)
    # expm1 is exact near 0; taking it of min(x, 0) keeps the unused branch from overflowing
    return np.where(x > 0, x, np.float32(alpha) * np.expm1(np.minimum(x, 0))).astype(x.dtype)


register_op("elu", 1, {"alpha": False}, infer=_numeric("float32"), numpy=_elu,
            onnx=lambda b, x, alpha=1.0: b.op("Elu", x, alpha=float(alpha)))


def _clip_infer(x: TensorType, lo: float | None = None, hi: float | None = None) -> TensorType:
    if lo is None and hi is None:
        raise ShapeError(f"clip of `x` ({x}) needs `lo` or `hi`")
    if lo is not None and hi is not None and lo > hi:
        raise ShapeError(f"clip of `x` ({x}) has `lo` = {lo} above `hi` = {hi}")
    return _numeric("float32", "int64")(x)


def _clip(x, lo=None, hi=None):  # [...] -> [...]; bounds cast to x's dtype, as the ONNX consts
    if lo is not None:
        x = np.maximum(x, np.array(lo, x.dtype))
    if hi is not None:
        x = np.minimum(x, np.array(hi, x.dtype))
    return x


def _clip_onnx(b, x, lo=None, hi=None):
    dt = DTYPES[b.type_of(x).dtype]
    bounds = ("" if v is None else b.const(np.array(v, dt)) for v in (lo, hi))
    return b.op("Clip", x, *bounds)  # "" is ONNX's absent optional input


register_op("clip", 1, {"lo": False, "hi": False}, infer=_clip_infer, numpy=_clip,
            onnx=_clip_onnx)


def _ordered_infer(a: TensorType, b: TensorType) -> TensorType:
    """Shape rule of `less`, `maximum` and friends: one ordered dtype, NumPy broadcasting."""
    if a.dtype != b.dtype or a.dtype == "bool":
        raise mismatch("a", a, "b", b, "needs two float32 or two int64 operands")
    try:
        return TensorType(a.dtype, broadcast(a.shape, b.shape))
    except ShapeError:
        raise mismatch("a", a, "b", b, "shapes do not broadcast") from None


def _less_like(name: str, fn, onnx_op: str) -> None:
    register_op(name, 2, infer=lambda a, b: _ordered_infer(a, b).with_dtype("bool"), numpy=fn,
                onnx=lambda b, x, y: b.op(onnx_op, x, y))


_less_like("less", np.less, "Less")
_less_like("less_equal", np.less_equal, "LessOrEqual")
_less_like("greater", np.greater, "Greater")
_less_like("greater_equal", np.greater_equal, "GreaterOrEqual")
register_op("maximum", 2, infer=_ordered_infer, numpy=np.maximum, commutative=True,
            onnx=lambda b, x, y: b.op("Max", x, y))
register_op("minimum", 2, infer=_ordered_infer, numpy=np.minimum, commutative=True,
            onnx=lambda b, x, y: b.op("Min", x, y))
