"""cohere2: cohere's parallel block, LayerNorm without bias, interleaved rotary and logit
scale, with sliding-window layers by `layer_types` (4.x: all but every
`sliding_window_pattern`-th) that alone use rotary: the global layers have no positions."""

from __future__ import annotations

from archc.hf import cohere, llama

weights = cohere.weights


def describe(c, tensors=None):
    n = c.get("num_hidden_layers")
    if c.get("layer_types", default=None) is None:
        every = c.get("sliding_window_pattern", default=4)
        c.data["layer_types"] = ["sliding_attention" if (i + 1) % every else "full_attention"
                                 for i in range(n)]
    dec = cohere.describe(c)
    llama.windows(c, dec)
    types = c.get("layer_types")
    dec.nope_layers = [i for i, t in enumerate(types) if t != "sliding_attention"] or None
    return dec
