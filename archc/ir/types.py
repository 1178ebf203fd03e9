"""Tensor types: a dtype and a shape whose dims are ints or symbols (`batch`, `seq`, `past+seq`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Dim = int | str

DTYPES = {"float32": np.float32, "int64": np.int64, "bool": np.bool_}
# f16 and u8 are only the types of stored weights (archc.quantize); no op computes in them
SHORT = {"float32": "f32", "int64": "i64", "bool": "b8", "float16": "f16", "uint8": "u8"}
LONG = {v: k for k, v in SHORT.items()}


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple[Dim, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        return f"{SHORT[self.dtype]}[{','.join(str(d) for d in self.shape)}]"

    def with_shape(self, shape) -> TensorType:
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype: str) -> TensorType:
        return TensorType(dtype, self.shape)


class ShapeError(ValueError):
    """A shape rule rejected its inputs; lowering turns it into a diagnostic naming the layer."""


def broadcast(*shapes: tuple[Dim, ...]) -> tuple[Dim, ...]:
    """NumPy broadcasting over symbolic dims: equal symbols match, 1 stretches."""
    rank = max(len(s) for s in shapes)
    out: list[Dim] = []
    for i in range(rank):
        dims = {s[i - rank + len(s)] for s in shapes if i - rank + len(s) >= 0} - {1}
        if len(dims) > 1:
            raise ShapeError("cannot broadcast " + " with ".join(fmt_shape(s) for s in shapes))
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def fmt_shape(shape: tuple[Dim, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def dim_add(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if a == 0:
        return b
    if b == 0:
        return a
    return f"{a}+{b}"


def numel(shape: tuple[Dim, ...]) -> int:
    return int(np.prod([d for d in shape if isinstance(d, int)], dtype=np.int64))
