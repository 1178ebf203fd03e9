"""The experts and adaptive-depth catalogue (`archc/stdlib/experts_adaptive.arch`): each block
against a NumPy reference written from its paper's equations (loops over tokens, not archc's
IR), on both backends (NumPy == onnxruntime <= 1e-5), with the edge cases the papers care about,
and exact `archc stats` for the bundled specs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import ROOT

import archc
from archc.stats import param_stats

# This catalogue adds no ops: every block is written over existing primitives. The all-parts
# test in tests/test_ops.py reads this dict.
OP_CASES: dict = {}

BACKENDS = ("numpy", "onnxruntime")
SPECS = ROOT / "specs"
rng = np.random.default_rng(11)


def _compile(body: str, d: int = 8, mask: bool = False):
    extra = "  input attention_mask: int64[batch, seq]\n" if mask else ""
    src = f"model t {{\n  input x: float32[batch, seq, {d}]\n{extra}{body}\n}}\n"
    return archc.compile(archc.parse(src, "t.arch"))


def _run_both(graph, feeds, weights):
    outs = [archc.run(graph, feeds, weights, backend=b) for b in BACKENDS]
    for name in outs[0]:
        np.testing.assert_allclose(outs[0][name], outs[1][name], atol=1e-5, rtol=1e-5,
                                   err_msg=name)
    return outs[0]


def _weights(graph, seed=0, bias=0.1):
    w = archc.init_params(graph, seed)
    r = np.random.default_rng(seed + 1)
    return {k: (v + r.normal(0, bias, v.shape)).astype(np.float32) if "bias" in k else v
            for k, v in w.items()}


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


ACTS = {"relu": lambda v: np.maximum(v, 0), "silu": lambda v: v * _sigmoid(v),
        "gelu": lambda v: 0.5 * v * (1 + np.vectorize(math.erf)(v / math.sqrt(2)))}


# ---------------------------------------------------------------- mixture of experts
def _expert(w, bank, e, v, act, gated):  # one expert FFN on one token v [d]
    def b(name, width):
        return w.get(f"{bank}.{name}_bias", np.zeros((e + 1, width)))[e]
    if gated:
        g = v @ w[f"{bank}.gate"][e] + b("gate", w[f"{bank}.gate"].shape[-1])
        u = v @ w[f"{bank}.up"][e] + b("up", w[f"{bank}.up"].shape[-1])
        return (ACTS[act](g) * u) @ w[f"{bank}.down"][e] + b("down", v.shape[-1])
    h = ACTS[act](v @ w[f"{bank}.fc"][e] + b("fc", w[f"{bank}.fc"].shape[-1]))
    return h @ w[f"{bank}.proj"][e] + b("proj", v.shape[-1])


def moe_reference(x, w, experts, top_k, act="silu", gated=True, normalize=True, shared=0,
                  capacity=0.0, mask=None, prefix="moe"):
    """Shazeer et al. 2017 / GShard / Switch, token by token: p = softmax(x W_r); the top k
    (ties to the lower index); gates p_e (/ sum of the picks); an expert takes at most
    C = ceil(c k T / E) assignments per row, 1st choices in token order, then 2nd, ...;
    y = sum_s shared_s(x) + sum_e g_e FFN_e(x). Load balance: E sum_i f_i P_i."""
    B, T, _ = x.shape
    mask = np.ones((B, T), bool) if mask is None else mask.astype(bool)
    p = _softmax(x.astype(np.float64) @ w[f"{prefix}.router.weight"])
    y = np.zeros(x.shape)
    slots = np.zeros(experts)
    for b in range(B):
        picks = [np.argsort(-p[b, t], kind="stable")[:top_k] for t in range(T)]
        limit = math.ceil(capacity * top_k * mask[b].sum() / experts) if capacity else T * top_k
        taken = np.zeros(experts)
        for r in range(top_k):
            for t in range(T):
                if not mask[b, t]:
                    continue
                e = picks[t][r]
                slots[e] += 1
                if taken[e] < limit:
                    taken[e] += 1
                    g = p[b, t, e] / (p[b, t, picks[t]].sum() if normalize else 1)
                    y[b, t] += g * _expert(w, f"{prefix}.experts", e, x[b, t], act, gated)
            for t in range(T):
                for s in range(shared if r == 0 else 0):  # every token, padding too
                    y[b, t] += _expert(w, f"{prefix}.shared_experts", s, x[b, t], act, gated)
    f = slots / (mask.sum() * top_k)
    big_p = (p * mask[..., None]).sum((0, 1)) / mask.sum()
    return y, experts * (f * big_p).sum(), p


def test_moe_ffn_matches_the_papers_with_capacity_shared_experts_biases_and_padding():
    g = _compile("  y, l = moe_ffn(x, 4, 2, 16, bias = true, shared = 2, shared_hidden = 12,\n"
                 "                 capacity = 1.0, mask = attention_mask, aux_loss) as moe\n"
                 "  output y = y\n  output loss = l", mask=True)
    w = _weights(g, seed=1)
    x = rng.standard_normal((3, 9, 8)).astype(np.float32)
    mask = np.ones((3, 9), np.int64)
    mask[1, :3] = 0  # left padding: routed nowhere, and T counts only the real tokens
    got = _run_both(g, {"x": x, "attention_mask": mask}, w)
    ref, loss, p = moe_reference(x, w, 4, 2, shared=2, capacity=1.0, mask=mask)
    np.testing.assert_allclose(got["y"], ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got["loss"], loss, atol=1e-6)
    # padding changes nothing for the real tokens: the padded row alone gives the same
    alone = _run_both(g, {"x": x[1:2, 3:], "attention_mask": mask[1:2, 3:]}, w)["y"]
    np.testing.assert_allclose(got["y"][1:2, 3:], alone, atol=1e-5, rtol=1e-5)
    # the capacity cut does something here: without it the output differs
    free, _, _ = moe_reference(x, w, 4, 2, shared=2, mask=mask)
    assert np.abs(free - ref).max() > 1e-3
    # Mixtral's load_balancing_loss_func (transformers) is k times this loss, unmasked
    unmasked = _compile("  y, l = moe_ffn(x, 4, 2, 16, aux_loss) as moe\n  output loss = l")
    picks = np.argsort(-p, axis=-1, kind="stable")[..., :2]
    hf = 4 * (np.eye(4)[picks].reshape(-1, 2, 4).mean(0) * p.reshape(-1, 4).mean(0)).sum()
    got_unmasked = _run_both(unmasked, {"x": x}, {k: w[k] for k in unmasked.params})["loss"]
    np.testing.assert_allclose(2 * got_unmasked, hf, atol=1e-5)


@pytest.mark.parametrize("top_k, act, gated, normalize", [
    (4, "silu", True, True),      # k = number of experts: every expert, gates = p
    (3, "gelu", False, False),    # GELU MLP experts, top 3, not renormalised
    (1, "relu", False, False),    # Switch
], ids=["k=E", "gelu-mlp-k3", "switch"])
def test_moe_ffn_any_k_and_expert_shape(top_k, act, gated, normalize):
    flags = f"act = {act}, gated = {str(gated).lower()}, normalize = {str(normalize).lower()}"
    g = _compile(f"  output y = moe_ffn(x, 4, {top_k}, 16, {flags}) as moe")
    w = _weights(g, seed=2)
    x = rng.standard_normal((2, 6, 8)).astype(np.float32)
    got = _run_both(g, {"x": x}, w)["y"]
    ref, _, p = moe_reference(x, w, 4, top_k, act=act, gated=gated, normalize=normalize)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
    if top_k == 4:  # all experts, weighted by the full softmax
        full = sum(p[..., e, None] * np.stack([[_expert(w, "moe.experts", e, v, act, gated)
                                               for v in row] for row in x]) for e in range(4))
        np.testing.assert_allclose(got, full, atol=1e-5, rtol=1e-5)


def test_switch_capacity_overflow_passes_tokens_through_the_residual():
    """Every token picks expert 0: with capacity factor 1 each expert takes ceil(T/E) = 2 of
    a row's 8 tokens, the first two in token order; the rest get y = 0, so x + y = x."""
    g = _compile("  y, l = switch_ffn(x, 4, 16, capacity = 1.0, aux_loss) as ffn\n"
                 "  output y = x + y\n  output loss = l")
    w = _weights(g, seed=3)
    w["ffn.router.weight"] = np.zeros((8, 4), np.float32)
    w["ffn.router.weight"][0, 0] = 10.0
    x = rng.standard_normal((2, 8, 8)).astype(np.float32)
    x[..., 0] = 3 + np.abs(x[..., 0])  # router logit of expert 0 >= 30
    got = _run_both(g, {"x": x}, w)
    ref, loss, p = moe_reference(x, w, 4, 1, act="relu", gated=False, normalize=False,
                                 capacity=1.0, prefix="ffn")
    np.testing.assert_allclose(got["y"], x + ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(got["y"][:, 2:], x[:, 2:])  # overflow: unchanged
    assert np.abs(got["y"][:, :2] - x[:, :2]).min() > 0      # the first two: routed
    top1 = p[:, :2, 0, None] * np.stack([[_expert(w, "ffn.experts", 0, v, "relu", False)
                                       for v in row[:2]] for row in x])  # p scales, not 1
    np.testing.assert_allclose(got["y"][:, :2], x[:, :2] + top1, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got["loss"], 4 * p[..., 0].mean(), atol=1e-6)  # f_0 = 1
    np.testing.assert_allclose(got["loss"], loss, atol=1e-6)


def test_moe_ffn_has_the_names_and_numbers_of_the_mixtral_moe():
    a = _compile("  output y = moe(x, 4, 2, 16) as moe")
    b = _compile("  output y = moe_ffn(x, 4, 2, 16) as moe")
    assert set(a.params) == set(b.params)
    w = _weights(a, seed=4)
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    np.testing.assert_allclose(_run_both(b, {"x": x}, w)["y"], _run_both(a, {"x": x}, w)["y"],
                               atol=1e-6)


# ---------------------------------------------------------------- adaptive depth
MIX = ("  block mix(h) {\n    return tanh(linear(h, 8) as a + "
       "linear(mean(h, axis = 1, keepdims = true), 8, bias = false) as m)\n  }\n")


def _mix(w, prefix):  # the test's shared layer, token-mixing through the mean over the row
    def layer(u):
        return np.tanh(u @ w[f"{prefix}.a.weight"] + w[f"{prefix}.a.bias"] +
                       u.mean(1, keepdims=True) @ w[f"{prefix}.m.weight"])
    return layer


def timing_reference(T, step, d):
    """Dehghani et al. 2018: P[p, 2j] = sin(p / 10000^(2j/d)), P[p, 2j+1] = cos(...), and the
    same of the step index t, added."""
    j = np.arange(d // 2)
    def sig(v):
        a = v / 10000 ** (2 * j / d)
        return np.stack([np.sin(a), np.cos(a)], -1).reshape(*np.shape(v)[:-1], d)
    return sig(np.arange(T)[:, None]) + sig(np.array([step]))


def test_ut_timing_is_the_coordinate_embedding():
    g = _compile("  output y = ut_timing(x, 3)")
    got = _run_both(g, {"x": np.zeros((2, 6, 8), np.float32)}, {})["y"]
    np.testing.assert_allclose(got, timing_reference(6, 3, 8), atol=1e-5)


def act_reference(x, w, max_steps, eps=0.01, timing=True, prefix="ut.step"):
    """Graves 2016 in a Universal Transformer: s_n = layer(s_{n-1} + timing_n) for running
    tokens (a halted token's state is copied), h_n = sigmoid(s_n w + b),
    N = min(M, min{n : h_1 + ... + h_n >= 1 - eps}), R = 1 - sum_{n<N} h_n,
    p_n = h_n (n < N), R (n = N), y = sum p_n s_n, ponder cost N + R."""
    layer, (B, T, d) = _mix(w, prefix), x.shape
    s, halted, states, hs = x.astype(np.float64), np.zeros((B, T), bool), [], []
    for n in range(max_steps):
        u = s + timing_reference(T, n, d) if timing else s
        s = np.where(halted[..., None], s, layer(u))
        hs.append(_sigmoid(s @ w[f"{prefix}.halting.weight"] + w[f"{prefix}.halting.bias"])[..., 0])
        states.append(s)
        halted |= np.sum(hs, 0) >= 1 - eps
    h = np.stack(hs)
    reached = np.cumsum(h, 0) >= 1 - eps
    big_n = np.where(reached.any(0), reached.argmax(0) + 1, max_steps)
    before = np.arange(max_steps)[:, None, None] < big_n - 1
    rem = 1 - (h * before).sum(0)
    p = np.where(before, h, 0) + (np.arange(max_steps)[:, None, None] == big_n - 1) * rem
    return (p[..., None] * np.stack(states)).sum(0), big_n + rem, big_n


@pytest.mark.parametrize("halt_bias, timing", [(0.0, True), (30.0, True), (-30.0, False)],
                         ids=["mixed", "halt-at-first-step", "never-halt"])
def test_act_universal_matches_graves(halt_bias, timing):
    g = _compile(MIX + f"  y, c = act_universal(x, mix, 4, timing = {str(timing).lower()}, "
                 "ponder) as ut\n  output y = y\n  output cost = c")
    w = _weights(g, seed=5)
    w["ut.step.halting.weight"] = w["ut.step.halting.weight"] * 3
    w["ut.step.halting.bias"] = np.array([halt_bias], np.float32)
    x = np.random.default_rng(7).standard_normal((2, 7, 8)).astype(np.float32)
    got = _run_both(g, {"x": x}, w)
    ref, cost, big_n = act_reference(x, w, 4, timing=timing)
    np.testing.assert_allclose(got["y"], ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got["cost"], cost, atol=1e-5, rtol=1e-5)
    if halt_bias > 0:  # N = 1, R = 1: the output is the first step's state
        assert (big_n == 1).all()
        np.testing.assert_allclose(got["cost"], 2.0)
        first = _mix(w, "ut.step")(x + timing_reference(7, 0, 8))
        np.testing.assert_allclose(got["y"], first, atol=1e-5, rtol=1e-5)
    elif halt_bias < 0 and not timing:  # N = M: every step runs, R ~ 1
        assert (big_n == 4).all()
        np.testing.assert_allclose(got["cost"], 5.0, atol=1e-5)
    else:  # tokens halt at different steps, and halted tokens stop changing
        assert len(np.unique(big_n)) > 1


def pondernet_reference(x, w, max_steps, lambda_p, prefix="pn.step"):
    """Banino et al. 2021: s_n = layer(s_{n-1}), lambda_n = sigmoid(s_n w + b) (1 at the last
    step), p_n = lambda_n prod_{j<n} (1 - lambda_j), y = sum p_n s_n,
    KL(p || p_G) with p_G(n) = lambda_p (1 - lambda_p)^(n-1)."""
    layer, s, states, lams = _mix(w, prefix), x.astype(np.float64), [], []
    for n in range(max_steps):
        s = layer(s)
        states.append(s)
        lam = _sigmoid(s @ w[f"{prefix}.halting.weight"] + w[f"{prefix}.halting.bias"])[..., 0]
        lams.append(lam if n < max_steps - 1 else np.ones_like(lam))
    lam = np.stack(lams)
    p = lam * np.cumprod(np.concatenate([np.ones_like(lam[:1]), 1 - lam[:-1]]), 0)
    prior = lambda_p * (1 - lambda_p) ** np.arange(max_steps)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(p > 0, p * np.log(p / prior[:, None, None]), 0).sum(0)
    return (p[..., None] * np.stack(states)).sum(0), kl, np.moveaxis(p, 0, -1)


@pytest.mark.parametrize("halt_bias", [0.0, 30.0, -30.0],
                         ids=["mixed", "halt-at-first-step", "never-halt"])
def test_ponder_net_matches_banino(halt_bias):
    g = _compile(MIX + "  y, kl, p = ponder_net(x, mix, 4, lambda_p = 0.3, regulariser) as pn\n"
                 "  output y = y\n  output kl = kl\n  output p = p")
    w = _weights(g, seed=6)
    w["pn.step.halting.bias"] = np.array([halt_bias], np.float32)
    x = rng.standard_normal((2, 7, 8)).astype(np.float32)
    got = _run_both(g, {"x": x}, w)
    ref, kl, p = pondernet_reference(x, w, 4, 0.3)
    for name, want in (("y", ref), ("kl", kl), ("p", p)):
        np.testing.assert_allclose(got[name], want, atol=1e-5, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(got["p"].sum(-1), 1.0, atol=1e-6)
    if halt_bias > 0:  # all the mass on step 1: KL = -log lambda_p
        np.testing.assert_allclose(got["p"][..., 0], 1.0)
        np.testing.assert_allclose(got["kl"], -math.log(0.3), atol=1e-6)
    elif halt_bias < 0:  # all the mass on the last step
        np.testing.assert_allclose(got["p"][..., -1], 1.0, atol=1e-6)
        np.testing.assert_allclose(got["kl"], -math.log(0.3 * 0.7 ** 3), atol=1e-5)


def test_adaptive_depth_exports_unrolled_with_one_copy_of_the_weights():
    g = archc.compile(SPECS / "universal_act.arch")
    model = archc.export_onnx(g, archc.init_params(g))
    ops = {n.op_type for n in model.graph.node}
    assert "Loop" not in ops and "If" not in ops
    assert sum(i.name in g.params for i in model.graph.initializer) == len(g.params)


# ---------------------------------------------------------------- stats
def _attn(d, bias):
    return 4 * d * d + (4 * d if bias else 0)


# spec -> (parameters, routed expert parameters and their k of E, uses of the shared step)
STATS = {
    # embed + 2 x (2 norms + attn + router + 8 GLU experts + 1 shared) + norm + head
    "moe_general": (512 * 64 * 2 + 64 + 2 * (128 + _attn(64, False) + 64 * 8 + 9 * 3 * 64 * 96),
                    (2 * 8 * 3 * 64 * 96, 2, 8), 1),
    # embed + positions + 4 x (2 LN + attn) + final LN + 2 dense ReLU MLPs
    # + 2 x (router + 8 ReLU experts)
    "switch": (512 * 64 * 2 + 128 * 64 + 4 * (256 + _attn(64, True)) + 128 +
               2 * 2 * 64 * 128 + 2 * (64 * 8 + 8 * 2 * 64 * 128), (2 * 8 * 2 * 64 * 128, 1, 8),
               1),
    # embed + one shared layer (attn, 2 LN, ReLU MLP with biases, halting unit) + head
    "universal_act": (512 * 64 * 2 + _attn(64, True) + 256 + 2 * 64 * 128 + 128 + 64 + 65,
                      (0, 1, 1), 6),
    # embed + one shared layer (2 RMS norms, attn, SwiGLU, halting unit) + norm + head
    "pondernet": (512 * 64 * 2 + 128 + _attn(64, True) + 3 * 64 * 128 + 65 + 64, (0, 1, 1), 5),
}


@pytest.mark.parametrize("spec", sorted(STATS))
def test_stats_are_exact(spec):
    total, (routed, k, experts), steps = STATS[spec]
    s = param_stats(archc.compile(SPECS / f"{spec}.arch"))
    assert s["parameters"] == total
    assert s["active_per_token"] == total - routed * (experts - k) // experts
    if steps > 1:  # the shared step is stored once and used `steps` times; PonderNet's
        outside = 2 * 512 * 64 + (64 if spec == "pondernet" else 0)  # halting unit is not
        halting = 65 * (steps if spec == "universal_act" else steps - 1)  # used at the last
        assert s["with_duplicates"] == outside + (total - outside - 65) * steps + halting


def test_moe_in_a_shared_repeat_counts_its_experts_once():
    g = _compile("  repeat 3 shared as s { x = x + moe_ffn(x, 4, 1, 16, shared = 1) }\n"
                 "  output y = x")
    s = param_stats(g)
    routed = 3 * 4 * 8 * 16
    assert s["parameters"] == 8 * 4 + routed + 3 * 8 * 16
    assert s["active_per_token"] == s["parameters"] - routed * 3 // 4
