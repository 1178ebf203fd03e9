"""Attention over a KV cache: the target of the `sdpa_past` rules (fusions/attention.py).

    t = sdpa_past(q, k, v, past_k, past_v, bias) {scale, softcap, causal}
    out = tuple_get(t) {index=0}                         [B, H, T, Dv]
    present_k = kv_present(t, past_k, k) {index=1}       [B, KV, P+T, D]  (past ++ new)
    present_v = kv_present(t, past_v, v) {index=2}

is sdpa(q, concat(past_k, k), concat(past_v, v), bias) with the concatenations as two more
results. `causal` here is aligned at the bottom right: query i is token P + i and sees the keys
up to it (the cache's positions; `sdpa`'s causal counts both from 0). `kv_present` reads a
result like `tuple_get` and takes the two halves only for its type (a tuple has one type, and
the results differ in length).

Lowering (CACHED_ATTENTION, measured below): ONNX Attention (opset 23) over concat(past, new),
or with past_key/past_value [B, KV, P, D] -> present_key/present_value [B, KV, P+T, D]; either
way the causal mask (bottom right) goes into the bias, as its is_causal aligns top left. Or
com.microsoft GroupQueryAttention with past: seqlens_k = P+T-1 (int32, every row: padding is in
the bias, which carries the whole mask), total_sequence_length = P+T (int32 scalar), causal=1;
GQA's causal mask only hides keys the bias hides too. Its CPU kernel refuses several new tokens
after a past when the batch has more than one row, so an ONNX `If` takes ONNX Attention then (a
chunked prefill of a batch). Fully masked rows get the mean of the values, as in `sdpa`.

Fast paths (FAST_PATHS). The rules pass the [B, Tk] key mask the bias was built from as a last
input (`sdpa`'s fifth, `sdpa_past`'s seventh) when the bias is exactly where(causal & mask, 0,
lowest). The lowering then checks the mask at run time, O(B Tk), once per model, and an ONNX `If`
takes GroupQueryAttention without the bias when it can (`padded_self_attention`: right padding
or none; `_fast`: all ones), else the exact lowering above (left padding needs it). The O(T^2)
bias add and the empty-row patch go from the common case; the numbers stay within 1e-5
(tests/test_fusions_fastpath.py).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from archc.ir.types import ShapeError, TensorType
from archc.ops.fused import LOWEST, MS, _f32, _full_bias, _i64, _patch_empty_rows, _row_ok, sdpa
from archc.ops.registry import register_op


def _concat_type(past: TensorType, new: TensorType) -> TensorType:
    from archc.ops import OPS

    return OPS["concat"].infer(past, new, axis=2)


def _infer(q: TensorType, k: TensorType, v: TensorType, pk: TensorType, pv: TensorType,
           bias: TensorType, mask: TensorType | None = None, scale: float = 1.0,
           softcap: float = 0.0, causal: bool = False) -> TensorType:
    _f32(q, k, v, pk, pv, bias)
    if mask is not None and (mask.rank != 2 or mask.shape[1] != _concat_type(pk, k).shape[2]):
        raise ShapeError(f"sdpa_past: the key mask {mask} is not [B, P+T]")
    from archc.ops import OPS

    for past, new in ((pk, k), (pv, v)):
        if past.rank != 4 or past.shape[:2] + past.shape[3:] != new.shape[:2] + new.shape[3:]:
            raise ShapeError(f"sdpa_past: the cache {past} does not fit the new keys {new}")
    if q.shape[2] != k.shape[2]:
        raise ShapeError(f"sdpa_past: {q} and the new keys {k} differ in length")
    kk = _concat_type(pk, k)
    return OPS["sdpa"].infer(q, kk, _concat_type(pv, v), bias, scale=scale, softcap=softcap)


def sdpa_past(q, k, v, pk, pv, bias, mask=None, scale=1.0, softcap=0.0, causal=False):
    """[B,H,T,D], [B,KV,T,D] x2, [B,KV,P,D] x2, bias -> (out, past ++ k, past ++ v)
    (`mask` is a hint for the ONNX lowering: the bias already holds it)"""
    kk, vv = np.concatenate([pk, k], axis=2), np.concatenate([pv, v], axis=2)
    if causal:  # query i is token P + i: keys j > P + i are hidden
        t, n = q.shape[2], kk.shape[2]
        keep = np.arange(n)[None, :] <= np.arange(n - t, n)[:, None]
        bias = np.where(keep, bias, np.float32(LOWEST)).astype(np.float32)
    return sdpa(q, kk, vv, bias, scale=scale, softcap=softcap), kk, vv


def _i32(b, *v):
    return b.const(np.array(v[0] if len(v) == 1 else v, np.int32))


def _keep32(b, mask) -> str:
    """[B, N] int32: 1 where the mask keeps the key (mask != 0, as `padding_mask`), once."""
    return b.memo(("keep32", mask), lambda: b.op("Cast", b.op("Cast", mask, to=9), to=6))


def _bsd(b, q, k, v) -> list[str]:
    """q, k, v [B, heads, T, D] -> [B, T, heads*D], GroupQueryAttention's layout."""
    return [b.op("Reshape", b.op("Transpose", x, perm=[0, 2, 1, 3]),
                 _i64(b, 0, 0, b.type_of(x).shape[1] * b.type_of(x).shape[3])) for x in (q, k, v)]


