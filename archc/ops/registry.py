"""The op table. One op = one `OpDef`: its attribute schema, shape rule, NumPy kernel and ONNX
lowering, written side by side in `archc/ops/<family>.py` and registered once in `OPS`.

- `infer(types, **attrs) -> TensorType`: shape/dtype rule over symbolic shapes; raises
  `ShapeError` with a message a user can act on.
- `numpy(*arrays, **attrs) -> np.ndarray`: the reference kernel, ONNX semantics.
- `onnx(b, inputs, **attrs) -> str`: emits ONNX nodes through the `OnnxBuilder` `b` and returns the
  name of the value holding the result.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from archc.ir.types import ShapeError, TensorType


@dataclass(frozen=True)
class OpDef:
    name: str
    arity: tuple[int, int]  # (min, max) number of inputs
    attrs: dict[str, bool]  # attribute name -> required
    infer: Callable[..., TensorType]
    numpy: Callable[..., Any]
    onnx: Callable[..., str]
    pure: bool = True  # foldable when every input is a const
    commutative: bool = False


OPS: dict[str, OpDef] = {}


def register_op(name: str, arity: int | tuple[int, int], attrs: dict[str, bool] | None = None, *,
                infer: Callable, numpy: Callable, onnx: Callable, pure: bool = True,
                commutative: bool = False) -> OpDef:
    if name in OPS:
        raise ValueError(f"op `{name}` registered twice")
    span = (arity, arity) if isinstance(arity, int) else arity
    op = OpDef(name, span, dict(attrs or {}), infer, numpy, onnx, pure, commutative)
    OPS[name] = op
    return op


def get_op(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        close = difflib.get_close_matches(name, OPS, n=1)
        hint = f" (did you mean `{close[0]}`?)" if close else ""
        raise KeyError(f"unknown op `{name}`{hint}") from None


def same(t: TensorType, **_: Any) -> TensorType:
    """Shape rule of elementwise unary ops."""
    return t


def expect_dtype(t: TensorType, *dtypes: str, what: str = "input") -> None:
    if t.dtype not in dtypes:
        raise ShapeError(f"{what} must be {' or '.join(dtypes)}, got {t.dtype}")
