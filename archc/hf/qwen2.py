"""qwen2: llama with q/k/v biases (and no o_proj bias); sliding windows by layer type."""

from __future__ import annotations

from archc.hf import llama

weights = llama.weights


def describe(c, tensors=None):
    dec = llama.describe(c)
    dec.qkv_bias, dec.out_bias = True, False
    if c.get("use_sliding_window", default=False):
        llama.windows(c, dec)
    return dec
