"""GELU fusions, with the bias of the matmul before it folded in.

    gelu(x + b) {approximate}                     -> fused_gelu(x, b)   (BiasGelu / FastGelu)
    gelu(x) {approximate}                         -> fused_gelu(x)      (Gelu / FastGelu)
    x * 0.5 * (1 + erf(x / sqrt(2)))              -> fused_gelu(x) {approximate="none"}
    x * 0.5 * (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
                                                  -> fused_gelu(x) {approximate="tanh"}

`b` must be a [D] vector over x's last dim (a projection's bias), as the fused kernels
broadcast it. The spelled-out forms are those `gelu`'s own ONNX lowering writes (any operand
order of the commutative ops).
"""

from __future__ import annotations

import numpy as np

from archc.passes.fusions.common import close, float32, scalar, vector_of
from archc.passes.rewrite import Match, MatchFailure, Rule, RuleSet


class BiasGelu(Rule):
    name = "bias_gelu"
    commute = True

    def pattern(self, op, x, b):
        return op.gelu(op.add(x, b))

    def check(self, m):
        if m["x"].type.rank < 2:
            return Match.fail(f"{m['x']!r} is {m['x'].type}, not a batch of rows", m["x"])
        return float32(m["x"], m["b"]) or vector_of(m["b"], m["x"], "bias") or m

    def rewrite(self, op, m):
        return op.fused_gelu(m["x"], m["b"], approximate=m.root.attrs.get("approximate", "none"))


class Gelu(Rule):
    name = "gelu"

    def pattern(self, op, x):
        return op.gelu(x)

    def check(self, m):
        return float32(m["x"]) or not_scalar(m) or m

    def rewrite(self, op, m):
        return op.fused_gelu(m["x"], approximate=m.root.attrs.get("approximate", "none"))


def not_scalar(m: Match) -> MatchFailure | None:
    """onnxruntime's Gelu and FastGelu refuse a rank-0 input."""
    if m["x"].type.rank == 0:
        return Match.fail(f"{m['x']!r} is a scalar: Gelu/FastGelu need rank >= 1", m["x"])
    return None


def _consts_are(m: Match, **want: float) -> Match:
    for name, value in want.items():
        if not close(scalar(m[name]), value):
            return Match.fail(f"{m[name]!r} is not the constant {value:.6g} of GELU", m[name])
    return float32(m["x"]) or not_scalar(m) or m


class GeluErf(Rule):
    name = "gelu_erf_spelled"
    commute = True
    consts = ("half", "root2", "one")

    def pattern(self, op, x, half, root2, one):
        return op.mul(op.mul(x, half), op.add(op.erf(op.div(x, root2)), one))

    def check(self, m):
        return _consts_are(m, half=0.5, root2=float(np.sqrt(2)), one=1.0)

    def rewrite(self, op, m):
        return op.fused_gelu(m["x"], approximate="none")


class GeluTanh(Rule):
    name = "gelu_tanh_spelled"
    commute = True
    consts = ("half", "c", "k", "one")

    def pattern(self, op, x, half, c, k, one):
        cube = op.mul(op.mul(x, x), x)
        inner = op.mul(op.add(x, op.mul(cube, c)), k)
        return op.mul(op.mul(x, half), op.add(op.tanh(inner), one))

    def check(self, m):
        return _consts_are(m, half=0.5, c=0.044715, k=float(np.sqrt(2 / np.pi)), one=1.0)

    def rewrite(self, op, m):
        return op.fused_gelu(m["x"], approximate="tanh")


ACTIVATIONS = RuleSet("activations", (BiasGelu(), Gelu(), GeluErf(), GeluTanh()))
