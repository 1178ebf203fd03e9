"""qwen3: llama with per-head RMSNorm on queries and keys (`q_norm`, `k_norm` [head_dim]),
applied before rotary; sliding windows by layer type when `use_sliding_window`."""

from __future__ import annotations

from archc.hf import common, llama


def describe(c, tensors=None):
    dec = llama.describe(c)
    dec.qk_norm = "head"
    if c.get("use_sliding_window", default=False):
        llama.windows(c, dec)
    return dec


def weights(c, dec, t):
    return llama.weights(c, dec, t, attention=qk_norms("head"))


def qk_norms(kind: str):
    """An attention mapping that also takes q_norm/k_norm: per head ([head_dim]) or over the
    whole projection (`all`: [heads * head_dim] and [kv_heads * head_dim])."""
    def attention(out, t, hf, me, dec):
        common.attention(out, t, hf, me, dec)
        hd, q, kv = common.dims(dec)
        for name, n in (("q_norm", q), ("k_norm", kv)):
            common.norm(out, t, f"{hf}.{name}", f"{me}.{name}", hd if kind == "head" else n,
                        False)
    return attention
