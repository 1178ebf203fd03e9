"""mistral: llama with sliding-window attention."""

from __future__ import annotations

from archc.hf import llama

weights = llama.weights


def describe(c, tensors=None):
    dec = llama.describe(c)
    llama.windows(c, dec)
    return dec
