"""Attention helpers: masks built from dynamic lengths, rotary and sinusoidal position encodings.

Scores are `[B, H, Tq, Tk]`. Masks are bool "keep" tensors that broadcast against them, applied
with `mask_fill`. Causal masks and relative buckets are built from position vectors (`qpos`
[Tq], `kpos` [Tk]), not from q and k themselves: every layer then shares one mask, and a KV
cache only has to offset the query positions.
"""

from __future__ import annotations

import math

import numpy as np

from archc.ir.types import ShapeError, TensorType
from archc.ops.registry import expect_dtype, register_op


def _positions_pair(qpos: TensorType, kpos: TensorType) -> tuple:
    """[Tq], [Tk]: the query and key positions a mask or bucket table is built from."""
    for what, t in (("query positions", qpos), ("key positions", kpos)):
        if t.dtype != "int64" or t.rank != 1:
            raise ShapeError(f"{what} must be int64[T] (from `positions`), got {t}")
    return (qpos.shape[0], kpos.shape[0])


def _causal_infer(qpos: TensorType, kpos: TensorType, window: int = 0) -> TensorType:
    return TensorType("bool", _positions_pair(qpos, kpos))


def _causal(qpos, kpos, window: int = 0):  # [Tq], [Tk] -> keep [Tq, Tk]
    i, j = qpos[:, None], kpos[None, :]
    keep = j <= i
    if window:  # sliding window: each query sees itself and the window-1 keys before it
        keep &= j > i - window
    return keep


def _causal_onnx(b, qpos, kpos, window: int = 0):
    i = b.op("Unsqueeze", qpos, b.const(np.array([1], np.int64)))
    keep = b.op("LessOrEqual", kpos, i)
    if window:
        lower = b.op("Sub", i, b.const(np.array(window, np.int64)))
        keep = b.op("And", keep, b.op("Greater", kpos, lower))
    return keep


register_op("causal_mask", 2, {"window": False}, infer=_causal_infer, numpy=_causal,
            onnx=_causal_onnx)


def _band(qpos, kpos, radius: int):  # [Tq], [Tk] -> keep [Tq, Tk]: |i - j| <= radius
    return np.abs(kpos[None, :] - qpos[:, None]) <= radius


def _band_onnx(b, qpos, kpos, radius: int):
    i = b.op("Unsqueeze", qpos, b.const(np.array([1], np.int64)))
    return b.op("LessOrEqual", b.op("Abs", b.op("Sub", kpos, i)),
                b.const(np.array(radius, np.int64)))


register_op("band_mask", 2, {"radius": True}, infer=lambda q, k, radius: _causal_infer(q, k),
            numpy=_band, onnx=_band_onnx)


def _padding_infer(m: TensorType) -> TensorType:
    if m.rank != 2:
        raise ShapeError(f"attention mask must be [batch, seq], got {m}")
    return TensorType("bool", (m.shape[0], 1, 1, m.shape[1]))


register_op("padding_mask", 1, infer=_padding_infer,  # [B, Tk] (1 = keep) -> [B, 1, 1, Tk]
            numpy=lambda m: (m != 0)[:, None, None, :],
            onnx=lambda b, m: b.op("Unsqueeze", b.op("Cast", m, to=9),
                                   b.const(np.array([1, 2], np.int64))))


def inv_freq(dim: int, theta: float) -> np.ndarray:
    """1 / theta^(2i/dim) for i < dim/2, computed the way transformers does (float32)."""
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    return (1.0 / (np.float32(theta) ** exponent)).astype(np.float32)


