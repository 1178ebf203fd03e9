"""pegasus: bart with pre-LN layers and a final LayerNorm on each stack, computed sinusoidal
positions (sines then cosines; transformers 5 stores the table too, and it is ignored), no
embedding LayerNorm, embeddings scaled by sqrt(d), and `final_logits_bias`."""

from __future__ import annotations

from archc.hf import bart
from archc.hf.config import HFConfig

PEGASUS = bart.Layout(sinusoidal=True, embed_norm=False, pre_ln=True)


def describe(c: HFConfig, tensors=None) -> str:
    return bart.render(c, PEGASUS)


def weights(c: HFConfig, text: str, t) -> dict:
    return bart.layout_weights(c, t, PEGASUS)
