"""Fused ops: the targets of the fusion rules in `archc/passes/fusions/`. Each computes exactly
what the primitive pattern it replaces computes (within float32 rounding) and lowers to one
onnxruntime kernel, so the NumPy backend runs O2 graphs too.

Multi-output ops. An IR node is one value, so an op with two results (a skip norm's output and
its residual sum) produces a tuple, read by `tuple_get(t) {index}`; only `tuple_get` reads it.
Its type is the type every element shares. The NumPy kernel returns a Python tuple; the ONNX
lowering returns the first output's name and records the rest with `b.outputs_of`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np

from archc.ir.types import ShapeError, TensorType, broadcast
from archc.ops.registry import register_op

LOWEST = float(np.finfo(np.float32).min)
MS = "com.microsoft"


def _f32(*ts: TensorType | None) -> None:
    for t in ts:
        if t is not None and t.dtype != "float32":
            raise ShapeError(f"fused ops take float32, got {t}")


# ---------------------------------------------------------------- tuples
register_op("tuple_get", 1, {"index": True}, infer=lambda t, index: t,
            numpy=lambda t, index: t[index],
            onnx=lambda b, t, index: b.outputs_of[t][index])


# ---------------------------------------------------------------- norms
def _norm_infer(x: TensorType, w: TensorType, eps: float) -> TensorType:
    _f32(x, w)
    if w.shape != x.shape[-1:]:
        raise ShapeError(f"norm weight {w} does not match the last dim of {x}")
    return x


def _skip_infer(x: TensorType, skip: TensorType, w: TensorType, beta: TensorType | None = None,
                eps: float = 1e-5) -> TensorType:
    _f32(x, skip, w, beta)
    if skip.shape != x.shape:
        raise ShapeError(f"skip {skip} differs from the input {x}")
    if w.shape != x.shape[-1:] or (beta is not None and beta.shape != x.shape[-1:]):
        raise ShapeError(f"norm weight {w} does not match the last dim of {x}")
    return x


def rms(x, w, eps):  # [..., D], [D] -> [..., D]: x / sqrt(mean(x^2) + eps) * w
    return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps)) * w
            ).astype(x.dtype)


def layer(x, w, b, eps):  # [..., D], [D], [D] | None -> [..., D]
    xc = x - x.mean(axis=-1, keepdims=True)
    y = xc / np.sqrt(np.mean(xc * xc, axis=-1, keepdims=True) + np.float32(eps)) * w
    return (y if b is None else y + b).astype(x.dtype)


# RMSNorm -> the standard RMSNormalization (opset 23; onnxruntime's SimplifiedLayerNormalization
# is not in a domain onnx's checker knows).
def _rms_onnx(b, x, w, eps):
    b.require_opset(23)
    return b.op("RMSNormalization", x, w, axis=-1, epsilon=float(eps))


register_op("fused_rms_norm", 2, {"eps": True}, infer=_norm_infer,
            numpy=lambda x, w, eps: rms(x, w, eps), onnx=_rms_onnx)


def _ln_infer(x: TensorType, w: TensorType, beta: TensorType | None = None, eps: float = 1e-5):
    _norm_infer(x, w, eps)
    return x if beta is None else _norm_infer(x, beta, eps)


register_op("fused_layer_norm", (2, 3), {"eps": True}, infer=_ln_infer,
            numpy=lambda x, w, beta=None, eps=1e-5: layer(x, w, beta, eps),
            onnx=lambda b, x, w, *beta, eps: b.op("LayerNormalization", x, w, *beta, axis=-1,
                                                  epsilon=float(eps)))


# Residual add folded in: (norm(x + skip), x + skip), one pass over the activations.
def _skip_onnx(op_type: str):
    def lower(b, x, skip, w, *beta, eps):
        outs = b.op_multi(op_type, x, skip, w, *beta, n=4, keep=(0, 3), domain=MS,
                          epsilon=float(eps))
        b.outputs_of[outs[0]] = (outs[0], outs[3])
        return outs[0]
    return lower


def _skip_rms(x, skip, w, eps):  # [B,T,D] x2, [D] -> ([B,T,D] normed, [B,T,D] sum)
    s = x + skip
    return rms(s, w, eps), s


def _skip_layer(x, skip, w, beta=None, eps=1e-5):
    s = x + skip
    return layer(s, w, beta, eps), s


register_op("skip_rms_norm", 3, {"eps": True}, infer=_skip_infer, numpy=_skip_rms,
            onnx=_skip_onnx("SkipSimplifiedLayerNormalization"), pure=False)
register_op("skip_layer_norm", (3, 4), {"eps": True}, infer=_skip_infer, numpy=_skip_layer,
            onnx=_skip_onnx("SkipLayerNormalization"), pure=False)


# ---------------------------------------------------------------- GELU
def _gelu(x, approximate: str = "none"):  # the `gelu` op's own kernel, float64 inside
    from archc.ops import OPS

    return OPS["gelu"].numpy(x, approximate=approximate)


def _gelu_onnx(b, x, *bias, approximate: str = "none"):
    if approximate == "tanh":  # FastGelu takes the bias as its optional second input
        return b.op("FastGelu", x, *bias, domain=MS)
    return b.op("BiasGelu", x, *bias, domain=MS) if bias else b.op("Gelu", x, domain=MS)


def _gelu_infer(x: TensorType, bias: TensorType | None = None, approximate: str = "none"):
    _f32(x, bias)
    if approximate not in ("none", "tanh"):
        raise ShapeError(f"gelu approximate must be none or tanh, got {approximate!r}")
    if bias is not None and bias.shape != x.shape[-1:]:
        raise ShapeError(f"gelu bias {bias} does not match the last dim of {x}")
    return x


register_op("fused_gelu", (1, 2), {"approximate": False}, infer=_gelu_infer,
            numpy=lambda x, bias=None, approximate="none": _gelu(
                x if bias is None else x + bias, approximate),
            onnx=_gelu_onnx)


# ---------------------------------------------------------------- attention
def _sdpa_infer(q: TensorType, k: TensorType, v: TensorType, bias: TensorType | None = None,
                mask: TensorType | None = None, scale: float = 1.0, softcap: float = 0.0,
                causal: bool = False, window: int = 0) -> TensorType:
    _f32(q, k, v, bias)
    if mask is not None and (bias is None or mask.rank != 2 or mask.shape[1] != k.shape[2]):
        raise ShapeError(f"sdpa: the key mask {mask} is not [B, Tk] beside a bias")
    if q.rank != 4 or k.rank != 4 or v.rank != 4:
        raise ShapeError(f"sdpa takes q, k, v as [B, H, T, D], got {q}, {k}, {v}")
    h, kv = q.shape[1], k.shape[1]
    if not (isinstance(h, int) and isinstance(kv, int) and h % kv == 0 and v.shape[1] == kv):
        raise ShapeError(f"sdpa: {kv} kv heads cannot serve {h} query heads")
    if q.shape[3] != k.shape[3] or k.shape[2] != v.shape[2]:
        raise ShapeError(f"sdpa: q {q}, k {k} and v {v} do not fit")
    if bias is not None:
        broadcast(bias.shape, (q.shape[0], h, q.shape[2], k.shape[2]))
    return q.with_shape((*q.shape[:3], v.shape[3]))


# ---------------------------------------------------------------- the NumPy attention kernel
# Three ways to compute the same numbers, chosen per run: `run_graph(..., attention=KIND)`, else
# the environment variable ARCHC_ATTENTION, else "chunked". Scores held at once, per batch and
# head: plain Tq x Tk; chunked BLOCK x Tk (a block of queries at a time); flash BLOCK x BLOCK
# (blocks of keys too, with an online softmax). benchmarks/linear_attention.py measures them.
KERNELS = ("plain", "chunked", "flash")
BLOCK = 256
_KERNEL: ContextVar[str | None] = ContextVar("archc_attention", default=None)


def attention_kernel() -> str:
    """The NumPy kernel `sdpa` runs now: plain, chunked or flash."""
    kind = _KERNEL.get() or os.environ.get("ARCHC_ATTENTION") or "chunked"
    if kind not in KERNELS:
        raise ValueError(f"unknown attention kernel {kind!r} (ARCHC_ATTENTION): pick one of "
                         f"{', '.join(KERNELS)}")
    return kind


@contextmanager
def attention_kernel_as(kind: str | None):
    """Run `sdpa` with the NumPy kernel `kind` inside the block (None: leave it as it is)."""
    if kind is not None and kind not in KERNELS:
        raise ValueError(f"unknown attention kernel {kind!r}: pick one of {', '.join(KERNELS)}")
    token = _KERNEL.set(kind or _KERNEL.get())
    try:
        yield
    finally:
        _KERNEL.reset(token)


def sdpa(q, k, v, bias=None, scale=1.0, softcap=0.0, causal=False, window=0, block=BLOCK):
    """[B,H,Tq,D], [B,KV,Tk,D], [B,KV,Tk,Dv], bias broadcasting to [B,H,Tq,Tk] -> [B,H,Tq,Dv]

    softmax(mask(softcap(q k^T * scale) + bias)) v. `bias` carries any mask as float32's
    lowest. `causal` masks the keys after each query (key j > query i, both counted from 0),
    and `window` also those `window` or more places before it; with a bias, the bias masks
    them too (the rules build it so), which tells kernels which rows have no key at all.
    The G = H/KV query heads of one kv head are stacked on the query axis, so k and v are
    never repeated. A row whose every key is masked is the mean of all value rows (uniform
    weights over equal scores), whichever kernel runs."""
    kind = attention_kernel()
    b_, h, tq, d = q.shape
    kv, tk, g = k.shape[1], k.shape[2], h // k.shape[1]
    qg = q.reshape(b_, kv, g, tq, d)
    bias = None if bias is None else np.broadcast_to(bias, (b_, h, tq, tk)).reshape(
        b_, kv, g, tq, tk)
    mask = (scale, softcap, bias, causal, window)
    if kind == "flash":
        out = _flash(qg, k, v, mask, block)
    else:
        out = np.empty((b_, kv, g, tq, v.shape[3]), q.dtype)
        step = max(tq, 1) if kind == "plain" else block
        for start in range(0, tq, step):
            rows = (start, min(start + step, tq))
            p = _scores(qg, k, mask, rows, (0, tk))  # softmax in place: one score array
            p -= p.max(axis=-1, keepdims=True)
            np.exp(p, out=p)
            p /= p.sum(axis=-1, keepdims=True)
            out[:, :, :, rows[0]:rows[1]] = _pv(p, v)
    return out.reshape(b_, h, tq, v.shape[3])


def _pv(p, v):
    """[B,KV,G,R,C] @ [B,KV,C,Dv] -> [B,KV,G,R,Dv], one GEMM per kv head (2x G of R rows)"""
    b_, kv, g, r, c = p.shape
    return np.matmul(p.reshape(b_, kv, g * r, c), v).reshape(b_, kv, g, r, v.shape[3])


def _scores(qg, k, mask, rows, cols):
    """The masked scores of query rows [r0, r1) against key columns [c0, c1):
    [B,KV,G,r1-r0,c1-c0], from one [G*(r1-r0), D] x [D, c1-c0] GEMM per kv head."""
    scale, softcap, bias, causal, window = mask
    (r0, r1), (c0, c1) = rows, cols
    b_, kv, g, _, d = qg.shape
    s = np.matmul(qg[:, :, :, r0:r1].reshape(b_, kv, g * (r1 - r0), d),
                  np.swapaxes(k[:, :, c0:c1], -1, -2)).reshape(b_, kv, g, r1 - r0, c1 - c0)
    s *= np.float32(scale)
    if softcap:
        s = np.tanh(s / np.float32(softcap)) * np.float32(softcap)
    if bias is not None:
        s += bias[:, :, :, r0:r1, c0:c1]
    if causal and (c1 - 1 > r0 or (window and c0 <= r1 - 1 - window)):  # a tile the mask cuts
        i, j = np.arange(r0, r1)[:, None], np.arange(c0, c1)[None, :]
        keep = (j <= i) & (j > i - window) if window else j <= i
        np.copyto(s, np.float32(LOWEST), where=~keep)
    return s


def _flash(qg, k, v, mask, block):
    """The blocked online softmax (Milakov & Gimelshein 2018; Dao et al. 2022, "flash"):
    for a block of queries, walk the keys a block at a time keeping the running max m, the
    running sum l of exp(s - m) and the running output o; when the max grows from m to m',
    l and o are rescaled by exp(m - m'). Then out = o / l. With `causal`, key blocks wholly
    after the query block (or, with `window`, wholly before its window) are skipped: every
    score there is masked. A row that met no unmasked score is set to the mean of v."""
    _, _, _, causal, window = mask
    b_, kv, g, tq, _ = qg.shape
    tk = k.shape[2]
    out = np.empty((b_, kv, g, tq, v.shape[3]), qg.dtype)
    mean_v = v.mean(axis=2, dtype=np.float32)[:, :, None, None]  # [B,KV,1,1,Dv]
    for r0 in range(0, tq, block):
        r1 = min(r0 + block, tq)
        lo, hi = (max(0, r0 - window + 1) if causal and window else 0), (
            min(tk, r1) if causal else tk)
        m = np.full((b_, kv, g, r1 - r0, 1), -np.inf, np.float32)
        total = np.zeros_like(m)
        acc = np.zeros((b_, kv, g, r1 - r0, v.shape[3]), np.float32)
        for c0 in range(lo, hi, block):
            c1 = min(c0 + block, hi)
            p = _scores(qg, k, mask, (r0, r1), (c0, c1))
            m_new = np.maximum(m, p.max(axis=-1, keepdims=True))
            p -= m_new
            np.exp(p, out=p)  # exp(s - m')
            alpha = np.exp(m - m_new)
            total = total * alpha + p.sum(axis=-1, keepdims=True)
            acc *= alpha
            acc += _pv(p, v[:, :, c0:c1])
            m = m_new
        res = acc / np.where(total > 0, total, np.float32(1))
        out[:, :, :, r0:r1] = np.where(m > LOWEST / 2, res, mean_v)
    return out


# Which kernel self-attention (queries and keys of one sequence) lowers to: "gqa" for
# com.microsoft GroupQueryAttention, "onnx" for ONNX Attention. benchmarks/attention_variants.py
# and benchmarks/prefill.py measure both; anything else (decode with a cache, cross-attention)
# takes ONNX Attention, which was faster there than MultiHeadAttention.
SELF_ATTENTION = "gqa"


def _sdpa_onnx(b, q, k, v, bias=None, mask=None, scale=1.0, softcap=0.0, causal=False,
               window=0):
    qt, kt, vt = b.type_of(q), b.type_of(k), b.type_of(v)
    if mask is not None:  # If(right-padded, GroupQueryAttention with lengths, this lowering)
        from archc.ops.sdpa_past import padded_self_attention

        attrs = {"scale": scale, "softcap": softcap, "causal": causal, "window": window}
        fast = padded_self_attention(b, (q, k, v, bias, mask), lambda: _sdpa_onnx(
            b, q, k, v, bias, **attrs), **attrs)
        if fast is not None:
            return fast
    square = qt.shape[2] == kt.shape[2]
    full = None if bias is None else _full_bias(b, bias, q, k)
    # onnxruntime's GroupQueryAttention refuses a head size that is not a multiple of 8
    if SELF_ATTENTION == "gqa" and square and qt.shape[3] == vt.shape[3] and \
            qt.shape[3] % 8 == 0:
        out = _gqa_onnx(b, q, k, v, full, scale, softcap, causal, window)
    else:
        b.require_opset(23)  # ONNX Attention: GQA from the 4-D shapes, any float mask
        attrs = {"softcap": float(softcap)} if softcap else {}
        if causal and full is None and square and not window:
            attrs["is_causal"] = 1  # lower-triangular when Tq = Tk
        elif causal and full is None:
            full = _causal_bias(b, q, k, window)
        out = b.op("Attention", q, k, v, *([full] if full else []), scale=float(scale), **attrs)
    return out if bias is None else _patch_empty_rows(b, out, bias, v, qt.shape[1])


def _i64(b, *v):
    return b.const(np.array(v, np.int64))


def _full_bias(b, bias, q, k):
    """The bias with its last two dims stretched to [Tq, Tk]: neither kernel broadcasts them.
    Every layer shares one (the dims are symbols, so the first layer's q and k can say)."""
    t = b.type_of(bias)
    tq, tk = b.type_of(q).shape[2], b.type_of(k).shape[2]
    if t.rank == 4 and t.shape[2:] == (tq, tk):
        return bias

    def emit():
        size = b.op("Concat", _i64(b, 1, 1), b.op("Shape", q, start=2, end=3),
                    b.op("Shape", k, start=2, end=3), axis=0)
        return b.op("Expand", bias, size)
    return b.memo(("full_bias", bias, tq, tk), emit)


def _causal_bias(b, q, k, window):
    """[Tq, Tk]: 0 where key j <= query i (and j > i - window), float32's lowest elsewhere."""
    def emit():
        pos = [b.op("Range", _i64(b, 0), b.op("Squeeze", b.op("Shape", x, start=2, end=3),
                                              _i64(b, 0)), _i64(b, 1)) for x in (q, k)]
        i = b.op("Unsqueeze", pos[0], _i64(b, 1))
        keep = b.op("LessOrEqual", pos[1], i)
        if window:
            keep = b.op("And", keep, b.op("Greater", pos[1], b.op("Sub", i, _i64(b, window))))
        return b.op("Where", keep, b.scalar(0.0), b.scalar(LOWEST))
    tq, tk = b.type_of(q).shape[2], b.type_of(k).shape[2]
    return b.memo(("causal_bias", tq, tk, window), emit)


def _gqa_onnx(b, q, k, v, full, scale, softcap, causal, window):
    """GroupQueryAttention takes [B, T, heads*D], an exact [B|1, H|1, Tq, Tk] bias, and skips
    the keys after each query with causal=1 (before its window with local_window_size)."""
    (_, h, _, d), kv = b.type_of(q).shape, b.type_of(k).shape[1]
    bsd = [b.op("Reshape", b.op("Transpose", x, perm=[0, 2, 1, 3]), _i64(b, 0, 0, n * d))
           for x, n in ((q, h), (k, kv), (v, kv))]
    n = b.op("Cast", b.op("Shape", q, start=2, end=3), to=6)  # [1] int32: T
    seqlens = b.op("Expand", b.op("Sub", n, b.const(np.array([1], np.int32))),
                   b.op("Shape", q, start=0, end=1))  # [B] int32: T - 1 (padding is in bias)
    total = b.op("Squeeze", n, _i64(b, 0))
    attrs = {"num_heads": h, "kv_num_heads": kv, "scale": float(scale), "causal": int(causal)}
    if softcap:
        attrs["softcap"] = float(softcap)
    if causal and window:
        attrs["local_window_size"] = int(window)  # the query and the window - 1 keys before
    empty = b.op("Slice", k, *(_i64(b, x) for x in (0, 0, 2)))  # [B, KV, 0, D]
    # an empty past and named presents: the CPU kernel's faster prompt path (sdpa_past.py)
    out = b.op_multi("GroupQueryAttention", *bsd, empty, empty, seqlens, total, "", "", "",
                     *([full] if full is not None else []), n=3, domain=MS, **attrs)[0]
    return b.op("Transpose", b.op("Reshape", out, _i64(b, 0, 0, h, d)), perm=[0, 2, 1, 3])


def _row_ok(b, bias):  # [B|1, H|1, Tq|1, 1]: the rows with a key, once per bias
    t = b.types.get(bias)  # a scalar bias is every key's; None: a lowering's own (rank 4)
    return b.memo(("row_ok", bias), lambda: b.op("Greater", bias if t and t.rank == 0 else b.op(
        "ReduceMax", bias, _i64(b, -1), keepdims=1), b.scalar(LOWEST / 2)))


def _patch_empty_rows(b, out, bias, v, h):
    """Rows whose every key is masked: the mean of all value rows, as the unfused form gives
    (all scores equal float32's lowest, so softmax is uniform). The kernels differ there: ONNX
    Attention's CPU kernel returns other values, and GroupQueryAttention with causal=1 averages
    only the keys up to the query. Which rows those are is read off the bias once per model."""
    _, kv, _, dv = b.type_of(v).shape
    mean_v = b.op("ReduceMean", v, _i64(b, 2), keepdims=1)  # [B, KV, 1, Dv]
    if h != kv:  # kv head j serves query heads j*G .. j*G+G-1
        tiled = b.op("Tile", b.op("Unsqueeze", mean_v, _i64(b, 2)), _i64(b, 1, 1, h // kv, 1, 1))
        mean_v = b.op("Reshape", tiled, _i64(b, 0, h, 1, dv))
    return b.op("Where", _row_ok(b, bias), out, mean_v)


# The optional fifth input is the [B, Tk] key mask the bias was built from with the causal mask
# (rule `sdpa_masked`: bias = where(causal & mask != 0, 0, lowest)): a hint for kernels that
# take lengths. The bias alone says everything, so the NumPy kernel ignores it.
register_op("sdpa", (3, 5), {"scale": True, "softcap": False, "causal": False, "window": False},
            infer=_sdpa_infer, numpy=lambda q, k, v, bias=None, mask=None, **a: sdpa(
                q, k, v, bias, **a), onnx=_sdpa_onnx)
