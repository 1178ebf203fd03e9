"""`moe_experts`: a bank of expert FFNs run only on the tokens routed to them.

    y[t] = sum_e gates[t, e] * FFN_e(x[t])        over the e with gates[t, e] != 0

The dense form a `.arch` MoE block lowers to runs every expert on every token and multiplies
the off-route outputs by a zero gate; this op skips them (gather -> expert -> scatter-add), so
a top-k-of-E layer does k/E of the FFN work. It is exact for any gates, whatever the router:
a zero gate contributes 0 * FFN_e(x) = 0 to the dense sum (for a finite FFN output), and the
tokens an expert does see go through the same float32 steps, in the same expert order (only
the matmuls may round differently: one product over the gathered rows, not one per token).
An expert that no token picks gathers zero rows and adds nothing. The target of the `experts`
fusion rules (archc/passes/fusions/experts.py).

The FFN, one expert e (weights stored [E, in, out], biases [E, out]):
- gated (`gated=True`):  h = act(x W1_e + b1_e) * (x W3_e + b3_e); FFN = h W2_e + b2_e
- plain (`gated=False`): h = act(x W1_e + b1_e);                     FFN = h W2_e + b2_e
- `limit` > 0, gated: GPT-OSS's clamped SwiGLU, g = min(g, limit),
  h = g * sigmoid(alpha g) * (clip(u, -limit, limit) + 1)
Inputs: x [..., d], gates [..., E], W1, [W3], W2, then with `bias` b1, [b3], b2.

ONNX: unrolled over the E experts (E is static): NonZero of the expert's gate column picks the
rows, Gather -> MatMul chain -> times the gate -> ScatterND(reduction="add") into the output.
onnxruntime's com.microsoft `MoE` kernel is not used: it routes by its own softmax + top-k of
`router_probs` with a fixed k, so it reproduces only renormalised softmax routers without ties,
not a sigmoid router, a scaled or capacity-limited one, or `moe_gates`' tie rule (it keeps
every expert equal to the k-th). Nor is it faster on CPU where it does apply:
benchmarks/moe_sparse.py times both on one top-2-of-8 layer (T=512, 2 threads), and the two
landed within noise of each other on a shared machine (`MoE` ran at 0.5x to 1.3x the
chain's speed across runs).
"""

from __future__ import annotations

import numpy as np

from archc.ir.types import ShapeError, TensorType
from archc.ops.registry import OPS, register_op

# activation name -> (primitive op, its attributes): the `act` of an expert
ACTS: dict[str, tuple[str, dict]] = {
    "relu": ("relu", {}), "silu": ("silu", {}), "sigmoid": ("sigmoid", {}),
    "tanh": ("tanh", {}), "softplus": ("softplus", {}),
    "gelu": ("gelu", {"approximate": "none"}), "gelu_tanh": ("gelu", {"approximate": "tanh"}),
}


def act_name(op: str, attrs: dict) -> str | None:
    """The `ACTS` name of a primitive activation node (op and attributes), else None."""
    if op in ("gelu", "fused_gelu"):  # fused_gelu: the activations rule set may run first
        return "gelu_tanh" if attrs.get("approximate", "none") == "tanh" else "gelu"
    return op if op in ACTS and not attrs else None


def _unpack(ws: tuple, gated: bool, bias: bool) -> tuple:
    """(W1, W3, W2, b1, b3, b2), None where absent, from the inputs after x and gates."""
    n = 3 if gated else 2
    mats, vecs = list(ws[:n]), list(ws[n:]) if bias else [None] * n
    if not gated:
        mats.insert(1, None)
        vecs.insert(1, None)
    return (*mats, *vecs)


def _infer(x: TensorType, gates: TensorType, *ws: TensorType, act: str, gated: bool,
           bias: bool, limit: float = 0.0, alpha: float = 1.702) -> TensorType:
    want = (3 if gated else 2) * (2 if bias else 1)
    if len(ws) != want:
        raise ShapeError(f"moe_experts (gated={gated}, bias={bias}) takes {want} weights, "
                         f"got {len(ws)}")
    if act not in ACTS:
        raise ShapeError(f"moe_experts act must be one of {', '.join(ACTS)}, got {act!r}")
    for t in (x, gates, *ws):
        if t.dtype != "float32":
            raise ShapeError(f"moe_experts takes float32, got {t}")
    if x.rank < 1 or gates.shape[:-1] != x.shape[:-1]:
        raise ShapeError(f"gates {gates} do not cover the tokens of {x}")
    e, d = gates.shape[-1], x.shape[-1]
    if not isinstance(e, int):
        raise ShapeError(f"the expert count of {gates} must be static")
    w1, w3, w2, b1, b3, b2 = _unpack(ws, gated, bias)
    hidden, out = w1.shape[-1], w2.shape[-1]
    for w, shape in ((w1, (e, d, hidden)), (w3, (e, d, hidden)), (w2, (e, hidden, out)),
                     (b1, (e, hidden)), (b3, (e, hidden)), (b2, (e, out))):
        if w is not None and w.shape != shape:
            raise ShapeError(f"expert weight {w} should be [{', '.join(map(str, shape))}]")
    return TensorType("float32", (*x.shape[:-1], out))


