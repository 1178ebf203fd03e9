"""Attention fusion: the scaled-dot-product core -> one `sdpa` op.

    matmul(softmax(s, axis=-1), V)                              rule `sdpa`
    matmul(softmax(mask_fill(s, keep), axis=-1), V)             rule `sdpa_masked`
    matmul(softmax(where(keep, s, %lowest), axis=-1), V)        rule `sdpa_where`

and the scores s are peeled from the softmax back, each step optional, in the order `attend`
writes them (archc/lower/attention.py and stdlib/attention.arch):

    add(s, bias)                    an additive position bias (T5, ALiBi)
    mul(tanh(div(s, %cap)), %cap)   softcap (Gemma 2)
    mul(s, %scale)                  the score scale
    matmul(q, transpose(K, perm=(0, 1, 3, 2)))   K = k or repeat_kv(k, groups); V likewise

    -> sdpa(q, k, v, where(keep, bias or 0, float32 lowest)) {scale, softcap, causal, window}
       (no bias at all when keep is just the causal mask: the kernel applies `causal`)

The keep mask becomes an additive bias (one node per mask after CSE, shared by the layers).
Adding float32's lowest to a score rounds to float32's lowest, which is what `mask_fill`
writes, so the numbers are unchanged, fully masked rows included (they stay uniform). A
`where` fill above -1e30 (BERT's -10000) is not absorbed that way, and the rule says so.

When keep is exactly causal_mask & padding_mask(M) over one sequence (or the cached positions)
and nothing else is added, M rides along as the op's last input: the lowering uses it to run
GroupQueryAttention with lengths instead of the bias when M is right-padded or all ones
(archc/ops/sdpa_past.py, "Fast paths").

`causal` and `window` record what the mask proves: when keep is `causal_mask(qpos, kpos)` (or
an `and` of one with anything) and both positions count 0..T-1 over the same dims, no query
sees a later key, and with `window = w` none sees a key w or more places back. Kernels use
that to skip work (GroupQueryAttention's causal and local_window_size).

Over a KV cache (`lower(..., cache=True)`), rules `sdpa_past` / `sdpa_past_where` go first:
when K and V are concat(past_key_values.N.*, new, axis=2) of an unbounded cache and the mask is
causal over the cached positions (query i = token past + i), the core and both concats become
one `sdpa_past` (archc/ops/sdpa_past.py: GroupQueryAttention with past_key/past_value ->
present_key/present_value), which also produces the `present.N.*` outputs. A bounded cache (a
sliding window keeps the last window - 1 entries) stays with `sdpa`: GQA's present would keep
every key. What `sdpa_past` refuses falls to the rules above.
"""

from __future__ import annotations

import numpy as np

from archc.ir.graph import Node
from archc.ir.types import ShapeError, TensorType
from archc.ops import OPS
from archc.passes.fusions.common import float32, is_last_axis, scalar
from archc.passes.rewrite import Match, MatchFailure, Pattern, Rule, RuleSet

LOWEST = float(np.finfo(np.float32).min)

# The optional steps between the scores and the q k^T matmul, outermost first.
_STEPS = (
    ("bias", Pattern(lambda op, s, bias: op.add(s, bias), commute=True)),
    ("softcap", Pattern(lambda op, s, cap, cap2: op.mul(op.tanh(op.div(s, cap)), cap2),
                        consts=("cap", "cap2"), commute=True)),
    ("scale", Pattern(lambda op, s, scale: op.mul(s, scale), consts=("scale",), commute=True)),
)
_CORE = Pattern(lambda op, q, kt: op.matmul(q, op.transpose(kt, _name="t")))


def peel(s: Node, steps=_STEPS) -> tuple[dict[str, Match], Match] | MatchFailure:
    """Match the optional `steps` (in order) and then the core at `s`, backtracking over which
    steps are present and over operand orders; the furthest failure when nothing fits."""
    if not steps:
        return ({}, m) if isinstance(m := _CORE.match(s), Match) else m
    (name, pattern), rest = steps[0], steps[1:]
    best: MatchFailure | None = None
    for m in pattern.matches(s):
        if isinstance(m, Match):
            found = peel(m["s"], rest)
            if not isinstance(found, MatchFailure):
                return {**found[0], name: m}, found[1]
            m = found
            m.progress += 100
        best = m if best is None or best.progress < m.progress else best
    found = peel(s, rest)
    if isinstance(found, MatchFailure) and best is not None and best.progress > found.progress:
        return best
    return found


def _unrepeat(t: Node) -> tuple[Node, int]:
    """(k, groups) for repeat_kv(k, groups), else (t, 1)."""
    if t.kind == "op" and t.op == "repeat_kv":
        return t.inputs[0], int(t.attrs["groups"])
    return t, 1


def causal_window(keep: Node) -> tuple[bool, int]:
    """(True, window) when keep is (an `and` of) a causal mask over positions 0..T-1."""
    if keep.kind == "op" and keep.op == "logical_and":
        for leaf in keep.inputs:
            found = causal_window(leaf)
            if found[0]:
                return found
    if keep.kind == "op" and keep.op == "causal_mask":
        qpos, kpos = keep.inputs
        plain = all(p.kind == "op" and p.op == "positions" and not p.attrs.get("offset", 0)
                    for p in (qpos, kpos))
        if plain and qpos.type.shape == kpos.type.shape:
            return True, int(keep.attrs.get("window", 0))
    return False, 0


