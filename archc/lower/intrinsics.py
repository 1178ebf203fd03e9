"""Primitives that touch more than one op: parameters, checks, positions and masks, the KV cache
and encoder cache, rotary and relative positions, and the MoE gate.

These stay in Python because each reads or writes graph-level facts that a block cannot see:
parameter names and reuse (`param`, `weight_of`), the cache mode and the graph's inputs and
outputs (`positions`, `cache`, `encoder_cache`), or diagnostics about the caller's arguments
(`require`). The math they emit is ordinary ops.
"""

from __future__ import annotations

import re

import numpy as np

from archc.ir.graph import Node
from archc.ir.types import TensorType, numel
from archc.lower.builder import Abort, LayerBuilder, LayerFailed
from archc.lower.layers import layer, tied_weight
from archc.lower.rope import attention_factor, inv_freq
from archc.lower.signature import Arg, ModuleRef, Rope, SymDim, Word, describe

T = "tensor"
INITS = ("xavier", "he", "normal", "ones", "zeros")
MAX_PARAM_DIM = 2**40
MAX_PARAM_ELEMENTS = 2**52  # past any real layer (stats may count giants), short of int64 overflow
MAX_HEADS = 2**16  # alibi_slopes builds its table in Python, one slope per head
ROLES = ("other", "token_embedding", "position_embedding", "token_type_embedding", "head")


# ---------------------------------------------------------------- parameters and checks
@layer("param", 1, Arg("dims", "*value"), Arg("init", "enum", "xavier", INITS),
       Arg("std", "float", 0.02), Arg("role", "enum", "other", ROLES), owns=False,
       doc="a weight of the enclosing block, named by `w = param(...)` or `param(...) as w`")
def param(b: LayerBuilder, dims, init, std, role):
    name = b.ev.naming
    if name is None:
        b.fail("E0109", "a parameter needs a name", "unnamed",
               help="write `w = param(...)` or `param(...) as w`")
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                           for d in dims):
        bad = next((d for d in dims if not isinstance(d, int) or d <= 0), None)
        b.fail("E0200", f"parameter `{name}` needs positive integer dims", "here",
               help=f"got {describe(bad)}" if dims else "give at least one dim")
    if numel(tuple(min(d, MAX_PARAM_DIM) for d in dims)) > MAX_PARAM_ELEMENTS or \
            max(dims) > MAX_PARAM_DIM:
        b.fail("E0200", f"parameter `{name}` {list(dims)} is too large", "here",
               help=f"a parameter holds at most {MAX_PARAM_ELEMENTS:,} values")
    rule = f"normal:{std}" if init == "normal" else init
    return b.param(name, tuple(dims), rule, role=role)


@layer("weight_of", 2, Arg("source", "module"), Arg("shape", "list"), owns=False,
       doc="the `weight` of the layer named `source` (tied weights), checked against shape")
def weight_of(b, source, shape):
    return tied_weight(b, source, tuple(shape))


_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _format(b: LayerBuilder, text: str) -> str:
    """`{name}` in a message shows that compile-time value; nothing else is interpreted."""
    def value(m):
        name = m.group(1)
        v = b.ev.env.get(name) if name in b.ev.env else None
        if isinstance(v, Node):
            return str(v.type)
        if isinstance(v, Word | SymDim):
            return v.text if isinstance(v, Word) else v.name
        return m.group(0) if v is None else str(v)
    return _FIELD.sub(value, text)


@layer("require", 2, Arg("cond", "bool"), Arg("message", "value"), Arg("at", "value", None),
       Arg("label", "value", ""), Arg("help", "value", None), owns=False,
       doc='a compile-time check: require(heads > 0, "...", at = "heads")')
def require(b, cond, message, at, label, help):
    if cond:
        return True
    frame = b.ev.frames[-1] if b.ev.frames else None
    span = b.span
    if frame is not None:
        span = frame.arg_spans.get(at, frame.call) if isinstance(at, str) else frame.call
    try:
        b.fail("E0200", _format(b, str(message)), _format(b, str(label)), span=span,
               help=None if help is None else _format(b, str(help)))
    except LayerFailed:
        raise Abort from None


# ---------------------------------------------------------------- positions and masks
@layer("positions", 1, Arg("x", T), Arg("axis", "int", 1), owns=False,
       doc="positions along x's axis (int64 [T]); with a KV cache, offset by the past length")
def positions(b, x, axis):
    return b.positions(x, axis)


