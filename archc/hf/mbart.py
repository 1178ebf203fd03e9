"""mbart: bart with pre-LN layers and a final LayerNorm on each stack (after the embedding
LayerNorm and learned positions with offset 2 that bart has), embeddings scaled by sqrt(d) when
`scale_embedding`, and `final_logits_bias`."""

from __future__ import annotations

from archc.hf import bart
from archc.hf.config import HFConfig

MBART = bart.Layout(sinusoidal=False, embed_norm=True, pre_ln=True)


def describe(c: HFConfig, tensors=None) -> str:
    return bart.render(c, MBART)


def weights(c: HFConfig, text: str, t) -> dict:
    return bart.layout_weights(c, t, MBART)