class Sdpa(Rule):
    commute = True

    def __init__(self, mask: str):
        self.mask = mask
        self.name = {"": "sdpa", "mask_fill": "sdpa_masked", "where": "sdpa_where"}[mask]
        self.consts = ("low",) if mask == "where" else ()

    def pattern(self, op, s, keep, low, v):
        if self.mask == "mask_fill":
            s = op.mask_fill(s, keep)
        elif self.mask == "where":
            s = op.where(keep, s, low)
        return op.matmul(op.softmax(s, _name="softmax"), v)

    def check(self, m: Match):
        if not is_last_axis(m["softmax"]):
            return Match.fail(f"softmax {m['softmax']!r} runs over axis "
                              f"{m['softmax'].attrs.get('axis')}, not the keys", m["softmax"])
        if self.mask == "where" and (scalar(m["low"]) is None or scalar(m["low"]) > -1e30):
            return Match.fail(f"the masked score {m['low']!r} is not effectively -inf "
                              "(<= -1e30): fully masked rows would change", m["low"])
        found = peel(m["s"])
        if isinstance(found, MatchFailure):
            return found
        steps, core = found
        for sub in (*steps.values(), core):
            m.nodes += sub.nodes
        m.bindings.update(q=core["q"], core=core.root, t=core["t"], **steps)
        return self._check_core(m, steps)

    def _check_core(self, m: Match, steps: dict[str, Match]):
        t = m["t"]
        if t.attrs.get("perm") != (0, 1, 3, 2):
            return Match.fail(f"{t!r} transposes by {t.attrs.get('perm')}, not (0, 1, 3, 2)", t)
        (k, gk), (v, gv) = _unrepeat(t.inputs[0]), _unrepeat(m["v"])
        if gk != gv:
            return Match.fail(f"k is repeated {gk}x and v {gv}x", m["v"])
        q = m["q"]
        if fail := float32(q, k, v):
            return fail
        cap = steps.get("softcap")
        if cap and (not scalar(cap["cap"]) or scalar(cap["cap"]) != scalar(cap["cap2"])):
            return Match.fail(f"softcap constants {cap['cap']!r}, {cap['cap2']!r} are not one "
                              "nonzero scalar", m.root)
        if "keep" in m and m["keep"].type.dtype != "bool":
            return Match.fail(f"the mask {m['keep']!r} is {m['keep'].type}, not bool", m["keep"])
        bias = steps["bias"]["bias"] if "bias" in steps else None
        try:
            OPS["sdpa"].infer(q.type, k.type, v.type, None if bias is None else bias.type,
                              scale=1.0)
        except ShapeError as e:
            return Match.fail(f"sdpa cannot take these shapes: {e}", m.root)
        m.bindings.update(k=k, v0=v)
        return m

    def rewrite(self, op, m):
        attrs, bias = self._attrs_bias(op, m)
        mask = self._key_mask(m) if bias is not None else None
        return op.sdpa(m["q"], m["k"], m["v0"], *([bias] if bias is not None else []),
                       *([mask] if mask is not None else []), **attrs)

    def _key_mask(self, m) -> Node | None:
        """M when the bias is where(causal_mask & padding_mask(M), 0, lowest) over positions
        0..T-1, T = len(q) = len(k) = M.shape[1] (no additive bias; a window is the op's own):
        a hint for the lowering, which runs GroupQueryAttention with lengths (and its
        local_window_size) when M is right-padded."""
        q, k = m["q"], m["k"]
        mask = _key_mask(m, lambda c: _op(c, "causal_mask") and causal_window(c)[0])
        ok = mask is not None and mask.type.shape[1] == k.type.shape[2] == q.type.shape[2]
        return mask if ok else None

    def _attrs_bias(self, op, m) -> tuple[dict, Node | None]:
        steps = {n: m[n] for n in ("bias", "softcap", "scale") if n in m}
        attrs = {"scale": scalar(steps["scale"]["scale"]) if "scale" in steps else 1.0}
        if "softcap" in steps:
            attrs["softcap"] = scalar(steps["softcap"]["cap"])
        bias = steps["bias"]["bias"] if "bias" in steps else None
        if self.mask:
            keep = m["keep"]
            causal, window = causal_window(keep)
            attrs.update({"causal": True, "window": window} if causal else {})
            if not window:
                attrs.pop("window", None)
            if not (causal and keep.op == "causal_mask" and bias is None):  # else: no bias
                zero = op.const(np.float32(0.0)) if bias is None else bias
                bias = op.where(keep, zero, op.const(np.float32(LOWEST)))
        return attrs, bias


def _op(n: Node, op: str, **attrs) -> bool:
    return n.kind == "op" and n.op == op and all(n.attrs.get(k) == v for k, v in attrs.items())


