"""Ops of the sparse-attention catalogue (`archc/stdlib/sparse_attention.arch`).

Only what the existing ops cannot say: a dilated band needs `(key - query) mod d` on int64
tensors, and the language has no tensor `%`. BigBird's block layout and Performer's random
features are compile-time constants (`archc/lower/cat_sparse.py`), not ops.
"""

from __future__ import annotations

import numpy as np

from archc.ir.types import ShapeError, TensorType
from archc.ops.registry import expect_dtype, register_op


def _dilated_infer(qpos: TensorType, kpos: TensorType, radius: int,
                   dilation: tuple[int, ...]) -> TensorType:
    expect_dtype(qpos, "int64", what="query positions")
    expect_dtype(kpos, "int64", what="key positions")
    if qpos.rank != 1 or kpos.rank != 1:
        raise ShapeError(f"dilated_band_mask takes positions [Tq] and [Tk], got {qpos}, {kpos}")
    if radius < 0 or not dilation or min(dilation) < 1:
        raise ShapeError(f"dilated_band_mask needs radius >= 0 and dilations >= 1, got "
                         f"{radius}, {list(dilation)}")
    return TensorType("bool", (len(dilation), qpos.shape[0], kpos.shape[0]))


def _dilated(qpos, kpos, radius: int, dilation: tuple[int, ...]):
    """[Tq], [Tk] -> keep [H, Tq, Tk]: head h sees key j from query i when j - i is a multiple
    of d_h within radius * d_h (Longformer's dilated sliding window; d_h = 1 is the band)."""
    d = np.asarray(dilation, np.int64)[:, None, None]
    rel = kpos[None, None, :] - qpos[None, :, None]
    return (np.abs(rel) <= radius * d) & (np.mod(rel, d) == 0)


def _dilated_onnx(b, qpos, kpos, radius: int, dilation: tuple[int, ...]):
    d = b.const(np.asarray(dilation, np.int64)[:, None, None])
    rel = b.op("Sub", b.op("Unsqueeze", kpos, b.const(np.array([0, 1], np.int64))),
               b.op("Unsqueeze", qpos, b.const(np.array([0, 2], np.int64))))
    near = b.op("LessOrEqual", b.op("Abs", rel), b.op("Mul", d, b.const(np.array(radius))))
    on_grid = b.op("Equal", b.op("Mod", rel, d, fmod=0), b.const(np.array(0, np.int64)))
    return b.op("And", near, on_grid)


register_op("dilated_band_mask", 2, {"radius": True, "dilation": True}, infer=_dilated_infer,
            numpy=_dilated, onnx=_dilated_onnx)
