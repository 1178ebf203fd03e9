"""mt5: T5 v1.1 (gated GELU) with a 250k multilingual vocabulary and the same tensor names. Its
head is never scaled by d^-0.5. Checkpoints written by transformers 4.x (the published ones)
carry their own `lm_head.weight` with `tie_word_embeddings: false`; transformers 5 ties the
head to `shared` and writes no `lm_head.weight`: whether it is tied shows in the tensors."""

from __future__ import annotations

from archc.hf import t5

weights = t5.weights


def describe(c, tensors=None) -> str:
    return t5.spec(c, None if tensors is None else tensors.has("lm_head.weight"), scaled=False)
