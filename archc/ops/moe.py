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

`moe_experts_nbits`, at the end of this file, is the same op over weight-only quantized banks
(archc/quantize.py): each expert's matmuls become MatMulNBits, the routing stays the same.
"""

from __future__ import annotations

import numpy as np

from archc.ir.types import ShapeError, TensorType
from archc.ops.quant import infer_matmul_nbits, matmul_nbits
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


def _unpack(ws: tuple, gated: bool, bias: bool, per: int = 1) -> tuple:
    """(W1, W3, W2, b1, b3, b2), None where absent, from the inputs after x and gates; with
    `per` > 1 each W is the tuple of its `per` inputs (a quantized weight's parts)."""
    n = 3 if gated else 2
    mats = [ws[i * per] if per == 1 else tuple(ws[i * per:(i + 1) * per]) for i in range(n)]
    vecs = list(ws[n * per:]) if bias else [None] * n
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


def _ffn(x, affine, gated: bool, act: str, limit: float, alpha: float):
    """One expert's FFN on its rows x [n, d] -> [n, out]; affine(v, j) = v @ W_j (+ b_j), j
    0, 1, 2 for W1, W3, W2 of that expert."""
    op, attrs = ACTS[act]
    g = affine(x, 0)
    if not gated:
        h = OPS[op].numpy(g, **attrs)
    else:
        u = affine(x, 1)
        if limit > 0:  # the clamped SwiGLU, in the dense form's order of operations
            g = np.minimum(g, np.float32(limit))
            gs = g * OPS["sigmoid"].numpy(g * np.float32(alpha))
            h = gs * (np.clip(u, np.float32(-limit), np.float32(limit)) + np.float32(1))
        else:
            h = OPS[op].numpy(g, **attrs) * u
    return affine(h, 2)


def _route(x, gates, out_dim: int, expert) -> np.ndarray:
    """sum_e gates[t, e] * expert(e, x[rows routed to e]) over the e each token picks."""
    rows_x = x.reshape(-1, x.shape[-1])
    rows_g = gates.reshape(-1, gates.shape[-1])
    out = np.zeros((rows_x.shape[0], out_dim), np.float32)
    for e in range(rows_g.shape[1]):
        rows = np.flatnonzero(rows_g[:, e])  # the tokens routed to expert e
        if rows.size:
            out[rows] += rows_g[rows, e:e + 1] * expert(e, rows_x[rows])
    return out.reshape(*x.shape[:-1], out_dim)


def moe_experts(x, gates, *ws, act: str, gated: bool, bias: bool, limit: float = 0.0,
                alpha: float = 1.702):  # [..., d], [..., E], weights -> [..., out]
    w1, w3, w2, b1, b3, b2 = _unpack(ws, gated, bias)
    mats, vecs = (w1, w3, w2), (b1, b3, b2)

    def expert(e, rows):
        def affine(v, j):
            return v @ mats[j][e] if vecs[j] is None else v @ mats[j][e] + vecs[j][e]
        return _ffn(rows, affine, gated, act, limit, alpha)
    return _route(x, gates, w2.shape[-1], expert)


def _onnx(b, x, gates, *ws, act: str, gated: bool, bias: bool, limit: float = 0.0,
          alpha: float = 1.702) -> str:
    w1, w3, w2, b1, b3, b2 = _unpack(ws, gated, bias)
    mats, vecs = (w1, w3, w2), (b1, b3, b2)

    def affine(v, j, idx):  # v @ W_j[e] (+ b_j[e]); the slices fold into constants
        y = b.op("MatMul", v, b.op("Gather", mats[j], idx, axis=0))
        return y if vecs[j] is None else b.op("Add", y, b.op("Gather", vecs[j], idx, axis=0))
    return _route_onnx(b, x, gates, b.types[w2].shape[-1],
                       lambda xe, idx: _ffn_onnx(b, xe, idx, affine, gated, act, limit, alpha))


def _route_onnx(b, x, gates, out: int, expert) -> str:
    """Unrolled over the experts: expert(rows of x routed to e, e as an int64 constant)."""
    ints = lambda *v: b.const(np.array(v, np.int64))  # noqa: E731
    n_exp, d = b.types[gates].shape[-1], b.types[x].shape[-1]
    rows_x = b.op("Reshape", x, ints(-1, d))
    rows_g = b.op("Reshape", gates, ints(-1, n_exp))
    size = b.op("Concat", b.op("Shape", rows_x, start=0, end=1), ints(out), axis=0)
    acc = b.op("ConstantOfShape", size, value=_zero_tensor())
    for e in range(n_exp):
        idx = b.const(np.array(e, np.int64))
        ge = b.op("Gather", rows_g, idx, axis=1)                                   # [N]
        rows = b.op("Squeeze", b.op("NonZero", ge), ints(0))                       # [n]
        y = expert(b.op("Gather", rows_x, rows, axis=0), idx)
        y = b.op("Mul", y, b.op("Unsqueeze", b.op("Gather", ge, rows, axis=0), ints(1)))
        acc = b.op("ScatterND", acc, b.op("Unsqueeze", rows, ints(1)), y, reduction="add")
    lead = b.op("Shape", x, start=0, end=b.types[x].rank - 1)
    return b.op("Reshape", acc, b.op("Concat", lead, ints(out), axis=0))


def _zero_tensor():
    from onnx import numpy_helper

    return numpy_helper.from_array(np.zeros(1, np.float32))


def _ffn_onnx(b, xe, idx, affine, gated, act, limit, alpha) -> str:
    """`_ffn` in ONNX nodes; affine(v, j, idx) emits v @ W_j[e] (+ b_j[e])."""
    op, attrs = ACTS[act]
    if not gated:
        h = OPS[op].onnx(b, affine(xe, 0, idx), **attrs)
    else:
        g, u = affine(xe, 0, idx), affine(xe, 1, idx)
        if limit > 0:
            g = b.op("Min", g, b.scalar(limit))
            gs = b.op("Mul", g, b.op("Sigmoid", b.op("Mul", g, b.scalar(alpha))))
            clipped = b.op("Clip", u, b.scalar(-limit), b.scalar(limit))
            h = b.op("Mul", gs, b.op("Add", clipped, b.scalar(1.0)))
        else:
            h = b.op("Mul", OPS[op].onnx(b, g, **attrs), u)
    return affine(h, 2, idx)


register_op("moe_experts", (4, 8), {"act": True, "gated": True, "bias": True, "limit": False,
                                    "alpha": False},
            infer=_infer, numpy=moe_experts, onnx=_onnx)


# `moe_experts_nbits`: the same op with weight-only quantized experts (archc/quantize.py). Each
# W_j [E, K, N] is stored as MatMulNBits' tensors of each expert (archc/ops/quant.py) stacked on
# a leading E: qweight uint8 [E, N, nb, block * bits / 8], scales float32 [E, N * nb] and, unless
# symmetric, zero_points uint8 [E, N * ceil(nb * bits / 8)]. Inputs: x, gates, then W1's parts,
# [W3's], W2's (2 or 3 each: the count says whether zero points are there), then the float32
# biases. Expert e's matmul is `matmul_nbits` over the e-th slices, in NumPy as in ONNX: there
# Gather(part, e) of an initializer folds into a constant when onnxruntime loads the model, so
# each MatMulNBits reads (and prepacks, which accuracy_level 4 needs) that expert's own codes.
def _parts(ws: tuple, gated: bool, bias: bool) -> int:
    """How many inputs each quantized weight has: 2 (symmetric) or 3 (zero points)."""
    n = 3 if gated else 2
    rest = len(ws) - (n if bias else 0)
    if rest not in (2 * n, 3 * n):
        raise ShapeError(f"moe_experts_nbits (gated={gated}, bias={bias}) takes {2 * n} or "
                         f"{3 * n} weight parts{f' and {n} biases' if bias else ''}, got {len(ws)}")
    return rest // n


def _nbits_infer(x: TensorType, gates: TensorType, *ws: TensorType, act: str, gated: bool,
                 bias: bool, bits: int, block_size: int, accuracy_level: int = 0,
                 limit: float = 0.0, alpha: float = 1.702) -> TensorType:
    w1, w3, w2, *vecs = _unpack(ws, gated, bias, _parts(ws, gated, bias))
    e = gates.shape[-1]
    floats = []
    for w, k in ((w1, x.shape[-1]), (w3, x.shape[-1]), (w2, None)):
        if w is None:
            continue
        if any(t.rank < 1 or t.shape[0] != e for t in w) or w[0].rank != 4:
            raise ShapeError(f"moe_experts_nbits weight parts {', '.join(map(str, w))} are not "
                             f"[{e}, ...] (one MatMulNBits weight per expert)")
        k = floats[0].shape[-1] if k is None else k  # W2 reads the hidden width W1 makes
        n = w[0].shape[1]
        one = (t.with_shape(t.shape[1:]) for t in w)  # expert e's slices
        infer_matmul_nbits(TensorType("float32", (k,)), *one, K=k, N=n, bits=bits,
                           block_size=block_size, accuracy_level=accuracy_level)
        floats.append(TensorType("float32", (e, k, n)))
    return _infer(x, gates, *floats, *filter(None, vecs), act=act, gated=gated, bias=bias,
                  limit=limit, alpha=alpha)


def moe_experts_nbits(x, gates, *ws, act: str, gated: bool, bias: bool, bits: int,
                      block_size: int, accuracy_level: int = 0, limit: float = 0.0,
                      alpha: float = 1.702):  # [..., d], [..., E], weights -> [..., out]
    w1, w3, w2, b1, b3, b2 = _unpack(ws, gated, bias, _parts(ws, gated, bias))
    mats, vecs = (w1, w3, w2), (b1, b3, b2)

    def expert(e, rows):
        def affine(v, j):
            q, s, zp = (*mats[j], None)[:3]
            y = matmul_nbits(v, q[e], s[e], None if zp is None else zp[e], K=v.shape[-1],
                             N=q.shape[1], bits=bits, block_size=block_size,
                             accuracy_level=accuracy_level)
            return y if vecs[j] is None else y + vecs[j][e]
        return _ffn(rows, affine, gated, act, limit, alpha)
    return _route(x, gates, w2[0].shape[1], expert)


def _nbits_onnx(b, x, gates, *ws, act: str, gated: bool, bias: bool, bits: int,
                block_size: int, accuracy_level: int = 0, limit: float = 0.0,
                alpha: float = 1.702) -> str:
    w1, w3, w2, b1, b3, b2 = _unpack(ws, gated, bias, _parts(ws, gated, bias))
    mats, vecs = (w1, w3, w2), (b1, b3, b2)
    width = [b.types[x].shape[-1]] * 2 + [b.types[w1[0]].shape[1]]  # K of W1, W3, W2

    def affine(v, j, idx):  # MatMulNBits over expert e's slices (+ b_j[e])
        y = b.op("MatMulNBits", v, *(b.op("Gather", t, idx, axis=0) for t in mats[j]),
                 domain="com.microsoft", K=width[j], N=b.types[mats[j][0]].shape[1], bits=bits,
                 block_size=block_size, accuracy_level=accuracy_level)
        return y if vecs[j] is None else b.op("Add", y, b.op("Gather", vecs[j], idx, axis=0))
    return _route_onnx(b, x, gates, b.types[w2[0]].shape[1],
                       lambda xe, idx: _ffn_onnx(b, xe, idx, affine, gated, act, limit, alpha))


register_op("moe_experts_nbits", (6, 14), {
    "act": True, "gated": True, "bias": True, "bits": True, "block_size": True,
    "accuracy_level": False, "limit": False, "alpha": False},
    infer=_nbits_infer, numpy=moe_experts_nbits, onnx=_nbits_onnx)