def _ffn(x, e, w1, w3, w2, b1, b3, b2, act, limit, alpha):  # [n, d] -> [n, out], expert e
    op, attrs = ACTS[act]
    g = x @ w1[e] if b1 is None else x @ w1[e] + b1[e]
    if w3 is None:
        h = OPS[op].numpy(g, **attrs)
    else:
        u = x @ w3[e] if b3 is None else x @ w3[e] + b3[e]
        if limit > 0:  # the clamped SwiGLU, in the dense form's order of operations
            g = np.minimum(g, np.float32(limit))
            gs = g * OPS["sigmoid"].numpy(g * np.float32(alpha))
            h = gs * (np.clip(u, np.float32(-limit), np.float32(limit)) + np.float32(1))
        else:
            h = OPS[op].numpy(g, **attrs) * u
    return h @ w2[e] if b2 is None else h @ w2[e] + b2[e]


def moe_experts(x, gates, *ws, act: str, gated: bool, bias: bool, limit: float = 0.0,
                alpha: float = 1.702):  # [..., d], [..., E], weights -> [..., out]
    w1, w3, w2, b1, b3, b2 = _unpack(ws, gated, bias)
    rows_x = x.reshape(-1, x.shape[-1])
    rows_g = gates.reshape(-1, gates.shape[-1])
    out = np.zeros((rows_x.shape[0], w2.shape[-1]), np.float32)
    for e in range(rows_g.shape[1]):
        rows = np.flatnonzero(rows_g[:, e])  # the tokens routed to expert e
        if rows.size:
            y = _ffn(rows_x[rows], e, w1, w3, w2, b1, b3, b2, act, limit, alpha)
            out[rows] += rows_g[rows, e:e + 1] * y
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _onnx(b, x, gates, *ws, act: str, gated: bool, bias: bool, limit: float = 0.0,
          alpha: float = 1.702) -> str:
    w1, w3, w2, b1, b3, b2 = _unpack(ws, gated, bias)
    ints = lambda *v: b.const(np.array(v, np.int64))  # noqa: E731
    n_exp, d, out = b.types[gates].shape[-1], b.types[x].shape[-1], b.types[w2].shape[-1]
    rows_x = b.op("Reshape", x, ints(-1, d))
    rows_g = b.op("Reshape", gates, ints(-1, n_exp))
    size = b.op("Concat", b.op("Shape", rows_x, start=0, end=1), ints(out), axis=0)
    acc = b.op("ConstantOfShape", size, value=_zero_tensor())
    for e in range(n_exp):
        ge = b.op("Gather", rows_g, b.const(np.array(e, np.int64)), axis=1)       # [N]
        rows = b.op("Squeeze", b.op("NonZero", ge), ints(0))                       # [n]
        y = _ffn_onnx(b, b.op("Gather", rows_x, rows, axis=0), e, (w1, w3, w2, b1, b3, b2),
                      act, limit, alpha)
        y = b.op("Mul", y, b.op("Unsqueeze", b.op("Gather", ge, rows, axis=0), ints(1)))
        acc = b.op("ScatterND", acc, b.op("Unsqueeze", rows, ints(1)), y, reduction="add")
    lead = b.op("Shape", x, start=0, end=b.types[x].rank - 1)
    return b.op("Reshape", acc, b.op("Concat", lead, ints(out), axis=0))


def _zero_tensor():
    from onnx import numpy_helper

    return numpy_helper.from_array(np.zeros(1, np.float32))


def _ffn_onnx(b, xe, e, weights, act, limit, alpha) -> str:
    w1, w3, w2, b1, b3, b2 = weights
    idx = b.const(np.array(e, np.int64))

    def affine(w, bias_, v):  # v @ w[e] (+ bias[e]); the slices fold into constants
        y = b.op("MatMul", v, b.op("Gather", w, idx, axis=0))
        return y if bias_ is None else b.op("Add", y, b.op("Gather", bias_, idx, axis=0))

    op, attrs = ACTS[act]
    if w3 is None:
        h = OPS[op].onnx(b, affine(w1, b1, xe), **attrs)
    else:
        g, u = affine(w1, b1, xe), affine(w3, b3, xe)
        if limit > 0:
            g = b.op("Min", g, b.scalar(limit))
            gs = b.op("Mul", g, b.op("Sigmoid", b.op("Mul", g, b.scalar(alpha))))
            clipped = b.op("Clip", u, b.scalar(-limit), b.scalar(limit))
            h = b.op("Mul", gs, b.op("Add", clipped, b.scalar(1.0)))
        else:
            h = b.op("Mul", OPS[op].onnx(b, g, **attrs), u)
    return affine(w2, b2, h)


register_op("moe_experts", (4, 8), {"act": True, "gated": True, "bias": True, "limit": False,
                                    "alpha": False},
            infer=_infer, numpy=moe_experts, onnx=_onnx)