def _angles_infer(pos: TensorType, dim: int, theta: float) -> TensorType:
    expect_dtype(pos, "int64", what="positions")
    return TensorType("float32", (*pos.shape, dim // 2))


def _angles(pos, dim, theta):  # [..T] -> [..T, dim/2]: pos * inv_freq
    return pos.astype(np.float32)[..., None] * inv_freq(dim, theta)


def _angles_onnx(b, pos, dim, theta):
    p = b.op("Unsqueeze", b.op("Cast", pos, to=1), b.const(np.array([-1], np.int64)))
    return b.op("Mul", p, b.const(inv_freq(dim, theta)))


register_op("rope_angles", 1, {"dim": True, "theta": True}, infer=_angles_infer,
            numpy=_angles, onnx=_angles_onnx)


def _rope_infer(x: TensorType, ang: TensorType, interleaved: bool = False) -> TensorType:
    if x.rank != 4 or ang.rank not in (2, 3):
        raise ShapeError(f"rope needs x [B,H,T,D] and angles [T,R] or [B,T,R], got {x}, {ang}")
    if not isinstance(x.shape[-1], int) or 2 * ang.shape[-1] > x.shape[-1]:
        raise ShapeError(f"rotary dim {2 * ang.shape[-1]} exceeds head dim {x.shape[-1]}")
    return x


def _rope(x, ang, interleaved: bool = False):  # x [B,H,T,D], ang [T,R] | [B,T,R] -> [B,H,T,D]
    ang = ang[None, None] if ang.ndim == 2 else ang[:, None]
    cos, sin = np.cos(ang), np.sin(ang)
    r = ang.shape[-1]
    rot, rest = x[..., : 2 * r], x[..., 2 * r:]
    if interleaved:  # pairs (x0, x1), (x2, x3), ... rotate together (GPT-J)
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        out = np.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).reshape(rot.shape)
    else:  # halves (x[:r], x[r:]) rotate together (GPT-NeoX, LLaMA)
        x1, x2 = rot[..., :r], rot[..., r:]
        out = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    if rest.shape[-1]:  # a partial rotary: the dims past 2r pass through
        out = np.concatenate([out, rest], axis=-1)
    return out.astype(x.dtype, copy=False)


def _rope_onnx(b, x, ang, interleaved: bool = False):
    d = b.type_of(x).shape[-1]
    r = b.type_of(ang).shape[-1]
    axes = [0, 1] if b.type_of(ang).rank == 2 else [1]
    ang = b.op("Unsqueeze", ang, b.const(np.array(axes, np.int64)))
    cos, sin = b.op("Cos", ang), b.op("Sin", ang)
    rot = b.slice(x, -1, 0, 2 * r)
    if interleaved:
        pairs = b.op("Reshape", rot, b.const(np.array([0, 0, 0, r, 2], np.int64)))
        x1 = b.op("Squeeze", b.slice(pairs, -1, 0, 1), b.const(np.array([-1], np.int64)))
        x2 = b.op("Squeeze", b.slice(pairs, -1, 1, 2), b.const(np.array([-1], np.int64)))
    else:
        x1, x2 = b.slice(rot, -1, 0, r), b.slice(rot, -1, r, 2 * r)
    y1 = b.op("Sub", b.op("Mul", x1, cos), b.op("Mul", x2, sin))
    y2 = b.op("Add", b.op("Mul", x2, cos), b.op("Mul", x1, sin))
    if interleaved:
        last = b.const(np.array([-1], np.int64))
        pair = b.op("Concat", b.op("Unsqueeze", y1, last), b.op("Unsqueeze", y2, last), axis=-1)
        out = b.op("Reshape", pair, b.const(np.array([0, 0, 0, 2 * r], np.int64)))
    else:
        out = b.op("Concat", y1, y2, axis=-1)
    if 2 * r < d:
        out = b.op("Concat", out, b.slice(x, -1, 2 * r, d), axis=-1)
    return out


register_op("rope", 2, {"interleaved": False}, infer=_rope_infer, numpy=_rope, onnx=_rope_onnx)


def _sin_infer(pos: TensorType, dim: int) -> TensorType:
    expect_dtype(pos, "int64", what="positions")
    return TensorType("float32", (*pos.shape, dim))


def _sinusoidal(pos, dim):  # [T] -> [T, dim]; even dims sin(p w_i), odd dims cos(p w_i)
    ang = _angles(pos, dim, 10000.0)
    return np.stack([np.sin(ang), np.cos(ang)], axis=-1).reshape(*pos.shape, dim)


def _sinusoidal_onnx(b, pos, dim):
    ang = _angles_onnx(b, pos, dim, 10000.0)
    last = b.const(np.array([-1], np.int64))
    both = b.op("Concat", b.op("Unsqueeze", b.op("Sin", ang), last),
                b.op("Unsqueeze", b.op("Cos", ang), last), axis=-1)
    shape = [0] * b.type_of(pos).rank + [dim]
    return b.op("Reshape", both, b.const(np.array(shape, np.int64)))


register_op("sinusoidal", 1, {"dim": True}, infer=_sin_infer, numpy=_sinusoidal,
            onnx=_sinusoidal_onnx)


def _repeat_kv_infer(k: TensorType, groups: int) -> TensorType:
    if k.rank != 4 or not isinstance(k.shape[1], int):
        raise ShapeError(f"repeat_kv needs [B, KV, S, D] with static KV, got {k}")
    if groups < 1:
        raise ShapeError(f"repeat_kv needs groups >= 1, got {groups}")
    return k.with_shape((k.shape[0], k.shape[1] * groups, *k.shape[2:]))


def _repeat_kv_onnx(b, k, groups):
    # [B,KV,S,D] -> [B,KV,1,S,D] -> tile -> [B,KV,G,S,D] -> [B,KV*G,S,D]: each kv head repeats
    # `groups` times in a row, as grouped-query attention pairs query heads with kv heads.
    kv, d = b.type_of(k).shape[1], b.type_of(k).shape[3]
    k5 = b.op("Unsqueeze", k, b.const(np.array([2], np.int64)))
    tiled = b.op("Tile", k5, b.const(np.array([1, 1, groups, 1, 1], np.int64)))
    return b.op("Reshape", tiled, b.const(np.array([0, kv * groups, -1, d], np.int64)))


register_op("repeat_kv", 1, {"groups": True}, infer=_repeat_kv_infer,
            numpy=lambda k, groups: np.repeat(k, groups, axis=1), onnx=_repeat_kv_onnx)


def _buckets_infer(qpos: TensorType, kpos: TensorType, num_buckets: int, max_distance: int,
                   bidirectional: bool) -> TensorType:
    exact = (num_buckets // 2 if bidirectional else num_buckets) // 2  # as `_buckets`
    if exact < 1:
        raise ShapeError(f"relative_buckets needs at least {4 if bidirectional else 2} buckets"
                         f"{' when bidirectional' if bidirectional else ''}, got {num_buckets}")
    if max_distance <= exact:
        raise ShapeError(f"relative_buckets needs max_distance > {exact} (its exact buckets), "
                         f"got {max_distance}")
    return TensorType("int64", _positions_pair(qpos, kpos))


def _buckets(qpos, kpos, num_buckets, max_distance, bidirectional):  # [Tq], [Tk] -> [Tq, Tk]
    """T5's bucketing of the relative position k - q: exact below num_buckets/2 (per
    direction), then logarithmic up to max_distance, then the last bucket."""
    rel = kpos[None, :] - qpos[:, None]
    out = np.zeros_like(rel)
    n = num_buckets
    if bidirectional:
        n //= 2
        out += (rel > 0) * n
        rel = np.abs(rel)
    else:
        rel = -np.minimum(rel, 0)
    exact = n // 2
    scaled = np.log(np.maximum(rel, 1).astype(np.float32) / np.float32(exact)) / np.float32(
        np.log(max_distance / exact)) * np.float32(n - exact)
    large = np.minimum(exact + scaled.astype(np.int64), n - 1)
    return out + np.where(rel < exact, rel, large)


def _buckets_onnx(b, qpos, kpos, num_buckets, max_distance, bidirectional):
    i64 = lambda v: b.const(np.array(v, np.int64))  # noqa: E731
    rel = b.op("Sub", kpos, b.op("Unsqueeze", qpos, b.const(np.array([1], np.int64))))
    n = num_buckets
    if bidirectional:
        n //= 2
        out = b.op("Mul", b.op("Cast", b.op("Greater", rel, i64(0)), to=7), i64(n))
        rel = b.op("Abs", rel)
    else:
        out = None
        rel = b.op("Neg", b.op("Min", rel, i64(0)))
    exact = n // 2
    ratio = b.op("Div", b.op("Cast", b.op("Max", rel, i64(1)), to=1), b.scalar(exact))
    scaled = b.op("Mul", b.op("Div", b.op("Log", ratio), b.scalar(np.log(max_distance / exact))),
                  b.scalar(n - exact))
    large = b.op("Min", b.op("Add", b.op("Cast", scaled, to=7), i64(exact)), i64(n - 1))
    bucket = b.op("Where", b.op("Less", rel, i64(exact)), rel, large)
    return bucket if out is None else b.op("Add", out, bucket)


register_op("relative_buckets", 2, {"num_buckets": True, "max_distance": True,
                                     "bidirectional": True},
            infer=_buckets_infer, numpy=_buckets, onnx=_buckets_onnx)


def alibi_slopes(heads: int) -> np.ndarray:
    """ALiBi's per-head slopes (Press et al.): a geometric sequence from 2^(-8/n) for the
    largest power of two n <= heads, then every other slope of the 2n sequence."""
    n = 2 ** math.floor(math.log2(heads))
    base = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
    slopes = [base ** p for p in range(1, n + 1)]
    if n != heads:
        extra = 2.0 ** (-(2.0 ** -(math.log2(2 * n) - 3)))
        slopes += [extra ** p for p in range(1, 1 + 2 * min(n, heads - n), 2)]
    return np.array(slopes, np.float32)
