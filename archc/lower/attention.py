"""The `attention` layer: MHA, GQA and MQA (by `kv_heads`), causal or bidirectional, padding
masks, sliding windows, rotary positions, score scale and softcap, and cross-attention.

Lowered to primitive ops (projections, reshapes, matmuls, masks, softmax) so that later fusion
rules can match them; parameters are `q`, `k`, `v`, `o` (`.weight` [in, out], `.bias`).
"""

from __future__ import annotations

import math

from archc.ir.types import TensorType
from archc.lower.builder import LayerBuilder
from archc.lower.layers import _sub, dense, layer
from archc.lower.signature import Arg

T = "tensor"


@layer("attention", 2,
       Arg("x", T), Arg("heads", "int"), Arg("kv_heads", "int", None), Arg("head_dim", "int", None),
       Arg("causal", "bool", False), Arg("mask", T, None), Arg("window", "int", 0),
       Arg("rope", "rope", None), Arg("context", T, None), Arg("context_mask", T, None),
       Arg("bias", "bool", True), Arg("qkv_bias", "bool", None), Arg("out_bias", "bool", None),
       Arg("scale", "float", None), Arg("softcap", "float", 0.0), Arg("dropout", "float", 0.0),
       Arg("position_bias", T, None),
       doc="multi-head attention of x over itself, or over `context` (cross-attention)")
def attention(b: LayerBuilder, x, heads, kv_heads, head_dim, causal, mask, window, rope,
              context, context_mask, bias, qkv_bias, out_bias, scale, softcap, dropout,
              position_bias):
    d = b.dim(x)
    kv_heads = kv_heads or heads
    _check_heads(b, d, heads, kv_heads, head_dim)
    hd = head_dim or d // heads
    qkv_bias = bias if qkv_bias is None else qkv_bias
    out_bias = bias if out_bias is None else out_bias
    source = x if context is None else context
    if context is None:  # cached keys and values per token: k and v, kv_heads x head_dim each
        b.graph.meta["kv_per_token"] = b.graph.meta.get("kv_per_token", 0) + 2 * kv_heads * hd
    q = _heads(b, dense(_sub(b, "q"), x, heads * hd, qkv_bias), heads, hd)
    k = _heads(b, dense(_sub(b, "k"), source, kv_heads * hd, qkv_bias), kv_heads, hd)
    v = _heads(b, dense(_sub(b, "v"), source, kv_heads * hd, qkv_bias), kv_heads, hd)
    if rope is not None:
        rot = rope.dim or int(hd * rope.fraction)
        if rot % 2 or not 0 < rot <= hd:
            b.fail("E0200", f"rotary dim {rot} must be even and within head_dim {hd}", "here")
        angles = b.op("rope_angles", b.positions(x), dim=rot, theta=rope.theta)
        q = b.op("rope", q, angles, interleaved=rope.interleaved)
        k = b.op("rope", k, angles, interleaved=rope.interleaved)
    kpos, key_mask = None, mask if context is None else context_mask
    if b.cache and context is None and causal:
        k, v, kpos, key_mask = _cached(b, x, k, v, window, mask)
    if kv_heads != heads:
        k = b.op("repeat_kv", k, groups=heads // kv_heads)
        v = b.op("repeat_kv", v, groups=heads // kv_heads)
    scores = b.op("matmul", q, b.op("transpose", k, perm=(0, 1, 3, 2)))
    scores = b.op("mul", scores, b.const(1 / math.sqrt(hd) if scale is None else scale))
    if softcap:
        cap = b.const(softcap)
        scores = b.op("mul", b.op("tanh", b.op("div", scores, cap)), cap)
    if position_bias is not None:  # [1 or B, H, Tq, Tk], added before masking (T5, ALiBi)
        scores = b.op("add", scores, position_bias)
    keep = _keep_mask(b, x, k, kpos, causal, window, key_mask)
    if keep is not None:
        scores = b.op("mask_fill", scores, keep)
    probs = b.op("softmax", scores, axis=-1)
    if dropout:
        probs = b.op("dropout", probs, p=dropout)
    out = b.op("transpose", b.op("matmul", probs, v), perm=(0, 2, 1, 3))  # [B, T, H, hd]
    out = b.op("reshape", out, shape=(0, 0, heads * hd))
    return dense(_sub(b, "o"), out, d, out_bias)


def _check_heads(b: LayerBuilder, d: int, heads: int, kv_heads: int, head_dim) -> None:
    if heads <= 0 or kv_heads <= 0:
        b.fail("E0200", "`heads` and `kv_heads` must be positive", "here")
    if head_dim is None and d % heads:
        b.fail("E0200", f"`heads` = {heads} does not divide the model dim {d}", "in this layer",
               help="set `head_dim` explicitly, or pick a head count that divides the dim")
    if heads % kv_heads:
        b.fail("E0200", f"`kv_heads` = {kv_heads} does not divide `heads` = {heads}",
               "in this layer", help="grouped-query attention shares each kv head between "
               "heads / kv_heads query heads, so kv_heads must divide heads")


def _heads(b: LayerBuilder, x, n: int, hd: int):
    """[B, T, n*hd] -> [B, n, T, hd]"""
    return b.op("transpose", b.op("reshape", x, shape=(0, 0, n, hd)), perm=(0, 2, 1, 3))


def _cached(b: LayerBuilder, x, k, v, window: int, mask):
    """Prepend this layer's cached keys and values (`past_key_values.N.key/value`, [B, KV,
    past, hd]) and publish the result as `present.N.key/value`. A sliding-window layer keeps
    only the last window - 1 entries (all the next token can see), so its cache is bounded;
    its keys' positions and padding are then the tail of the full mask's."""
    n = b.graph.meta.get("cache_layers", 0)
    b.graph.meta["cache_layers"] = n + 1
    out = []
    for kind, new in (("key", k), ("value", v)):
        _, kv, _, hd = new.type.shape
        past_dim = f"past_window{window}" if window else "past"
        past = b.graph.add_input(f"past_key_values.{n}.{kind}",
                                 TensorType("float32", (x.type.shape[0], kv, past_dim, hd)))
        full = b.op("concat", past, new, axis=2)
        present = b.op("last", full, axis=2, n=window - 1) if window else full
        b.graph.set_output(f"present.{n}.{kind}", present)
        out.append(full)
    k_all = out[0]
    if not window:
        return (*out, b.positions(k_all, axis=2), mask)
    if mask is None:
        b.fail("E0202", "a windowed KV cache needs `mask = attention_mask`", "here")
    kpos = b.op("tail", b.positions(mask, axis=1), k_all, axis=0, ref_axis=2)
    return (*out, kpos, b.op("tail", mask, k_all, axis=1, ref_axis=2))


def _keep_mask(b: LayerBuilder, x, k, kpos, causal: bool, window: int, mask):
    """Which keys each query may see: causal (and windowed) by position, and not padding."""
    keep = None
    if causal or window:
        qpos = b.positions(x)
        kpos = b.positions(k, axis=2) if kpos is None else kpos
        keep = b.op("causal_mask", qpos, kpos, window=window)
    if window and not causal:
        b.fail("E0200", "a sliding `window` needs `causal`", "here")
    if mask is not None:
        if mask.type.dtype != "int64" or mask.type.rank != 2:
            b.fail("E0201", f"`mask` must be int64[batch, seq], got {mask.type}", "here")
        pad = b.op("padding_mask", mask)
        keep = pad if keep is None else b.op("logical_and", keep, pad)
    return keep