@layer("key_positions", 1, Arg("k", T), Arg("axis", "int", 2), owns=False,
       doc="positions of the keys k [B,H,S,D] (with a cache: past and new ones)")
def key_positions(b, k, axis):
    mask = _window_mask(b, k, axis)
    if mask is not None:
        return b.op("tail", b.positions(mask, axis=1), k, axis=0, ref_axis=axis % k.type.rank)
    return b.key_positions(k, axis)


@layer("key_mask", 2, Arg("mask", T), Arg("k", T), owns=False,
       doc="the padding mask of the keys k: with a windowed cache, the tail of `mask`")
def key_mask(b, mask, k):
    return mask if _window_mask(b, k) is None else b.op("tail", mask, k, axis=1, ref_axis=2)


def _window_mask(b: LayerBuilder, k: Node, axis: int = 2) -> Node | None:
    if not -k.type.rank <= axis < k.type.rank:
        b.fail("E0201", f"the keys {k.type} have no sequence axis {axis}", "here",
               help="the keys are [batch, heads, seq, dim] (seq on axis 2) unless `axis` says")
    d = k.type.shape[axis]
    if not (isinstance(d, str) and d.startswith("past_window")):
        return None
    seq = d.split("+", 1)[1]
    return b.past_mask(seq)


@layer("causal_mask", 2, Arg("qpos", T), Arg("kpos", T), Arg("window", "int", 0), owns=False,
       doc="keep [Tq, Tk]: key <= query (and within the last `window` keys)")
def causal_mask(b, qpos, kpos, window):
    return b.op("causal_mask", qpos, kpos, window=window)


@layer("band_mask", 3, Arg("qpos", T), Arg("kpos", T), Arg("radius", "int"), owns=False,
       doc="keep [Tq, Tk]: |key - query| <= radius")
def band_mask(b, qpos, kpos, radius):
    return b.op("band_mask", qpos, kpos, radius=radius)


@layer("padding_mask", 1, Arg("mask", T), owns=False,
       doc="keep [B, 1, 1, Tk] from an int64 [batch, seq] mask (1 = real token)")
def padding_mask(b, mask):
    if mask.type.dtype != "int64" or mask.type.rank != 2:
        b.fail("E0201", f"`mask` must be int64[batch, seq], got {mask.type}", "here")
    return b.op("padding_mask", mask)


@layer("mask_fill", 2, Arg("x", T), Arg("keep", T), owns=False,
       doc="x where keep, else float32's lowest value (a softmax then ignores it)")
def mask_fill(b, x, keep):
    return b.op("mask_fill", x, keep)


@layer("tail", 2, Arg("x", T), Arg("like", T), Arg("axis", "int", 1), Arg("like_axis", "int", 1),
       owns=False, doc="the last dim(like, like_axis) entries of x along axis")
def tail(b, x, like, axis, like_axis):
    for arg, t, ax in (("axis", x, axis), ("like_axis", like, like_axis)):
        if not -t.type.rank <= ax < t.type.rank:
            b.fail("E0201", f"`{arg}` = {ax} is out of range for {t.type}", f"rank {t.type.rank}",
                   span=b.at(arg))
    axis, like_axis = axis % x.type.rank, like_axis % like.type.rank
    if x.type.shape[axis] == like.type.shape[like_axis]:
        return x
    return b.op("tail", x, like, axis=axis, ref_axis=like_axis)


# ---------------------------------------------------------------- state: the KV cache
@layer("cache", 2, Arg("x", T), Arg("name", "value"), Arg("window", "int", 0), owns=False,
       doc="x [B, H, T, D] on a full pass; when decoding, past ++ x, with the result (its last "
           "window - 1 entries when windowed) kept for the next call")
