"""electra: bert whose embeddings are `embedding_size` wide and projected up to the model width
(`embeddings_project`, when the two differ); `ElectraModel` has no pooler, and
`ElectraForMaskedLM` (the generator) has a gelu + LayerNorm transform back to the embedding
width and a head tied to the word embeddings, with its own bias; `ElectraForPreTraining` (the
discriminator) gives one replaced-token logit per token."""

from __future__ import annotations

from dataclasses import replace

from archc.hf import bert, common
from archc.hf.config import HFConfig


def shape(c: HFConfig) -> bert.Encoder:
    s = bert.shape(c)
    e = bert.size(c, "embedding_size", default=s.d)
    return replace(s, emb=e if e != s.d else 0, head_act="gelu")


def describe(c: HFConfig, tensors=None) -> str:
    bert.check_post_ln(c)
    s = shape(c)
    tail = None
    if _discriminator(c):  # one replaced-token logit per token: [B, T]
        tail = [f"  h = {s.act}(linear(x, d) as discriminator)",
                "  h = linear(h, 1) as discriminator_prediction",
                "  output logits = reshape(h, [dim(h, 0), dim(h, 1)])"]
    return bert.render(c, f"pos_embed(input_ids, max_pos, {'e' if s.emb else 'd'})",
                       lets=f", max_pos = {s.rows}", s=s, pooler=False, tail=tail)


def _discriminator(c: HFConfig) -> bool:
    return c.architecture.endswith("ForPreTraining")


def weights(c: HFConfig, spec: str, t) -> dict:
    if not _discriminator(c):
        return bert.encoder_weights(c, t, "electra", "generator", s=shape(c))
    s = shape(c)
    out = bert.encoder_weights(HFConfig({**c.data, "architectures": ["ElectraModel"]}), t,
                               "electra", "generator", s=s)
    common.linear(out, t, "discriminator_predictions.dense", "discriminator", s.d, s.d, True)
    common.linear(out, t, "discriminator_predictions.dense_prediction",
                  "discriminator_prediction", s.d, 1, True)
    return out
