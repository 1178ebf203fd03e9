"""smollm3: llama with NoPE layers: `no_rope_layers[i]` is 1 where layer i uses rotary and 0
where it has no positions at all (4.x configs: every `no_rope_layer_interval`-th layer)."""

from __future__ import annotations

from archc.diagnostics import ArchcError, Diagnostic
from archc.hf import llama

weights = llama.weights


def describe(c, tensors=None):
    dec = llama.describe(c)
    n = dec.layers
    flags = c.get("no_rope_layers", default=None)
    if flags is None:
        every = c.get("no_rope_layer_interval", default=4)
        flags = [int((i + 1) % every != 0) for i in range(n)]
    if len(flags) != n:
        raise ArchcError([Diagnostic("E0506", f"`no_rope_layers` has {len(flags)} flags for {n} "
                                     "layers", help="give one flag (0 or 1) per layer")])
    dec.nope_layers = [i for i, f in enumerate(flags) if not f] or None
    if dec.nope_layers and len(dec.nope_layers) == n:
        dec.rope, dec.nope_layers = None, None
    if c.get("use_sliding_window", default=False):
        llama.windows(c, dec)
    return dec