def _cached(cat: Node, what: str) -> MatchFailure | None:
    """cat = concat(past_key_values.N.*, new, axis=2) with an unbounded cache."""
    if not (_op(cat, "concat", axis=2) and len(cat.inputs) == 2
            and cat.inputs[0].kind == "input"):
        return Match.fail(f"the {what} {cat!r} are not a KV cache (concat of a past input and "
                          "the new ones on the sequence axis)", cat)
    past = cat.inputs[0].type.shape[2]
    if past != "past":
        return Match.fail(f"the {what} cache {cat.inputs[0]!r} is bounded ({past}): "
                          "GroupQueryAttention's present keeps every key", cat.inputs[0])
    return None


def _offset_causal(keep: Node, q: Node, cat: Node) -> bool:
    """keep is (an `and` of) causal_mask(qpos, kpos) where kpos = positions(mask) counts the
    past and new tokens (the cache's length) and qpos = positions(x) + (len(mask) - len(x)):
    query i is token P + i, which is GroupQueryAttention's causal with past."""
    if _op(keep, "logical_and"):
        return any(_offset_causal(leaf, q, cat) for leaf in keep.inputs)
    if not _op(keep, "causal_mask") or keep.attrs.get("window", 0):
        return False
    qpos, kpos = keep.inputs
    mask = kpos.inputs[0] if _op(kpos, "positions", axis=1) else None
    if mask is None or mask.type.shape[1] != cat.type.shape[2] or not _op(qpos, "add"):
        return False
    for pos, off in (qpos.inputs, qpos.inputs[::-1]):
        if (_op(pos, "positions") and _op(off, "sub") and pos.type.shape == (q.type.shape[2],)
                and _op(off.inputs[0], "dim_size", axis=1) and off.inputs[0].inputs[0] is mask
                and _op(off.inputs[1], "dim_size", axis=pos.attrs["axis"])
                and off.inputs[1].inputs[0] is pos.inputs[0]):
            return True
    return False


def _key_mask(m: Match, causal) -> Node | None:
    """M when the mask is logical_and(c, padding_mask(M)) (either order) with causal(c) and
    there is no additive bias step: the bias is then exactly where(c & M != 0, 0, lowest)."""
    keep = m["keep"] if "keep" in m and "bias" not in m else None
    if keep is None or not _op(keep, "logical_and") or len(keep.inputs) != 2:
        return None
    for c, pad in (keep.inputs, keep.inputs[::-1]):
        if _op(pad, "padding_mask") and causal(c):
            return pad.inputs[0]
    return None


class SdpaPast(Sdpa):
    """Attention over a KV cache -> `sdpa_past` (GroupQueryAttention with past and present):
    the keys and values are concat(past input, new) and the mask is causal over the cached
    positions. Runs before `sdpa_masked`/`sdpa_where`, which take what it refuses."""

    def __init__(self, mask: str):
        super().__init__(mask)
        self.name = {"mask_fill": "sdpa_past", "where": "sdpa_past_where"}[mask]

    def check(self, m: Match):
        m = super().check(m)
        if isinstance(m, MatchFailure):
            return m
        k, v = m["k"], m["v0"]
        if fail := _cached(k, "keys") or _cached(v, "values"):
            return fail
        if m["q"].type.shape[3] != v.type.shape[3]:
            return Match.fail(f"value head dim {v.type.shape[3]} differs from the query's "
                              f"{m['q'].type.shape[3]}: GroupQueryAttention takes one", v)
        if not _offset_causal(m["keep"], m["q"], k):
            return Match.fail(f"the mask {m['keep']!r} is not causal over the cached "
                              "positions (query i = token past + i)", m["keep"])
        (pk, kn), (pv, vn) = k.inputs, v.inputs
        try:
            OPS["sdpa_past"].infer(m["q"].type, kn.type, vn.type, pk.type, pv.type,
                                   TensorType("float32", m["keep"].type.shape), scale=1.0)
        except ShapeError as e:
            return Match.fail(f"sdpa_past cannot take these shapes: {e}", m.root)
        m.outs.update(present_k=k, present_v=v)
        return m

    def rewrite(self, op, m):
        attrs, bias = self._attrs_bias(op, m)
        attrs = {n: attrs[n] for n in ("scale", "softcap") if n in attrs}
        if bias is None:  # sdpa_past takes the whole mask as its bias
            bias = op.where(m["keep"], op.const(np.float32(0.0)), op.const(np.float32(LOWEST)))
        (pk, k), (pv, v) = m["present_k"].inputs, m["present_v"].inputs
        mask = _key_mask(m, lambda c: _offset_causal(c, m["q"], m["present_k"]))
        t = op.sdpa_past(m["q"], k, v, pk, pv, bias, *([mask] if mask is not None else []),
                         causal=True, **attrs)
        return {"": op.tuple_get(t, index=0),
                "present_k": op.kv_present(t, pk, k, index=1),
                "present_v": op.kv_present(t, pv, v, index=2)}


ATTENTION = RuleSet("attention", (SdpaPast("mask_fill"), SdpaPast("where"), Sdpa("mask_fill"),
                                  Sdpa("where"), Sdpa("")))
