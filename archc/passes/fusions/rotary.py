"""Rotary fusion: `rope` as archc lowers it (archc/lower/intrinsics.py `rotary`) -> one `rotary`
op, which lowers to ONNX RotaryEmbedding (archc/ops/rotary.py) instead of slices, muls and
concats.

    rope(x, angles) {interleaved=false}, 2R = D         rule `rotary_half` (Llama, NeoX)
    rope(x, angles) {interleaved=true},  2R = D         rule `rotary_interleaved` (GPT-J)
    rope(x, angles) {...},               2R < D         `rotary_half_partial`,
                                                        `rotary_interleaved_partial`
    -> rotary(x, angles) {interleaved}

and then the attention factor of YaRN and LongRoPE (cos and sin scaled by s), which `rotary`
writes after the rotation, folds into the fused op:

    mul(rotary(x, a), %s)                                      rule `rotary_scaled`
    concat(mul(slice(r, 0, 2R), %s), slice(r, 2R, D), axis=3)  rule `rotary_partial_scaled`
        with r = rotary(x, a)
    -> rotary(x, a) {scale = s}

The angles are taken as the graph computes them (angle = position * inv_freq, whatever the
schedule and wherever the positions start), so every rope scaling variant stays exact. A rope
whose angles broadcast over x (one angle row for every token, or one batch for all) does not
fuse: RotaryEmbedding wants one cos/sin row per token, and the rule says so.
"""

from __future__ import annotations

from archc.ir.types import ShapeError
from archc.ops import OPS
from archc.passes.fusions.common import scalar
from archc.passes.rewrite import Match, MatchFailure, Rule, RuleSet


def _rotated(m: Match, key: str) -> int:
    """2R: how many dims the matched rotary node rotates."""
    return 2 * m[key].inputs[1].type.shape[-1]


class Rotary(Rule):
    """rope(x, angles) -> rotary(x, angles), one rule per layout (halves or pairs) and extent
    (every dim, or the first 2R of D)."""

    def __init__(self, interleaved: bool, partial: bool):
        self.interleaved, self.partial = interleaved, partial
        self.name = (f"rotary_{'interleaved' if interleaved else 'half'}"
                     f"{'_partial' if partial else ''}")

    def pattern(self, op, x, angles):
        return op.rope(x, angles, interleaved=self.interleaved)

    def check(self, m: Match):
        x, ang = m["x"], m["angles"]
        try:
            OPS["rotary"].infer(x.type, ang.type, interleaved=self.interleaved)
        except ShapeError as e:
            return Match.fail(f"rotary cannot take {m.root!r}: {e}", m.root)
        if (2 * ang.type.shape[-1] < x.type.shape[3]) != self.partial:
            return Match.fail(f"{m.root!r} rotates {2 * ang.type.shape[-1]} of "
                              f"{x.type.shape[3]} dims", m.root)
        return m

    def rewrite(self, op, m):
        return op.rotary(m["x"], m["angles"], interleaved=self.interleaved)


def _scale(m: Match, name: str = "s") -> MatchFailure | None:
    s = scalar(m[name])
    if s is None or m[name].value.ndim != 0:
        return Match.fail(f"{m[name]!r} is not a float scalar: the attention factor scales "
                          "cos and sin alike", m[name])
    return None


class RotaryScaled(Rule):
    """mul(rotary(x, a), %s) -> rotary(x, a) {scale = s} when rotary rotates every dim."""

    name = "rotary_scaled"
    commute = True
    consts = ("s",)

    def pattern(self, op, x, angles, s):
        return op.mul(op.rotary(x, angles, _name="r"), s)

    def check(self, m: Match):
        if fail := _scale(m):
            return fail
        if _rotated(m, "r") != m["x"].type.shape[3]:
            return Match.fail(f"{m['r']!r} is partial: the scale would reach the unrotated "
                              "dims", m["r"])
        return m

    def rewrite(self, op, m):
        r = m["r"]
        return op.rotary(m["x"], m["angles"], interleaved=r.attrs.get("interleaved", False),
                         scale=r.attrs.get("scale", 1.0) * scalar(m["s"]))


class RotaryPartialScaled(Rule):
    """concat(mul(slice(r, 0, 2R), %s), slice(r, 2R, D)) with r = rotary(x, a) over 2R of D
    dims -> rotary(x, a) {scale = s}."""

    name = "rotary_partial_scaled"
    commute = True
    consts = ("s",)

    def pattern(self, op, x, angles, s):
        r = op.rotary(x, angles, _name="r")
        return op.concat(op.mul(op.slice(r, axis=3, _name="head"), s),
                         op.slice(r, axis=3, _name="tail"), axis=3)

    def check(self, m: Match):
        if fail := _scale(m):
            return fail
        r2, d = _rotated(m, "r"), m["x"].type.shape[3]
        head, tail = m["head"].attrs, m["tail"].attrs
        if (head["start"], head["end"], tail["start"], tail["end"]) != (0, r2, r2, d):
            return Match.fail(f"the slices {m['head']!r}, {m['tail']!r} do not split at the "
                              f"{r2} rotated dims of {d}", m["head"])
        return m

    rewrite = RotaryScaled.rewrite


ROTARY = RuleSet("rotary", (*(Rotary(i, p) for i in (False, True) for p in (False, True)),
                            RotaryScaled(), RotaryPartialScaled()))