def _total(b, q, pk) -> str:
    """P + T as [1] int64, once per model: every layer's cache has the same length."""
    return b.memo(("past_total", b.type_of(pk).shape[2], b.type_of(q).shape[2]), lambda: b.op(
        "ReduceSum", b.op("Concat", b.op("Shape", pk, start=2, end=3),
                          b.op("Shape", q, start=2, end=3), axis=0), keepdims=1))


def _gqa_lengths(b, q, total) -> tuple[str, str]:
    """GQA's seqlens_k [B] int32 = P + T - 1 for every row, and total_sequence_length (an int32
    scalar), once per model."""
    def emit():
        n = b.op("Cast", total, to=6)
        seqlens = b.op("Expand", b.op("Sub", n, b.const(np.array([1], np.int32))),
                       b.op("Shape", q, start=0, end=1))
        return seqlens, b.op("Squeeze", n, _i64(b, 0))
    return b.memo(("gqa_lengths", total), emit)


def _gqa_can_run(b, q, pk) -> str:
    """onnxruntime's CPU GroupQueryAttention refuses several new tokens after a past in a batch
    of more than one ("batch_size must be 1 when sequence_length > 1 and past context is
    given"): true when T = 1, P = 0 or B = 1, once per model."""
    def emit():
        one, zero = _i64(b, 1), _i64(b, 0)
        t, p = b.op("Shape", q, start=2, end=3), b.op("Shape", pk, start=2, end=3)
        ok = b.op("Or", b.op("Equal", t, one), b.op("Equal", p, zero))
        ok = b.op("Or", ok, b.op("Equal", b.op("Shape", q, start=0, end=1), one))
        return b.op("Squeeze", ok, zero)
    return b.memo(("gqa_can_run", b.type_of(pk).shape[2], b.type_of(q).shape[2]), emit)


def _causal_bias(b, q, bias, total) -> str:
    """bias where key j <= P + i (query i is token P + i), float32's lowest elsewhere."""
    def emit():
        t = b.op("Squeeze", b.op("Shape", q, start=2, end=3), _i64(b, 0))
        n = b.op("Squeeze", total, _i64(b, 0))
        zero, one = b.const(np.array(0, np.int64)), b.const(np.array(1, np.int64))
        i = b.op("Unsqueeze", b.op("Range", b.op("Sub", n, t), n, one), _i64(b, 1))
        keep = b.op("LessOrEqual", b.op("Range", zero, n, one), i)
        return b.op("Where", keep, bias, b.scalar(LOWEST))
    return b.memo(("past_causal", bias), emit)


def _branch(b, name: str, emit) -> onnx.GraphProto:
    """The nodes `emit()` adds, as a subgraph returning its results (outer names are in scope).
    What it remembers (`b.memo`) stays in it: a later branch cannot see this one's values."""
    saved, memo, b.nodes, b._memo = b.nodes, b._memo, [], dict(b._memo)
    outs = emit()
    nodes, b.nodes, b._memo = b.nodes, saved, memo
    for node in nodes:
        node.name = f"{name}_{node.name}"
    return helper.make_graph(nodes, name, [], [
        helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs])


