"""The fused rotary embedding: the target of the rules in `archc/passes/fusions/rotary.py`.

    rotary(x, angles) {interleaved, scale}     x [B,H,T,D], angles [T,R] or [B,T,R], 2R <= D

computes what `rope(x, angles)` computes, with the first 2R dims (the rotated ones) then
multiplied by `scale` (YaRN's and LongRoPE's attention factor, 1 otherwise); the last D - 2R
pass through (partial rotary). It takes the angles as the graph computes them, so every
frequency schedule (linear, llama3, yarn, dynamic NTK, longrope; offset positions with a KV
cache) stays exact: the op never recomputes a frequency.

Lowering: ONNX `RotaryEmbedding` (opset 23) without position_ids, whose cos/sin caches are
then [B, T, R], one row per token: cos(angles) * scale and sin(angles) * scale, computed once per
angles tensor and shared by q, k and every layer. onnxruntime 1.32's com.microsoft
RotaryEmbedding (input, position_ids, cos_cache [max_pos, R], sin_cache) was measured against
it (`benchmarks/prefill.py --rotary`: CPU, 2 threads, x [1, 8, T, 64], full and half rotary,
both layouts, best of 15 means of 50 runs): T = 1, 6.6 us (ONNX) vs 7.2-7.3 us (contrib);
T = 512, 37-47 us vs 41-67 us. The standard op is as fast or faster, needs no position_ids and
takes per-batch angles as they are, so it is the one used.
"""

from __future__ import annotations

import numpy as np

from archc.ir.types import ShapeError, TensorType
from archc.ops.registry import register_op


def _rotary_infer(x: TensorType, ang: TensorType, interleaved: bool = False,
                  scale: float = 1.0) -> TensorType:
    for t in (x, ang):
        if t.dtype != "float32":
            raise ShapeError(f"rotary takes float32, got {t}")
    if x.rank != 4 or ang.rank not in (2, 3):
        raise ShapeError(f"rotary needs x [B,H,T,D] and angles [T,R] or [B,T,R], got {x}, {ang}")
    rows = (x.shape[2],) if ang.rank == 2 else (x.shape[0], x.shape[2])
    if ang.shape[:-1] != rows:
        raise ShapeError(f"the angles {ang} do not give one row per token of {x} "
                         "(RotaryEmbedding does not broadcast them)")
    r = ang.shape[-1]
    if not isinstance(x.shape[3], int) or not isinstance(r, int) or not 0 < 2 * r <= x.shape[3]:
        raise ShapeError(f"rotary dim 2 x {r} does not fit head dim {x.shape[3]}")
    return x


def rotary(x, ang, interleaved: bool = False, scale: float = 1.0):
    """[B,H,T,D], [T,R] | [B,T,R] -> [B,H,T,D]: `rope`, then the rotated dims times scale (in
    that order, as the unfused graph computes it)."""
    from archc.ops import OPS

    out = OPS["rope"].numpy(x, ang, interleaved=interleaved)
    if scale != 1.0:
        r2 = 2 * ang.shape[-1]
        out = np.concatenate([out[..., :r2] * np.float32(scale), out[..., r2:]], axis=-1)
    return out.astype(x.dtype)


def _caches(b, x, ang, scale):
    """cos and sin [B, T, R] (times scale), once per angles tensor and scale."""
    def emit():
        a = ang
        if b.type_of(ang).rank == 2:  # [T, R] -> [B, T, R]: the op wants a row per token
            size = b.op("Concat", b.op("Shape", x, start=0, end=1), b.op("Shape", ang), axis=0)
            a = b.op("Expand", b.op("Unsqueeze", ang, b.const(np.array([0], np.int64))), size)
        cos, sin = b.op("Cos", a), b.op("Sin", a)
        if scale != 1.0:
            cos, sin = b.op("Mul", cos, b.scalar(scale)), b.op("Mul", sin, b.scalar(scale))
        return cos, sin
    return b.memo(("rotary_caches", ang, float(scale)), emit)


def _rotary_onnx(b, x, ang, interleaved: bool = False, scale: float = 1.0):
    b.require_opset(23)
    cos, sin = _caches(b, x, ang, scale)
    r2, d = 2 * b.type_of(ang).shape[-1], b.type_of(x).shape[3]
    attrs = {"rotary_embedding_dim": r2} if r2 < d else {}
    return b.op("RotaryEmbedding", x, cos, sin, interleaved=int(interleaved), **attrs)


register_op("rotary", 2, {"interleaved": False, "scale": False}, infer=_rotary_infer,
            numpy=rotary, onnx=_rotary_onnx)
