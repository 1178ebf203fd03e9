"""granite: llama with four multipliers: embeddings (x * embedding_multiplier), attention
scores (scale = attention_multiplier instead of 1/sqrt(head_dim)), each residual branch
(x + f(x) * residual_multiplier) and logits (/ logits_scaling)."""

from __future__ import annotations

from archc.hf import llama

weights = llama.weights


def describe(c, tensors=None):
    dec = llama.describe(c)
    dec.embed_mult = float(c.get("embedding_multiplier", default=1.0))
    dec.scale = repr(float(c.get("attention_multiplier", default=1.0)))
    dec.residual_mult = float(c.get("residual_multiplier", default=1.0))
    dec.logits_div = float(c.get("logits_scaling", default=1.0))
    return dec
