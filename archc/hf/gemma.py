"""gemma: llama with RMSNorm scaled by (1 + w), embeddings x sqrt(d), GeGLU (tanh), a head
dim of its own, tied head. gemma2 adds norms after each sublayer, alternating sliding and
global layers, softcapped attention logits and final logits, and query_pre_attn_scalar."""

from __future__ import annotations

from archc.hf import llama

weights = llama.weights


def describe(c, tensors=None):
    dec = llama.describe(c)
    dec.norm, dec.embed_scale = "rms_norm_offset", True
    dec.act = llama.act(c.get("hidden_activation", "hidden_act", default="gelu_pytorch_tanh"))
    if dec.act == "gelu":  # transformers runs Gemma's "gelu" as the tanh form
        dec.act = "gelu_tanh"
    dec.head = llama.head_kind(c, True)
    return dec
