"""mistral: llama with sliding-window attention."""

from __future__ import annotations

from archc.hf import llama

weights = llama.weights


def decoder(c):
    dec = llama.decoder(c)
    llama.windows(c, dec)
    return dec
