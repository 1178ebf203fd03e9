"""marian: bart's post-LN layers with computed sinusoidal positions (sines then cosines, not in
the checkpoint), no embedding LayerNorm, embeddings scaled by sqrt(d), a swish FFN by default,
and the head tied to the shared embedding plus `final_logits_bias`.

Checkpoints with separate source and target vocabularies (`share_encoder_decoder_embeddings:
false`) store `encoder.embed_tokens` [vocab_size, d] and `decoder.embed_tokens`
[decoder_vocab_size, d] and no `shared`; the head and `final_logits_bias` span the target
vocabulary, the head tied to the decoder's embedding unless `tie_word_embeddings: false` (then
`lm_head.weight` is its own, and transformers 5 unties a shared vocabulary's stacks as well:
each reads its own `embed_tokens`, falling back to `shared` where a 4.x checkpoint has only
that). Their spec is bart's with the embeddings and the head renamed (`_separate`): the layers
are the same, so bart's renderer and layer mapping serve both."""

from __future__ import annotations

import json

from archc.diagnostics import ArchcError, Diagnostic
from archc.hf import bart
from archc.hf.config import MAX_SIZE, HFConfig
from archc.hf.tensors import Tensors

MARIAN = bart.Layout(sinusoidal=True, embed_norm=False, pre_ln=False)


def _field(c: HFConfig, key: str, ok, expected: str, default):
    """A Marian-only field (not in `config.FIELDS`), checked before it reaches the spec."""
    value = c.data.get(key)
    if value is None:
        return default
    if not ok(value):
        raise ArchcError([Diagnostic("E0506", f"`{c.path}`: `{key}` is "
                                     f"{json.dumps(value)[:60]}; it must be {expected}")])
    return value


def _vocabs(c: HFConfig) -> tuple[int | None, bool]:
    """(the target vocabulary when the decoder has its own embedding, else None; whether the
    head is tied to it). transformers 5 ties nothing with `tie_word_embeddings: false`, so
    then even a shared vocabulary has an embedding per stack and a head of its own."""
    shared = _field(c, "share_encoder_decoder_embeddings", lambda v: isinstance(v, bool),
                    "true or false", True)
    target = _field(c, "decoder_vocab_size", lambda v: isinstance(v, int) and not
                    isinstance(v, bool) and 1 <= v <= MAX_SIZE, "a positive integer", None)
    tied = c.get("tie_word_embeddings", default=True)
    vocab = c.get("vocab_size")
    if shared and target not in (None, vocab):
        raise ArchcError([Diagnostic(
            "E0504", f"`{c.path}`: marian with shared embeddings of {vocab} tokens but "
            f"`decoder_vocab_size` {target}", help="transformers sizes a shared vocabulary by "
            "`vocab_size`: set `decoder_vocab_size` to it, or "
            "`share_encoder_decoder_embeddings` to false if the checkpoint has both embeddings")])
    if shared and tied:
        return None, True
    return (vocab if shared else target or vocab), tied


def _separate(spec: str, c: HFConfig, target: int | None, tied: bool) -> str:
    """Bart's spec with an embedding per stack and a head over the target vocabulary, tied to
    the decoder's embedding or not; each edit must hit exactly once."""
    if target is None:
        return spec
    vocab = c.get("vocab_size")
    edits = [(f"let vocab = {vocab}, ", f"let vocab = {vocab}, target_vocab = {target}, "),
             ("embed(input_ids, vocab, d) as shared", "embed(input_ids, vocab, d) as "
              "encoder_embed"),
             ("embed(decoder_input_ids, vocab, d, tied = shared)",
              "embed(decoder_input_ids, target_vocab, d) as decoder_embed")]
    if bart.has_head(c):
        edits.append(("lm_head(y, vocab, tied = shared)", "lm_head(y, target_vocab{})".format(
            ", tied = decoder_embed" if tied else "")))
    for old, new in edits:
        assert spec.count(old) == 1, old  # bart's renderer and this module moved apart
        spec = spec.replace(old, new)
    return spec


def describe(c: HFConfig, tensors: Tensors | None = None) -> str:
    target, tied = _vocabs(c)
    return _separate(bart.render(c, MARIAN), c, target, tied)


def weights(c: HFConfig, text: str, t: Tensors) -> dict:
    target, tied = _vocabs(c)
    if target is None:
        return bart.layout_weights(c, t, MARIAN)
    return _separate_weights(c, t, target, tied)


def _separate_weights(c: HFConfig, t: Tensors, target: int, tied: bool) -> dict:
    s = bart._shape(c)
    d, p = s["d"], "model." if t.has("model.encoder.embed_tokens.weight") or \
        t.has("model.shared.weight") else ""
    if t.has(f"{p}shared.weight"):  # transformers 4.x kept using it without a tied head;
        t.take(f"{p}shared.weight")  # 5.x stores it beside the stacks' own embeddings
    out = {}
    for stack, n, vocab in (("encoder", s["layers"], s["vocab"]),
                            ("decoder", s["dec_layers"], target)):
        own = f"{p}{stack}.embed_tokens.weight"
        out[f"{stack}_embed.weight"] = t.take(own if t.has(own) else f"{p}shared.weight",
                                              (vocab, d))
        if t.has(f"{p}{stack}.embed_positions.weight"):
            t.take(f"{p}{stack}.embed_positions.weight")  # the sinusoid the spec computes
        for i in range(n):
            bart._layer(out, t, f"{p}{stack}.layers.{i}", f"{stack}.{i}", s, stack == "decoder")
    if bart.has_head(c):
        out["final_logits_bias"] = t.take("final_logits_bias", (1, target))[0]
        if not tied:
            out["lm_head.weight"] = t.linear("lm_head.weight", d, target)
        elif t.has("lm_head.weight"):
            t.take("lm_head.weight", (target, d))  # a copy of the decoder's embedding
    return out