def _right_padded(b, mask) -> tuple[str, str, str]:
    """(ok, seqlens_k, total) once per key mask [B, T]: ok (a bool scalar) when every row is
    L >= 1 ones then zeros (right padding, or none), i.e. mask == (j < L); seqlens_k = L - 1
    ([B] int32); total = T (an int32 scalar). O(B T)."""
    def emit():
        keep = _keep32(b, mask)
        lens = b.op("ReduceSum", keep, _i64(b, 1), keepdims=1)  # [B, 1]: L
        t = b.op("Cast", b.op("Squeeze", b.op("Shape", mask, start=1, end=2), _i64(b, 0)), to=6)
        prefix = b.op("Cast", b.op("Less", b.op("Range", _i32(b, 0), t, _i32(b, 1)), lens), to=6)
        same = b.op("ReduceMin", b.op("Cast", b.op("Equal", prefix, keep), to=6), keepdims=0)
        ok = b.op("And", b.op("Equal", same, _i32(b, 1)),
                  b.op("Greater", b.op("ReduceMin", lens, keepdims=0), _i32(b, 0)))
        return ok, b.op("Sub", b.op("Squeeze", lens, _i64(b, 1)), _i32(b, 1)), t
    return b.memo(("right_padded", mask), emit)


# Whether `sdpa` / `sdpa_past` with their key mask lower behind the If of the fast paths
# (`padded_self_attention`, `_fast`); False: always the exact lowering (benchmarks/prefill.py
# measures both).
FAST_PATHS = True


def padded_self_attention(b, args, exact, scale=1.0, softcap=0.0, causal=False, window=0):
    """`sdpa` with its key mask (causal self-attention, bias = where(causal & mask, 0, lowest)):
    If(mask right-padded, GroupQueryAttention with seqlens_k = L - 1 and no bias, exact()).

    GQA's causal=1 hides the keys after each query and seqlens_k those at or past L, for every
    query row, padded ones too (they see keys 0..L-1, as the bias says), and with L >= 1 no
    row is empty: the [B, H, T, T] bias add and the empty-row patch go. A sliding window is
    GQA's local_window_size (key j > i - window: the same count); a padded row then has no key
    when T - L >= window, so that batch takes exact(), as a left-padded row (or an empty one)
    does. None when GQA cannot run it (Tq != Tk, head sizes)."""
    q, k, v, bias, mask = args
    (_, h, tq, d), (_, kv, tk, dv) = b.type_of(q).shape, b.type_of(v).shape
    if not FAST_PATHS or not causal or tq != tk or d % 8 or dv != d:
        return None
    ok, seqlens, total = _right_padded(b, mask)
    if window:  # a padded query row sees keys (i - window, L): none when T - L >= window
        pad = b.op("Sub", total, b.op("ReduceMin", seqlens, keepdims=0))  # T - min(L) + 1
        ok = b.op("And", ok, b.op("LessOrEqual", pad, _i32(b, window)))
    _full_bias(b, bias, q, k), _row_ok(b, bias)  # the exact branch's shared values, outside
    attrs = {"num_heads": h, "kv_num_heads": kv, "scale": float(scale), "causal": 1,
             **({"softcap": float(softcap)} if softcap else {}),
             **({"local_window_size": int(window)} if window else {})}

    def gqa():  # [B, T, H*D]
        # an empty past ([B, KV, 0, D], sliced off k) and named presents (then unused):
        # onnxruntime's CPU kernel runs a prompt 1.5x faster so (68 against 102 ms a layer at
        # T = 2048, one thread; without the presents it takes the slow way again)
        empty = b.op("Slice", k, *(_i64(b, x) for x in (0, 0, 2)))
        return b.op_multi("GroupQueryAttention", *_bsd(b, q, k, v), empty, empty, seqlens,
                          total, n=3, domain=MS, **attrs)[:1]

    def flat():
        out = exact()
        return [b.op("Reshape", b.op("Transpose", out, perm=[0, 2, 1, 3]), _i64(b, 0, 0, h * d))]
    out = b.op("If", ok, then_branch=_branch(b, "fast", gqa),
               else_branch=_branch(b, "exact", flat))
    return b.op("Transpose", b.op("Reshape", out, _i64(b, 0, 0, h, d)), perm=[0, 2, 1, 3])


