"""longformer: roberta with sliding local attention (window w: w/2 tokens each side) plus
global attention for the tokens flagged in `global_attention_mask`, which use their own
`query_global`/`key_global`/`value_global` projections."""

from __future__ import annotations

from archc.diagnostics import ArchcError, Diagnostic
from archc.hf import bert, roberta


def describe(c, tensors=None):
    window = c.get("attention_window")
    windows = window if isinstance(window, list) else [window] * c.get("num_hidden_layers")
    if len(set(windows)) != 1:
        raise ArchcError([Diagnostic("E0504", "per-layer attention windows of different "
                                     "sizes are not supported yet")])
    pos, lets = roberta.positions(c)
    return bert.render(c, pos, extra_inputs=("global_attention_mask",),
                       attn_opts=", window = window, global_mask = global_attention_mask",
                       lets=f"{lets}, window = {windows[0]}")


def weights(c, spec, t):
    return bert.encoder_weights(c, t, "longformer", "lm_head", global_attn=True)