def cache(b, x, name, window):
    if x.type.rank != 4 or not all(isinstance(d, int) for d in (x.type.shape[1],
                                                                 x.type.shape[3])):
        b.fail("E0201", f"`cache` needs [batch, heads, seq, dim] with static heads and dim, "
               f"got {x.type}", "here")
    kv = numel((x.type.shape[1], x.type.shape[3]))
    b.graph.meta["kv_per_token"] = b.graph.meta.get("kv_per_token", 0) + kv
    by_scope = b.graph.meta.setdefault("kv_by_scope", {})  # for `archc diff`
    by_scope[b.scope] = by_scope.get(b.scope, 0) + kv
    if not b.cache:
        return x
    seq = x.type.shape[2]
    if b.past_mask(seq) is None:
        b.fail("E0202", "incremental decoding needs an attention mask input covering past and "
               "new tokens", "this layer keeps a KV cache",
               help="declare `input attention_mask: int64[batch, seq]` and pass it as `mask`")
    counts = b.graph.meta.setdefault("cache_counts", {})
    n = counts.get(name, 0)
    counts[name] = n + 1
    b.graph.meta["cache_layers"] = max(b.graph.meta.get("cache_layers", 0), n + 1)
    past_dim = f"past_window{window}" if window else "past"
    past = b.graph.add_input(f"past_key_values.{n}.{name}", TensorType(
        "float32", (x.type.shape[0], x.type.shape[1], past_dim, x.type.shape[3])))
    full = b.op("concat", past, x, axis=2)
    present = b.op("last", full, axis=2, n=window - 1) if window else full
    b.graph.set_output(f"present.{n}.{name}", present)
    b.graph.meta["states"][past.name] = f"present.{n}.{name}"
    return full


@layer("encoder_cache", 2, Arg("k", T), Arg("v", T), owns=False,
       doc="cross-attention keys and values: with a cache, computed once by the encoder graph")
def encoder_cache(b, k, v):
    if b.cache:
        n = len(b.graph.meta.setdefault("cross_kv", []))
        b.graph.meta["cross_kv"].append((f"encoder_key_values.{n}", k, v))
    return (k, v)


# ---------------------------------------------------------------- positions inside attention
@layer("repeat_kv", 2, Arg("x", T), Arg("groups", "int"), owns=False,
       doc="[B, KV, S, D] -> [B, KV*groups, S, D], each kv head repeated groups times")
def repeat_kv(b, x, groups):
    if groups < 1:
        b.fail("E0200", f"`groups` = {groups} must be positive", "here", span=b.at("groups"))
    return x if groups == 1 else b.op("repeat_kv", x, groups=groups)


@layer("rotary", 3, Arg("x", T), Arg("pos", T), Arg("rope", "rope"), owns=False,
       doc="rotate x [B, H, T, D] by positions pos with a `rope(...)` config")
def rotary(b, x, pos, rope: Rope):
    if x.type.rank != 4:
        b.fail("E0201", f"`rotary` needs x [batch, heads, seq, head_dim], got {x.type}", "here",
               span=b.at("x"))
    hd = b.dim(x)
    rot = rope_dims(rope, hd)
    if rot % 2 or not 0 < rot <= hd:
        b.fail("E0200", f"rotary dim {rot} must be even and within head_dim {hd}",
               f"gives {rot} rotary dims", span=b.at("rope"))
    if rope.scaling == "default":
        angles = b.op("rope_angles", pos, dim=rot, theta=rope.theta)
    else:
        angles = _scaled_angles(b, pos, rope, rot)
    out = b.op("rope", x, angles, interleaved=rope.interleaved)
    scale = attention_factor(rope)
    if scale == 1.0:
        return out
    if rot == hd:  # cos and sin scaled: the rotated dims scale
        return b.op("mul", out, b.const(scale))
    parts = (b.op("slice", out, axis=3, start=0, end=rot), b.op("slice", out, axis=3, start=rot,
                                                                 end=hd))
    return b.op("concat", b.op("mul", parts[0], b.const(scale)), parts[1], axis=3)


