"""The `attention` layer: MHA, GQA and MQA (by `kv_heads`), causal or bidirectional, padding
masks, sliding windows (causal: the last `window` keys; bidirectional: window/2 each side, as
Longformer's `attention_window`), Longformer global tokens (`global_mask`), rotary positions,
score scale and softcap, additive position biases, and cross-attention.

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
       Arg("position_bias", T, None), Arg("global_mask", T, None),
       doc="multi-head attention of x over itself, or over `context` (cross-attention)")
def attention(b: LayerBuilder, x, heads, kv_heads, head_dim, causal, mask, window, rope,
              context, context_mask, bias, qkv_bias, out_bias, scale, softcap, dropout,
              position_bias, global_mask):
    d = b.dim(x)
    kv_heads = kv_heads or heads
    _check_heads(b, d, heads, kv_heads, head_dim)
    hd = head_dim or d // heads
    qkv_bias = bias if qkv_bias is None else qkv_bias
    scale = 1 / math.sqrt(hd) if scale is None else scale
    if context is None:  # cached keys and values per token: k and v, kv_heads x head_dim each
        b.graph.meta["kv_per_token"] = b.graph.meta.get("kv_per_token", 0) + 2 * kv_heads * hd
    elif global_mask is not None or causal or window:
        b.fail("E0200", "cross-attention takes no `causal`, `window` or `global_mask`", "here")
    q = _heads(b, dense(_sub(b, "q"), x, heads * hd, qkv_bias), heads, hd)
    k, v = (_heads(b, dense(_sub(b, n), x if context is None else context, kv_heads * hd,
                            qkv_bias), kv_heads, hd) for n in "kv")
    if rope is not None:
        q, k = _rotate(b, x, q, k, rope, hd)
    kpos, key_mask = None, mask if context is None else context_mask
    if b.cache and context is None and causal:
        k, v, kpos, key_mask = _cached(b, x, k, v, window, mask)
    elif b.cache and context is not None:
        _mark_cross(b, k, v)
    keep = _keep_mask(b, x, k, kpos, causal, window, key_mask, global_mask)
    out = _attend(b, q, k, v, heads // kv_heads, scale, softcap, position_bias, keep, dropout)
    if global_mask is not None:
        out = _global_rows(b, x, out, global_mask, key_mask, heads, hd, qkv_bias, scale)
    out = b.op("transpose", out, perm=(0, 2, 1, 3))  # [B, T, H, hd]
    out = b.op("reshape", out, shape=(0, 0, heads * hd))
    return dense(_sub(b, "o"), out, d, bias if out_bias is None else out_bias)


def _rotate(b: LayerBuilder, x, q, k, rope, hd: int):
    rot = rope.dim or int(hd * rope.fraction)
    if rot % 2 or not 0 < rot <= hd:
        b.fail("E0200", f"rotary dim {rot} must be even and within head_dim {hd}",
               f"gives {rot} rotary dims", span=b.at("rope"))
    angles = b.op("rope_angles", b.positions(x), dim=rot, theta=rope.theta)
    return (b.op("rope", q, angles, interleaved=rope.interleaved),
            b.op("rope", k, angles, interleaved=rope.interleaved))


def _attend(b: LayerBuilder, q, k, v, groups: int, scale: float, softcap: float,
            position_bias, keep, dropout: float):
    """softmax(q k^T * scale [softcapped] + bias, masked by keep) v -> [B, H, Tq, hd]"""
    if groups > 1:
        k, v = (b.op("repeat_kv", t, groups=groups) for t in (k, v))
    scores = b.op("matmul", q, b.op("transpose", k, perm=(0, 1, 3, 2)))
    scores = b.op("mul", scores, b.const(scale))
    if softcap:
        cap = b.const(softcap)
        scores = b.op("mul", b.op("tanh", b.op("div", scores, cap)), cap)
    if position_bias is not None:  # [1 or B, H, Tq, Tk], added before masking (T5, ALiBi)
        scores = b.op("add", scores, position_bias)
    if keep is not None:
        scores = b.op("mask_fill", scores, keep)
    probs = b.op("softmax", scores, axis=-1)
    if dropout:
        probs = b.op("dropout", probs, p=dropout)
    return b.op("matmul", probs, v)


def _global_rows(b: LayerBuilder, x, out, global_mask, mask, heads: int, hd: int,
                 qkv_bias: bool, scale: float):
    """Longformer's global attention: tokens flagged in `global_mask` attend to every
    (unpadded) token through their own `q_global`, `k_global`, `v_global` projections; their
    rows replace the local result."""
    qg, kg, vg = (_heads(b, dense(_sub(b, f"{n}_global"), x, heads * hd, qkv_bias), heads, hd)
                  for n in "qkv")
    keep = None if mask is None else b.op("padding_mask", mask)
    og = _attend(b, qg, kg, vg, 1, scale, 0.0, None, keep, 0.0)
    is_global = b.op("reshape", b.op("cast", global_mask, to="bool"), shape=(0, 1, -1, 1))
    return b.op("where", is_global, og, out)


def _check_heads(b: LayerBuilder, d: int, heads: int, kv_heads: int, head_dim) -> None:
    if heads <= 0 or kv_heads <= 0:
        b.fail("E0200", "`heads` and `kv_heads` must be positive", "here",
               span=b.at("heads" if heads <= 0 else "kv_heads"))
    if head_dim is None and d % heads:
        b.fail("E0200", f"`heads` = {heads} does not divide the model dim {d}",
               f"{heads} heads of a {d}-wide input", span=b.at("heads"),
               help="set `head_dim` explicitly, or pick a head count that divides the dim")
    if heads % kv_heads:
        b.fail("E0200", f"`kv_heads` = {kv_heads} does not divide `heads` = {heads}",
               "not a divisor of heads", span=b.at("kv_heads"),
               help="grouped-query attention shares each kv head between "
               "heads / kv_heads query heads, so kv_heads must divide heads")


def _heads(b: LayerBuilder, x, n: int, hd: int):
    """[B, T, n*hd] -> [B, n, T, hd]"""
    return b.op("transpose", b.op("reshape", x, shape=(0, 0, n, hd)), perm=(0, 2, 1, 3))


def _cached(b: LayerBuilder, x, k, v, window: int, mask):
    """Prepend this layer's cached keys and values (`past_key_values.N.key/value`, [B, KV,
    past, hd]) and publish the result as `present.N.key/value`. A sliding-window layer keeps
    only the last window - 1 entries (all the next token can see), so its cache is bounded;
    its keys' positions and padding are then the tail of the full mask's."""
    seq = x.type.shape[1]
    if b.past_mask(seq) is None:
        b.fail("E0202", "incremental decoding needs an attention mask input covering past and "
               "new tokens", "this layer keeps a KV cache",
               help="declare `input attention_mask: int64[batch, seq]` and pass it as `mask`")
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


def _mark_cross(b: LayerBuilder, k, v) -> None:
    """With a cache, cross-attention keys/values are computed once by the encoder graph and
    fed to the decoder graph as `encoder_key_values.N.key/value` (see archc.kvcache)."""
    n = len(b.graph.meta.setdefault("cross_kv", []))
    b.graph.meta["cross_kv"].append((f"encoder_key_values.{n}", k, v))


def _keep_mask(b: LayerBuilder, x, k, kpos, causal: bool, window: int, mask, global_mask=None):
    """Which keys each query may see: causal (the last `window` keys when windowed) or, without
    `causal`, a band of window/2 keys each side; never padding; global tokens are seen by all."""
    keep = None
    if causal or window:
        qpos = b.positions(x)
        kpos = b.positions(k, axis=2) if kpos is None else kpos
        keep = b.op("causal_mask", qpos, kpos, window=window) if causal else \
            b.op("band_mask", qpos, kpos, radius=window // 2)
    if global_mask is not None:
        is_global = b.op("reshape", b.op("cast", global_mask, to="bool"), shape=(0, 1, 1, -1))
        keep = is_global if keep is None else b.op(
            "logical_or", b.op("logical_and", keep, b.op("logical_not", is_global)), is_global)
    if mask is not None:
        if mask.type.dtype != "int64" or mask.type.rank != 2:
            b.fail("E0201", f"`mask` must be int64[batch, seq], got {mask.type}", "here")
        pad = b.op("padding_mask", mask)
        keep = pad if keep is None else b.op("logical_and", keep, pad)
    return keep
