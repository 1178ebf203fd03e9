"""big_bird: bert (post-LN, word + position + token-type embeddings, MLM head under `cls`)
whose self-attention is BigBird's block-sparse pattern as transformers computes it in eval
mode: the library's `bigbird_hf_attention` (archc/stdlib/bigbird_hf.arch). That pattern is a
table for one number of blocks, so the spec's length is static: `max_position_embeddings`,
which the spec's `input` lines state and a user may change to any multiple of `block_size`
above transformers' threshold. At or below (5 + 2 * num_random_blocks) * block_size tokens
transformers runs full attention, and so does the spec; so does `attention_type =
"original_full"`, with a dynamic length. `rescale_embeddings` scales the word embeddings by
sqrt(hidden_size) before the positions and token types are added."""

from __future__ import annotations

import json

from archc.diagnostics import ArchcError, Diagnostic
from archc.hf import bert
from archc.hf.config import HFConfig
from archc.hf.tensors import Tensors

_FULL = "    a = attention(x, heads, mask = attention_mask) as attention"
_WORDS = "  x = embed(input_ids, vocab, d) as word_embeddings"


def _unsupported(c: HFConfig, key: str, why: str):
    return ArchcError([Diagnostic(
        "E0504", f"`{c.path}`: `{key}` is {json.dumps(c.data.get(key))[:60]}; {why}",
        c._span(key), "this field")], {c.path: c.text})


def layout(c: HFConfig) -> tuple[int, int, int] | None:
    """(length, block_size, random) when the spec runs block-sparse, else None."""
    kind = c.data.get("attention_type", "block_sparse")
    if kind not in ("block_sparse", "original_full"):
        raise _unsupported(c, "attention_type", "it must be `block_sparse` or `original_full`")
    if c.data.get("use_bias", True) is not True:
        raise _unsupported(c, "use_bias", "query, key and value without biases are not "
                           "supported yet")
    if kind == "original_full":
        return None
    length = bert.size(c, "max_position_embeddings")
    block = bert.size(c, "block_size", 64)
    random = c.data.get("num_random_blocks", 3)
    if not isinstance(random, int) or isinstance(random, bool) or not 0 <= random <= 64:
        raise _unsupported(c, "num_random_blocks", "it must be an integer in 0..64")
    if length <= (5 + 2 * random) * block:
        return None  # transformers switches to full attention at this length
    if length % block:
        raise _unsupported(c, "max_position_embeddings", f"it must be a multiple of "
                           f"`block_size` ({block}) for the block-sparse layout")
    return length, block, random


def describe(c: HFConfig, tensors=None):
    bert.check_post_ln(c)
    spec = bert.render(c, "pos_embed(input_ids, max_pos, d)",
                       lets=f", max_pos = {bert.shape(c).rows}")
    if c.data.get("rescale_embeddings", False):
        spec = spec.replace(_WORDS, _WORDS + " * sqrt(d)", 1)
    sparse = layout(c)
    if sparse is not None:
        length, block, random = sparse
        spec = spec.replace("int64[batch, seq]", f"int64[batch, {length}]")
        spec = spec.replace(_FULL, "    # transformers' eval-mode block-sparse pattern\n"
                            f"    a = bigbird_hf_attention(x, heads, block_size = {block}, "
                            f"random = {random},\n"
                            "                             mask = attention_mask) as attention",
                            1)
    return spec


def weights(c: HFConfig, spec: str, t: Tensors):
    pooler, _, _ = bert.heads_of(c)
    if pooler:  # BigBird's pooler is a bare Linear where BERT's is `pooler.dense`
        take = t.take
        t.take = lambda name, shape=None: take(name.replace("pooler.dense.", "pooler."), shape)
    else:  # BigBirdForMaskedLM keeps a pooler that its logits never use
        for name in ("bert.pooler.weight", "bert.pooler.bias"):
            if t.has(name):
                t.take(name)
    return bert.encoder_weights(c, t, "bert", "cls")
