"""Specs against independent NumPy implementations written from the papers' formulas
(picoGPT style), not through archc's IR. Weights are archc's seeded init with every bias and
norm scale perturbed, so a dropped bias or a misplaced norm shows up. Tolerance: float32, 1e-4."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import ROOT, perturbed_params

import archc


def layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * g + b


def rms_norm(x, g, eps):
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * g


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def gelu_erf(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def attend(q, k, v, keep):  # [T,hd] x3 per head, keep [Tq,Tk]
    s = np.where(keep, q @ k.T / math.sqrt(q.shape[-1]), np.finfo(np.float32).min)
    return softmax(s) @ v


def mha(x, w, p, heads, keep, kv_heads=None, rope=None):
    """One sequence x [T, d]; separate q/k/v/o projections stored [in, out]."""
    kv_heads = kv_heads or heads
    def proj(name, inp):
        y = inp @ w[f"{p}.{name}.weight"]
        return y + w[f"{p}.{name}.bias"] if f"{p}.{name}.bias" in w else y
    q, k, v = proj("q", x), proj("k", x), proj("v", x)
    hd = q.shape[-1] // heads
    outs = []
    for h in range(heads):
        g = h // (heads // kv_heads)  # the kv head this query head reads
        qh, kh, vh = q[:, h * hd:(h + 1) * hd], k[:, g * hd:(g + 1) * hd], v[:, g * hd:(g + 1) * hd]
        if rope is not None:
            qh, kh = rope(qh), rope(kh)
        outs.append(attend(qh, kh, vh, keep))
    return proj("o", np.concatenate(outs, -1))


def gpt2_reference(w, ids, mask, heads=12, layers=12):
    out = []
    for row, m in zip(ids, mask):
        t = len(row)
        keep = np.tril(np.ones((t, t), bool)) & (m[None, :] == 1)
        x = w["wte.weight"][row] + w["wpe.weight"][:t]
        for i in range(layers):
            p = f"h.{i}"
            ln = lambda x, n: layer_norm(x, w[f"{p}.{n}.weight"], w[f"{p}.{n}.bias"], 1e-5)  # noqa
            x = x + mha(ln(x, "ln_1"), w, f"{p}.attn", heads, keep)
            h = gelu_tanh(ln(x, "ln_2") @ w[f"{p}.mlp.fc.weight"] + w[f"{p}.mlp.fc.bias"])
            x = x + h @ w[f"{p}.mlp.proj.weight"] + w[f"{p}.mlp.proj.bias"]
        x = layer_norm(x, w["ln_f.weight"], w["ln_f.bias"], 1e-5)
        out.append(x @ w["wte.weight"].T)
    return np.stack(out)


def bert_reference(w, ids, types, mask, heads=4, layers=4, eps=1e-12):
    hidden, pooled = [], []
    for row, ty, m in zip(ids, types, mask):
        t = len(row)
        keep = np.broadcast_to(m[None, :] == 1, (t, t))
        x = w["word.weight"][row] + w["position.weight"][:t] + w["token_type.weight"][ty]
        x = layer_norm(x, w["embed_norm.weight"], w["embed_norm.bias"], eps)
        for i in range(layers):
            p = f"layer.{i}"
            ln = lambda x, n: layer_norm(x, w[f"{p}.{n}.weight"], w[f"{p}.{n}.bias"], eps)  # noqa
            x = ln(x + mha(x, w, f"{p}.attn", heads, keep), "attn_norm")
            h = gelu_erf(x @ w[f"{p}.ffn.fc.weight"] + w[f"{p}.ffn.fc.bias"])
            x = ln(x + h @ w[f"{p}.ffn.proj.weight"] + w[f"{p}.ffn.proj.bias"], "ffn_norm")
        hidden.append(x)
        pooled.append(np.tanh(x[0] @ w["pooler.weight"] + w["pooler.bias"]))
    return np.stack(hidden), np.stack(pooled)


def rope_half(x, theta=10000.0):  # x [T, hd], rotate-half pairing
    t, hd = x.shape
    freq = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(t)[:, None] * freq[None, :]
    x1, x2 = x[:, : hd // 2], x[:, hd // 2:]
    return np.concatenate([x1 * np.cos(ang) - x2 * np.sin(ang),
                           x2 * np.cos(ang) + x1 * np.sin(ang)], -1)


def llama_reference(w, ids, mask, heads=8, kv=2, layers=4, eps=1e-6):
    out = []
    for row, m in zip(ids, mask):
        t = len(row)
        keep = np.tril(np.ones((t, t), bool)) & (m[None, :] == 1)
        x = w["embed_tokens.weight"][row]
        for i in range(layers):
            p = f"layers.{i}"
            h = rms_norm(x, w[f"{p}.input_norm.weight"], eps)
            x = x + mha(h, w, f"{p}.self_attn", heads, keep, kv_heads=kv, rope=rope_half)
            h = rms_norm(x, w[f"{p}.post_attention_norm.weight"], eps)
            gate, up = h @ w[f"{p}.mlp.gate.weight"], h @ w[f"{p}.mlp.up.weight"]
            x = x + (gate / (1 + np.exp(-gate)) * up) @ w[f"{p}.mlp.down.weight"]
        out.append(rms_norm(x, w["norm.weight"], eps) @ w["lm_head.weight"])
    return np.stack(out)


def _inputs(vocab, seed=0, batch=2, seq=6):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (batch, seq))
    mask = np.ones((batch, seq), np.int64)
    mask[1, -2:] = 0  # padding at the end of the second row
    return ids, mask


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_gpt2_small_matches_reference(backend):
    g = archc.compile(ROOT / "specs" / "gpt2_small.arch")
    w = perturbed_params(g)
    ids, mask = _inputs(50257)
    got = archc.run(g, {"input_ids": ids, "attention_mask": mask}, w, backend=backend)["logits"]
    want = gpt2_reference({k: v.astype(np.float64) for k, v in w.items()}, ids, mask)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_mini_bert_matches_reference(backend):
    g = archc.compile(ROOT / "specs" / "mini_bert.arch")
    w = perturbed_params(g)
    ids, mask = _inputs(7000)
    types = (np.arange(6)[None, :] >= 3).astype(np.int64).repeat(2, 0)
    feeds = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
    got = archc.run(g, feeds, w, backend=backend)
    hidden, pooled = bert_reference({k: v.astype(np.float64) for k, v in w.items()}, ids, types,
                                    mask)
    np.testing.assert_allclose(got["last_hidden_state"], hidden, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got["pooler_output"], pooled, atol=1e-4, rtol=0)
    # padding matters: without the mask the padded row changes, the full row does not
    unmasked = archc.run(g, {**feeds, "attention_mask": np.ones_like(mask)}, w, backend=backend)
    assert np.abs(unmasked["last_hidden_state"][1] - hidden[1]).max() > 1e-2
    np.testing.assert_allclose(unmasked["last_hidden_state"][0], hidden[0], atol=1e-4)


def test_llama_tiny_matches_reference():
    g = archc.compile(ROOT / "specs" / "llama_tiny.arch")
    w = perturbed_params(g)
    ids, mask = _inputs(1024)
    got = archc.run(g, {"input_ids": ids, "attention_mask": mask}, w)["logits"]
    want = llama_reference({k: v.astype(np.float64) for k, v in w.items()}, ids, mask)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