# What `sdpa_past` lowers to: "concat" for ONNX Attention (opset 23) over concat(past, new),
# the presents being the two Concats; "onnx" for ONNX Attention with past_key/past_value ->
# present_key/present_value; "gqa" for com.microsoft GroupQueryAttention with past (behind the
# `If` above). Measured by `benchmarks/prefill.py --past 128,1024,4096` (LLaMA-shaped 55M, 8
# layers, 8/2 heads of 64; 1 token after P; onnxruntime 1.32 CPU, 2 threads; best of 5 means of
# 20 steps), ms a step, against -O2 without `sdpa_past` (Attention over Concat nodes, as before):
#     P       before   concat   onnx past   gqa past
#     128     6.21     6.17     5.89        6.33
#     1024    7.07     6.95     7.26        7.74
#     4096    10.62    10.45    10.62       11.40
# Within a few % of each other (this machine is shared: runs vary by ~5%), GQA the slowest past
# 1k tokens; "concat" is never behind the graph before, so it is the default. "gqa" is the
# layout onnxruntime-genai and GPU kernels expect.
CACHED_ATTENTION = "concat"


def _onnx(b, q, k, v, pk, pv, bias, mask=None, scale=1.0, softcap=0.0, causal=False):
    """[B, H, T, Dv] and the presents, by CACHED_ATTENTION; with the key `mask`, behind an If
    that takes GroupQueryAttention without a bias when the mask is all ones (`_fast`)."""
    (_, h, _, d), dv = b.type_of(q).shape, b.type_of(v).shape[3]
    total = _total(b, q, pk)
    if b.type_of(bias).rank != 4 or b.type_of(bias).shape[2:] != (
            b.type_of(q).shape[2], _concat_type(b.type_of(pk), b.type_of(k)).shape[2]):
        bias = b.memo(("past_bias", bias), lambda: b.op("Expand", bias, b.op(  # [.., T, P+T]
            "Concat", _i64(b, 1, 1), b.op("Shape", q, start=2, end=3), total, axis=0)))
    attrs = {"scale": float(scale), **({"softcap": float(softcap)} if softcap else {})}
    b.require_opset(23)
    # ONNX Attention's is_causal aligns top left: the causal mask goes in the bias
    masked = _causal_bias(b, q, bias, total) if causal else bias

    def attention():  # [B, H, T, Dv], presents
        if CACHED_ATTENTION == "concat":
            kk, vv = b.op("Concat", pk, k, axis=2), b.op("Concat", pv, v, axis=2)
            return [b.op("Attention", q, kk, vv, masked, **attrs), kk, vv]
        return b.op_multi("Attention", q, k, v, masked, pk, pv, n=3, **attrs)

    def exact():  # [B, H, T, Dv] with the empty rows patched, presents
        if CACHED_ATTENTION != "gqa" or d % 8 or dv != d:  # GQA: one head size, a multiple of 8
            outs = attention()
        else:
            outs = _gqa(b, (q, k, v, pk, pv, bias), total, attention, causal=int(causal),
                        **attrs)
        b.types[outs[2]] = _concat_type(b.type_of(pv), b.type_of(v))
        return [_patch_empty_rows(b, outs[0], masked, outs[2], h), *outs[1:]]
    if mask is None or not FAST_PATHS or not causal or d % 8 or dv != d:
        outs = exact()
    else:
        outs = _fast(b, (q, k, v, pk, pv), mask, total, masked, exact, **attrs)
    b.types[outs[2]] = _concat_type(b.type_of(pv), b.type_of(v))
    b.outputs_of[outs[0]] = tuple(outs)
    return outs[0]


