"""Norm fusions: RMSNorm and LayerNorm, then the residual add folded in.

    RMSNorm    x / sqrt(mean(x*x) + eps) * w                  -> fused_rms_norm(x, w) {eps}
    LayerNorm  xc = x - mean(x); xc / sqrt(mean(xc*xc) + eps) * w
                                                              -> fused_layer_norm(x, w) {eps}
               fused_layer_norm(x, w) + b                     -> fused_layer_norm(x, w, b)
    Skip       norm(a + b, ...)                               -> skip_*_norm(a, b, ...)

`mean` is `reduce_mean(.., axis=-1, keepdims=True)`; `x*x` may be `pow(x, 2)`, and `/ sqrt(v)`
may be `* rsqrt(v)`, each a named variant. archc's single ops `rms_norm` and `layer_norm` map to
the same fused ops. A skip norm computes (norm(a + b), a + b) in one pass: its sum output
replaces the `add`, which the residual stream reads on (onnxruntime's
`SkipSimplifiedLayerNormalization` / `SkipLayerNormalization`).

Order: the skip rules match the fused norms, so they fire in a later sweep than the norm rules.
"""

from __future__ import annotations

from archc.passes.fusions.common import close, float32, mean_last_keepdims, scalar, vector_of
from archc.passes.rewrite import Match, Rule, RuleSet


def _normed(op, x, eps, form: str, two=None):
    """x / sqrt(mean(x^2) + eps) in the spelling `form` names ("", "pow" or "rsqrt")."""
    sq = op.pow(x, two) if form == "pow" else op.mul(x, x)
    var = op.add(op.reduce_mean(sq, _name="mean"), eps)
    return op.mul(x, op.rsqrt(var)) if form == "rsqrt" else op.div(x, op.sqrt(var))


class _Norm(Rule):
    commute = True
    shared_ok = True  # two norms of one x share their statistics after CSE; each still fuses

    def check_norm(self, m: Match) -> Match:
        eps = scalar(m["eps"])
        if eps is None:
            return Match.fail(f"eps {m['eps']!r} is not a scalar float constant", m["eps"])
        if "two" in m and not close(scalar(m["two"]), 2.0):
            return Match.fail(f"{m['two']!r} is not the exponent 2", m["two"])
        return (mean_last_keepdims(m["mean"]) or float32(m["x"], m["w"])
                or vector_of(m["w"], m["x"], "scale") or m)


class RmsNorm(_Norm):
    """x / sqrt(mean(x*x) + eps) * w -> fused_rms_norm(x, w) {eps}"""

    consts = ("eps", "two")

    def __init__(self, form: str = ""):
        self.form = form
        self.name = "rms_norm" + (f"_{form}" if form else "")

    def pattern(self, op, x, w, eps, two):
        return op.mul(_normed(op, x, eps, self.form, two), w)

    def check(self, m):
        return self.check_norm(m)

    def rewrite(self, op, m):
        return op.fused_rms_norm(m["x"], m["w"], eps=scalar(m["eps"]))


class LayerNorm(_Norm):
    """(x - mean(x)) / sqrt(var + eps) * w -> fused_layer_norm(x, w) {eps}"""

    consts = ("eps", "two")

    def __init__(self, form: str = ""):
        self.form = form
        self.name = "layer_norm" + (f"_{form}" if form else "")

    def pattern(self, op, x, w, eps, two):
        xc = op.sub(x, op.reduce_mean(x, _name="mu"))
        return op.mul(_normed(op, xc, eps, self.form, two), w)

    def check(self, m):
        return mean_last_keepdims(m["mu"]) or self.check_norm(m)

    def rewrite(self, op, m):
        return op.fused_layer_norm(m["x"], m["w"], eps=scalar(m["eps"]))


class LayerNormBias(Rule):
    """fused_layer_norm(x, w) + b -> fused_layer_norm(x, w, b)"""

    name = "layer_norm_bias"
    commute = True

    def pattern(self, op, x, w, b):
        return op.add(op.fused_layer_norm(x, w, _name="norm"), b)

    def check(self, m):
        return float32(m["b"]) or vector_of(m["b"], m["x"], "bias") or m

    def rewrite(self, op, m):
        return op.fused_layer_norm(m["x"], m["w"], m["b"], eps=m["norm"].attrs["eps"])


class SingleOp(Rule):
    """archc's own `rms_norm` / `layer_norm` ops -> the fused ops (same maths)."""

    def __init__(self, op: str, target: str, arity: int):
        self.op, self.target, self.arity = op, target, arity
        self.name = f"{op}_op" + ("_bias" if arity == 3 else "")

    def pattern(self, op, x, w, b):
        return getattr(op, self.op)(*(x, w, b)[: self.arity])

    def check(self, m):
        return float32(m["x"]) or m

    def rewrite(self, op, m):
        inputs = [m[v] for v in ("x", "w", "b")[: self.arity]]
        return getattr(op, self.target)(*inputs, eps=float(m.root.attrs["eps"]))


class Skip(Rule):
    """norm(a + b, w[, beta]) -> t = skip_*_norm(a, b, w[, beta]); (t[0], t[1] for a + b)"""

    commute = True

    def __init__(self, norm: str, target: str, arity: int):
        self.norm, self.target, self.arity = norm, target, arity
        self.name = target + ("_bias" if arity == 3 else "")

    def pattern(self, op, a, b, w, beta):
        x = op.add(a, b, _out="sum")
        return getattr(op, self.norm)(*(x, w, beta)[: self.arity])

    def check(self, m):
        a, b = m["a"], m["b"]
        if a.type != b.type:
            return Match.fail(f"the residual add broadcasts ({a.type} + {b.type}); the skip "
                              "op needs equal shapes", m["sum"])
        if a.type.rank != 3:
            return Match.fail(f"the skip op needs [batch, seq, dim], the sum is {a.type}",
                              m["sum"])
        return float32(a) or m

    def rewrite(self, op, m):
        inputs = [m[v] for v in ("a", "b", "w", "beta")[: self.arity + 1]]
        t = getattr(op, self.target)(*inputs, eps=float(m.root.attrs["eps"]))
        return {"": op.tuple_get(t, index=0), "sum": op.tuple_get(t, index=1)}


# LayerNorm first: its tail is an RMSNorm of the centred x, which the RMSNorm rules would take
NORMS = RuleSet("norms", (
    LayerNorm(), LayerNorm("pow"), LayerNorm("rsqrt"), LayerNormBias(),
    RmsNorm(), RmsNorm("pow"), RmsNorm("rsqrt"),
    SingleOp("rms_norm", "fused_rms_norm", 2),
    SingleOp("layer_norm", "fused_layer_norm", 2), SingleOp("layer_norm", "fused_layer_norm", 3),
))
SKIPS = RuleSet("skip_norms", (
    Skip("fused_rms_norm", "skip_rms_norm", 2),
    Skip("fused_layer_norm", "skip_layer_norm", 2),
    Skip("fused_layer_norm", "skip_layer_norm", 3),
))