def _scaled_angles(b: LayerBuilder, pos: Node, rope: Rope, rot: int) -> Node:
    """pos [T] * inv_freq [rot/2] -> [T, rot/2]; dynamic and longrope frequencies depend on the
    current length L = max(pos) + 1 (past and new tokens), read at run time."""
    p = b.op("reshape", b.op("cast", pos, to="float32"), shape=(0,) * pos.type.rank + (1,))
    if rope.scaling not in ("dynamic", "longrope"):
        return b.op("mul", p, b.const(inv_freq(rope, rot)))
    if pos.type.rank != 1:
        b.fail("E0200", f"`{rope.scaling}` rope needs positions [seq], got {pos.type}", "here")
    length = b.op("add", b.op("reduce_max", pos, axis=0, keepdims=True), b.const(1, np.int64))
    if rope.scaling == "longrope":
        counts = {len(rope.short_factor), len(rope.long_factor)}
        if counts != {rot // 2}:  # per-frequency factors, as many as the rotary dims' halves
            b.fail("E0200", f"longrope has {len(rope.short_factor)} short and "
                   f"{len(rope.long_factor)} long factors; {rot} rotary dims need {rot // 2} "
                   "of each", "here", span=b.at("rope"),
                   help="one factor per frequency: rotary dims = head dim x fraction")
        long = b.op("greater", length, b.const(rope.original_max, np.int64))
        freq = b.op("where", long, b.const(inv_freq(rope, rot, long=True)),
                    b.const(inv_freq(rope, rot)))
        return b.op("mul", p, freq)
    seq = b.op("maximum", b.op("cast", length, to="float32"), b.const(float(rope.max_pos)))
    stretch = b.op("sub", b.op("div", b.op("mul", b.const(rope.factor), seq),
                               b.const(float(rope.max_pos))), b.const(rope.factor - 1))
    theta = b.op("mul", b.const(rope.theta), b.op("pow", stretch, b.const(rot / (rot - 2))))
    exponent = np.arange(0, rot, 2, dtype=np.int64).astype(np.float32) / np.float32(rot)
    freq = b.op("div", b.const(1.0), b.op("pow", theta, b.const(exponent)))
    return b.op("mul", p, freq)


def rope_dims(rope: Rope, head_dim: int) -> int:
    return rope.dim or int(head_dim * rope.fraction)


@layer("rope_dims", 2, Arg("rope", "rope"), Arg("head_dim", "int"), owns=False,
       doc="how many of head_dim dims a rope config rotates")
def rope_dims_fn(b, rope, head_dim):
    return rope_dims(rope, head_dim)


@layer("relative_buckets", 5, Arg("qpos", T), Arg("kpos", T), Arg("buckets", "int", 32),
       Arg("max_distance", "int", 128), Arg("bidirectional", "bool", True), owns=False,
       doc="T5's bucket of each relative position key - query: [Tq, Tk] int64")
def relative_buckets(b, qpos, kpos, buckets, max_distance, bidirectional):
    exact = (buckets // 2 if bidirectional else buckets) // 2  # distances bucketed one by one
    if exact < 1:
        b.fail("E0200", f"`buckets` = {buckets} is too few: relative buckets need at least "
               f"{4 if bidirectional else 2}{' when bidirectional' if bidirectional else ''}",
               "here", span=b.at("buckets"))
    if max_distance <= exact:
        b.fail("E0200", f"`max_distance` = {max_distance} must be above the {exact} distances "
               f"that {buckets} buckets keep exact", "here", span=b.at("max_distance"))
    return b.op("relative_buckets", qpos, kpos, num_buckets=buckets, max_distance=max_distance,
                bidirectional=bidirectional)


@layer("alibi_slopes", 1, Arg("heads", "int"), owns=False, doc="ALiBi's per-head slopes [heads]")
def alibi_slopes_fn(b, heads):
    from archc.ops.attention import alibi_slopes

    if not 1 <= heads <= MAX_HEADS:
        b.fail("E0200", f"`heads` = {heads} must be in 1..{MAX_HEADS}", "here",
               span=b.at("heads"))
    return b.const(alibi_slopes(heads))


@layer("moe_gates", 2, Arg("logits", T), Arg("k", "int"), owns=False,
       doc="softmax over experts, keep the top k, renormalise: [..., E] -> [..., E]")
def moe_gates(b, logits, k):
    experts = logits.type.shape[-1] if logits.type.rank else None
    if k < 1 or (isinstance(experts, int) and k > experts):
        b.fail("E0200", f"`k` = {k} must be in 1..{experts} (the experts in {logits.type})",
               "here", span=b.at("k"))
    return b.op("moe_gates", logits, k=k)


@layer("routed", 2, Arg("weights", "list"), Arg("top_k", "int"), owns=False,
       doc="mark expert weights [E, ...] as routed, top_k of E per token (for active counts)")
def routed(b, weights, top_k):
    if not weights or not all(isinstance(w, Node) and w.type.rank >= 1 for w in weights):
        b.fail("E0201", "`weights` must be a list of expert weights [experts, ...]",
               f"this is {describe(weights)}", span=b.at("weights"))
    experts = weights[0].type.shape[0]
    if any(w.type.shape[0] != experts for w in weights) or not (
            top_k >= 1 and (not isinstance(experts, int) or top_k <= experts)):
        b.fail("E0201", f"routed weights {', '.join(str(w.type) for w in weights)} with "
               f"`top_k` = {top_k}: needs one expert count E on axis 0 and 1 <= top_k <= E",
               "here")
    b.graph.meta.setdefault("moe", []).append(
        {"params": [w.name for w in weights], "experts": experts, "top_k": top_k})
    return weights


__all__ = ["ModuleRef", "rope_dims"]
