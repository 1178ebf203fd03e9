"""roberta: bert whose positions count from padding_idx + 1 over non-padding tokens (the
padding ones get padding_idx), with an MLM head under `lm_head`."""

from __future__ import annotations

from archc.hf import bert


def positions(c) -> tuple[str, str]:
    pad = c.get("pad_token_id", default=1)
    rows = c.get("max_position_embeddings")
    return ("pos_embed(input_ids, max_pos, d, offset = pad + 1, mask = input_ids != pad)",
            f", pad = {pad}, max_pos = {rows - pad - 1}")


def describe(c, tensors=None):
    bert.check_post_ln(c)
    pos, lets = positions(c)
    return bert.render(c, pos, lets=lets, tensors=tensors)


def weights(c, spec, t):
    return bert.encoder_weights(c, t, "roberta", "lm_head")
