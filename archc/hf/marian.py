"""marian: bart's post-LN layers with computed sinusoidal positions (sines then cosines, not in
the checkpoint), no embedding LayerNorm, embeddings scaled by sqrt(d), a swish FFN by default,
and the head tied to the shared embedding plus `final_logits_bias`. Checkpoints with separate
source and target vocabularies (`share_encoder_decoder_embeddings: false`) are refused."""

from __future__ import annotations

from archc.diagnostics import ArchcError, Diagnostic
from archc.hf import bart
from archc.hf.config import HFConfig

MARIAN = bart.Layout(sinusoidal=True, embed_norm=False, pre_ln=False)


def _check(c: HFConfig) -> None:
    dec_vocab = c.data.get("decoder_vocab_size")
    if not c.data.get("share_encoder_decoder_embeddings", True) or \
            dec_vocab not in (None, c.get("vocab_size")):
        raise ArchcError([Diagnostic("E0504", "marian with separate source and target "
                                     "vocabularies is not supported yet")])


def describe(c: HFConfig, tensors=None) -> str:
    _check(c)
    return bart.render(c, MARIAN)


def weights(c: HFConfig, text: str, t) -> dict:
    return bart.layout_weights(c, t, MARIAN)
