"""The library attention's newer options against a NumPy formula: q/k norms per head (Qwen3,
Gemma 3) or over the whole projection (OLMo 2), and attention sinks (GPT-OSS), causal with GQA,
left padding, and the KV cache."""

from __future__ import annotations

import numpy as np
import pytest

import archc
from archc.kvcache import Session
from archc.lower import lower

rng = np.random.default_rng(7)
D, H, KV, HD = 32, 4, 2, 8


def _spec(options: str) -> str:
    return f"""
    model m {{
      input input_ids: int64[batch, seq]
      input attention_mask: int64[batch, seq]
      x = embed(input_ids, 50, {D}) as wte
      output logits = attention(x, {H}, kv_heads = {KV}, causal, mask = attention_mask,
                                bias = false{options}) as attn
    }}"""


def _rms(x, w, eps=1e-6):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _reference(w, ids, mask, per_head: bool, whole: bool, sinks: bool):
    x = w["wte.weight"][ids]
    b, t, _ = x.shape
    q, k, v = (x @ w[f"attn.{n}.weight"] for n in "qkv")
    if whole:
        q, k = _rms(q, w["attn.q_norm.weight"]), _rms(k, w["attn.k_norm.weight"])
    q, k, v = (a.reshape(b, t, -1, HD) for a in (q, k, v))
    if per_head:
        q, k = _rms(q, w["attn.q_norm.weight"]), _rms(k, w["attn.k_norm.weight"])
    q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
    k, v = (np.repeat(a, H // KV, axis=1) for a in (k, v))
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(HD)
    keep = np.tril(np.ones((t, t), bool))[None, None] & (mask[:, None, None, :] == 1)
    s = np.where(keep, s, np.finfo(np.float32).min)
    if sinks:
        sink = np.broadcast_to(w["attn.sinks"].reshape(1, H, 1, 1), (b, H, t, 1))
        s = np.concatenate([s, sink], -1)
    p = np.exp(s - s.max(-1, keepdims=True))
    p = (p / p.sum(-1, keepdims=True))[..., :t]
    out = (p @ v).transpose(0, 2, 1, 3).reshape(b, t, H * HD)
    return out @ w["attn.o.weight"]


@pytest.mark.parametrize("options, per_head, whole, sinks", [
    (", qk_norm = rms_norm", True, False, False),
    (", qk_norm_all = rms_norm", False, True, False),
    (", sinks", False, False, True),
    (", qk_norm = rms_norm, sinks", True, False, True),
], ids=["qk-norm-per-head", "qk-norm-whole", "sinks", "both"])
def test_attention_options_match_numpy(options, per_head, whole, sinks):
    module = archc.parse(_spec(options))
    g = archc.compile(module)
    w = {k: (v + rng.normal(0, 0.3, v.shape)).astype(np.float32)
         for k, v in archc.init_params(g, seed=5).items()}
    shapes = {k: v.shape for k, v in w.items()}
    if per_head:
        assert shapes["attn.q_norm.weight"] == (HD,)
    if whole:
        assert shapes["attn.q_norm.weight"] == (H * HD,) and shapes["attn.k_norm.weight"] == (16,)
    if sinks:
        assert shapes["attn.sinks"] == (H,)
    ids = rng.integers(0, 50, (2, 7)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, :2] = 0
    ref = _reference(w, ids, mask, per_head, whole, sinks)
    real = mask.astype(bool)
    for backend in ("numpy", "onnxruntime"):
        got = archc.run(g, {"input_ids": ids, "attention_mask": mask}, w, backend=backend)
        np.testing.assert_allclose(got["logits"][real], ref[real], atol=2e-5, rtol=1e-5)
    cached = archc.optimize(lower(module, cache=True))
    s = Session(cached, w)
    steps = [s.prefill(ids[:, :4], mask[:, :4])] + [s.step(ids[:, i:i + 1], mask[:, i:i + 1])
                                                     for i in range(4, 7)]
    np.testing.assert_allclose(np.concatenate(steps, 1)[real], ref[real], atol=2e-5, rtol=1e-5)
