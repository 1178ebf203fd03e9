"""Sparse experts: the dense mixture-of-experts form -> `moe_experts` (archc/ops/moe.py).

Every MoE block of the library (`moe`, `moe_ffn`/`switch_ffn`, `routed_glu_moe`, and so the
imported Mixtral, Qwen-MoE, DeepSeek and GPT-OSS specs) lowers to the same readable dense form:
x viewed as [B,T,1,1,d] goes through every expert's FFN at once by broadcasting over the
expert weights [E, in, out], and the gates [B,T,E] (zero off the top k) weight the results:

    x5 = reshape(x)                                   [B,T,1,1,d]
    y5 = FFN(x5) over the bank                        [B,T,E,1,out]
    y  = reduce_sum(reshape(y5) * reshape(gates), axis=2)          [B,T,E,out] * [B,T,E,1]

with FFN one of: act(x5 @ W1 (+ b1)) (* (x5 @ W3 (+ b3)))  @ W2 (+ b2), or GPT-OSS's clamped
SwiGLU (min / sigmoid / clip, see moe.py). The rule matches the weighted sum, then walks y5
back to x5 and rewrites the whole thing to `moe_experts(x, gates, W1, [W3], W2, biases...)`,
which runs each expert on its routed tokens only. That is exact whatever produced the gates
(softmax, sigmoid, grouped, capacity-limited): an off-route term is 0 * FFN_e(x) in the dense
sum. The rule does not fire, and says why, where the form differs: a reduction over another
axis, gates or weights that are not per expert [E, ...], a token-dependent weight, an
activation outside `moe.ACTS`, an intermediate used outside the FFN. Preconditions: types are
inferred; O1's constant folding has run (the biases' reshapes and the clamp constants).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from archc.ir.graph import Node
from archc.ops import moe  # registers `moe_experts` (archc/ops/__init__.py does not list it)
from archc.passes.fusions.common import close, float32, scalar
from archc.passes.rewrite import Match, MatchFailure, Pattern, Rule, RuleSet


@dataclass
class _Body:
    """The expert FFN found between x5 and y5."""

    x5: Node | None = None
    mats: list[Node] = field(default_factory=list)  # W1, [W3], W2
    biases: list[Node | None] = field(default_factory=list)  # matching, None where absent
    act: str = ""
    limit: float = 0.0
    alpha: float = 1.702
    nodes: list[Node] = field(default_factory=list)  # every op node of the FFN


def _clamped_swiglu(op, g, u, lim, alpha, one):  # GPT-OSS (`expert_glu_apply` with `limit`)
    gm = op.minimum(g, lim)
    return op.mul(op.mul(gm, op.sigmoid(op.mul(gm, alpha))), op.add(op.clip(u, _name="clip"), one))


CLAMPED = Pattern(_clamped_swiglu, consts=("lim", "alpha", "one"), commute=True)


def _affine(v: Node, body: _Body, n_exp: int) -> MatchFailure | tuple[Node, Node, Node | None]:
    """v = a @ W (+ bias) with W [E, in, out] and bias [E, 1, out]: (a, W, bias or None)."""
    bias = None
    if v.op == "add":
        mm = [i for i in v.inputs if i.kind == "op" and i.op == "matmul"]
        if len(mm) != 1:
            return Match.fail(f"{v!r} is not a per-expert projection plus a bias", v)
        bias = v.inputs[1] if v.inputs[0] is mm[0] else v.inputs[0]
        body.nodes.append(v)
        v = mm[0]
    if v.kind != "op" or v.op != "matmul":
        return Match.fail(f"{v!r} is `{v.op}`, the expert FFN wants a `matmul`", v)
    a, w = v.inputs
    if w.type.rank != 3 or w.type.shape[0] != n_exp:
        return Match.fail(f"the expert weight {w!r} is {w.type}, not [{n_exp}, in, out]", w)
    if bias is not None and bias.type.shape != (n_exp, 1, w.type.shape[-1]):
        return Match.fail(f"the expert bias {bias!r} is {bias.type}, not "
                          f"[{n_exp}, 1, {w.type.shape[-1]}]", bias)
    body.nodes.append(v)
    return a, w, bias


def _input_side(v: Node, body: _Body, n_exp: int) -> MatchFailure | None:
    """v = x5 @ W (+ b): record W and b; every input projection must read the same x5."""
    got = _affine(v, body, n_exp)
    if isinstance(got, MatchFailure):
        return got
    a, w, bias = got
    if body.x5 is not None and a is not body.x5:
        return Match.fail(f"the expert projections read {body.x5!r} and {a!r}", a)
    body.x5 = a
    body.mats.append(w)
    body.biases.append(bias)
    return None


def _act(v: Node) -> str | None:
    return moe.act_name(v.op, v.attrs) if v.kind == "op" and len(v.inputs) == 1 else None


def _hidden(h: Node, body: _Body, n_exp: int) -> MatchFailure | None:
    """h = act(g) * u, the clamped SwiGLU of g and u, or act(g) (no W3)."""
    if h.kind == "op" and h.op == "mul":
        clamped = CLAMPED.match(h)
        if isinstance(clamped, Match):
            return _clamped(clamped, body, n_exp)
        sides = sorted(h.inputs, key=lambda i: _act(i) is None)  # the activation first
        if _act(sides[0]) is None or _act(sides[1]) is not None:
            return Match.fail(f"{h!r} is not act(x W1) * (x W3) with act one of "
                              f"{', '.join(moe.ACTS)}", h)
        body.act = _act(sides[0])
        body.nodes += [h, sides[0]]
        return _input_side(sides[0].inputs[0], body, n_exp) or \
            _input_side(sides[1], body, n_exp)
    if _act(h) is None:
        return Match.fail(f"{h!r} (`{h.op}`) is not an activation of {', '.join(moe.ACTS)}", h)
    body.act = _act(h)
    body.nodes.append(h)
    return _input_side(h.inputs[0], body, n_exp)


def _clamped(m: Match, body: _Body, n_exp: int) -> MatchFailure | None:
    lim, alpha, clip = scalar(m["lim"]), scalar(m["alpha"]), m["clip"]
    if lim is None or lim <= 0 or alpha is None or not close(scalar(m["one"]), 1.0):
        return Match.fail(f"{m.root!r} is not a clamped SwiGLU (limit {lim}, alpha {alpha})",
                          m.root)
    if not (close(clip.attrs.get("lo"), -lim) and close(clip.attrs.get("hi"), lim)):
        return Match.fail(f"{clip!r} clips to {clip.attrs}, not +-{lim:g}", clip)
    body.act, body.limit, body.alpha = "silu", lim, alpha
    body.nodes += m.nodes
    return _input_side(m["g"], body, n_exp) or _input_side(m["u"], body, n_exp)


def _body(y5: Node, n_exp: int) -> _Body | MatchFailure:
    body = _Body()
    down = _affine(y5, body, n_exp) if y5.kind == "op" else \
        Match.fail(f"{y5!r} is a {y5.kind}, not an expert FFN", y5)
    if isinstance(down, MatchFailure):
        return down
    h, w2, b2 = down
    fail = _hidden(h, body, n_exp) if h.kind == "op" else \
        Match.fail(f"{h!r} is a {h.kind}, not an activation", h)
    if fail:
        return fail
    body.mats.append(w2)
    body.biases.append(b2)
    if any(b is None for b in body.biases) and any(b is not None for b in body.biases):
        return Match.fail("some expert projections have a bias and some do not", y5)
    x5 = body.x5
    if not (x5.kind == "op" and x5.op == "reshape"):
        return Match.fail(f"the experts read {x5!r}, not the tokens viewed [B,T,1,1,d]", x5)
    body.nodes.append(x5)
    return body


class SparseExperts(Rule):
    """sum_e reshape(FFN_e(x5)) * reshape(gates) over the expert axis -> moe_experts."""

    name = "moe_experts"

    def pattern(self, op, a, b):  # the operands in either order (told apart by rank below)
        return op.reduce_sum(op.mul(op.reshape(a, _name="ra"), op.reshape(b, _name="rb")))

    def check(self, m):
        y4, y5, g4, gates = m["ra"], m["a"], m["rb"], m["b"]
        if y5.type.rank < gates.type.rank:  # `gates * y` rather than `y * gates`
            y4, y5, g4, gates = g4, gates, y4, y5
        m.bindings["gates"] = gates
        if m.root.attrs.get("axis") not in (2, -2):
            return Match.fail(f"{m.root!r} sums axis {m.root.attrs.get('axis')}, not the "
                              "expert axis 2", m.root)
        if m.root.attrs.get("keepdims"):
            return Match.fail(f"{m.root!r} keeps the expert axis (keepdims is true)", m.root)
        if gates.type.rank != 3 or not isinstance(gates.type.shape[2], int):
            return Match.fail(f"the gates {gates!r} are {gates.type}, not [B, T, E]", gates)
        b, t, n_exp = gates.type.shape
        if g4.type.shape != (b, t, n_exp, 1) or y4.type.rank != 4 or \
                y4.type.shape[:3] != (b, t, n_exp) or y5.type.shape != (
                b, t, n_exp, 1, y4.type.shape[3]):
            return Match.fail(f"{y4!r} {y4.type} * {g4!r} {g4.type} is not experts' outputs "
                              f"[{b}, {t}, {n_exp}, d] weighted by gates [.., {n_exp}, 1]", y4)
        body = _body(y5, n_exp)
        if isinstance(body, MatchFailure):
            return body
        x5, x = body.x5, body.x5.inputs[0]
        if x.type.rank != 3 or x5.type.shape != (b, t, 1, 1, x.type.shape[-1]):
            return Match.fail(f"the experts read {x5!r} {x5.type}, not {x!r} {x.type} viewed "
                              f"[{b}, {t}, 1, 1, d]", x5)
        static = all(isinstance(s, int) for w in body.mats for s in w.type.shape)
        if not static:
            return Match.fail(f"the expert weights {', '.join(map(repr, body.mats))} need "
                              "static shapes", body.mats[0])
        return float32(x, gates, *body.mats, *filter(None, body.biases)) or self._adopt(m, body)

    @staticmethod
    def _adopt(m: Match, body: _Body) -> Match:
        """Make the FFN nodes part of the match: the engine then refuses a match whose
        intermediates have readers outside it (fusing would save nothing) and erases them
        after the rewrite. The view x5 stays out: shared experts read the same view after
        CSE, and DCE drops it when nothing does."""
        have = {n.id for n in m.nodes}
        for n in body.nodes:
            if n.id not in have and n is not body.x5:
                m.nodes.append(n)
                have.add(n.id)
        m.body = body  # type: ignore[attr-defined]  (what `rewrite` emits)
        return m

    def rewrite(self, op, m):
        body: _Body = m.body
        x, gates = body.x5.inputs[0], m["gates"]
        biases = []
        for bias in body.biases if body.biases[0] is not None else ():
            e, _, n = bias.type.shape  # [E, 1, n] -> [E, n]
            flat = bias.inputs[0] if bias.kind == "op" and bias.op == "reshape" and \
                bias.inputs[0].type.shape == (e, n) else op.reshape(bias, shape=(e, n))
            biases.append(flat)
        attrs = {"act": body.act, "gated": len(body.mats) == 3, "bias": bool(biases)}
        if body.limit > 0:
            attrs.update(limit=body.limit, alpha=body.alpha)
        return op.moe_experts(x, gates, *body.mats, *biases, **attrs)


EXPERTS = RuleSet("experts", (SparseExperts(),))