def _fast(b, args, mask, total, masked, exact, **attrs) -> list[str]:
    """With the mask all ones (checked in O(B (P+T)), once per model), the bias is just the
    causal mask (bottom right) and no row is empty, so the bias add and the patch go:

        If(all ones and (T = 1 or GQA can run),
           If(T = 1, Attention(q, past ++ k, past ++ v) with no mask at all,
              GroupQueryAttention with past and no bias),
           exact())

    One new token sees every key (the step keeps the [B, H, T, D] layout: no transposes); GQA's
    causal=1 with seqlens_k = P + T - 1 hides the later keys of several. Any zero in the mask
    takes exact(): GQA reads seqlens_k as where the new keys go, so padding would move them.
    exact() is the outer else branch, so what only it reads (the bias) is built only when it
    runs (archc/backends/onnx_gate.py)."""
    q, k, v, pk, pv = args
    (_, h, _, d), kv = b.type_of(q).shape, b.type_of(k).shape[1]
    seqlens, n = _gqa_lengths(b, q, total)  # outside the branches: every layer reads them
    ones = b.memo(("all_ones", mask), lambda: b.op("Equal", b.op(
        "ReduceMin", _keep32(b, mask), keepdims=0), _i32(b, 1)))
    step = b.memo(("step", total), lambda: b.op("Squeeze", b.op(
        "Equal", b.op("Shape", q, start=2, end=3), _i64(b, 1)), _i64(b, 0)))
    fast = b.memo(("fast_ok", mask, total), lambda: b.op("And", ones, b.op(
        "Or", step, _gqa_can_run(b, q, pk))))
    _row_ok(b, masked)  # the exact branch's row check, outside: every layer reads it

    def one():  # [B, H, 1, Dv], presents
        kk, vv = b.op("Concat", pk, k, axis=2), b.op("Concat", pv, v, axis=2)
        return [b.op("Attention", q, kk, vv, **attrs), kk, vv]

    def gqa():  # [B, H, T, Dv], presents
        out, *presents = b.op_multi("GroupQueryAttention", *_bsd(b, q, k, v), pk, pv, seqlens,
                                    n, n=3, domain=MS, num_heads=h, kv_num_heads=kv, causal=1,
                                    **attrs)
        return [b.op("Transpose", b.op("Reshape", out, _i64(b, 0, 0, h, d)), perm=[0, 2, 1, 3]),
                *presents]

    def fused():
        return b.op_multi("If", step, n=3, then_branch=_branch(b, "fast_step", one),
                          else_branch=_branch(b, "gqa", gqa))
    return b.op_multi("If", fast, n=3, then_branch=_branch(b, "fast", fused),
                      else_branch=_branch(b, "exact", exact))


def _gqa(b, args, total, attention, **attrs) -> list[str]:
    """If(_gqa_can_run, GroupQueryAttention with past, attention()): [B, H, T, Dv], presents."""
    q, k, v, pk, pv, bias = args
    (_, h, _, d), kv = b.type_of(q).shape, b.type_of(k).shape[1]
    seqlens, n = _gqa_lengths(b, q, total)  # outside the branches: every layer reads them

    def gqa():  # [B, T, H*D], presents
        return b.op_multi("GroupQueryAttention", *_bsd(b, q, k, v), pk, pv, seqlens, n, "", "",
                          "", bias, n=3, domain=MS, num_heads=h, kv_num_heads=kv, **attrs)

    def flat():
        out, *presents = attention()
        return [b.op("Reshape", b.op("Transpose", out, perm=[0, 2, 1, 3]),
                     _i64(b, 0, 0, h * d)), *presents]
    outs = b.op_multi("If", _gqa_can_run(b, q, pk), n=3, then_branch=_branch(b, "gqa", gqa),
                      else_branch=_branch(b, "attention", flat))
    out = b.op("Transpose", b.op("Reshape", outs[0], _i64(b, 0, 0, h, d)), perm=[0, 2, 1, 3])
    return [out, *outs[1:]]


register_op("sdpa_past", (6, 7), {"scale": True, "softcap": False, "causal": False},
            infer=_infer, numpy=sdpa_past, onnx=_onnx)


def _present_infer(t: TensorType, past: TensorType, new: TensorType, index: int) -> TensorType:
    if index not in (1, 2):
        raise ShapeError(f"kv_present reads result 1 or 2 of sdpa_past, not {index}")
    return _concat_type(past, new)


register_op("kv_present", 3, {"index": True}, infer=_present_infer,
            numpy=lambda t, past, new, index: t[index],
            onnx=lambda b, t, past, new, index: b.outputs_of[t][index])
