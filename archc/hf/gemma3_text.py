"""gemma3_text: gemma2's sandwich norms, scaled embeddings and (1 + w) RMSNorm, plus per-head
q/k RMSNorm with the same (1 + w) scale, and local (sliding) and global layers by
`layer_types` with a rope of their own each: transformers 5 nests `rope_parameters` per layer
type; 4.x has `rope_local_base_freq` for local layers, `rope_theta` and `rope_scaling` for
global ones, and every `sliding_window_pattern`-th layer global."""

from __future__ import annotations

from archc.diagnostics import ArchcError, Diagnostic
from archc.hf import common, gemma2


def describe(c, tensors=None):
    bidirectional = c.data.get("use_bidirectional_attention")
    if bidirectional not in (None, False):  # EmbeddingGemma: no causal mask, windows both ways
        raise ArchcError([Diagnostic(
            "E0505", "`use_bidirectional_attention` is set: bidirectional "
            "Gemma 3 (EmbeddingGemma) cannot be imported yet", help="only causal Gemma 3 "
            "checkpoints import today")])
    if c.get("layer_types", default=None) is None and c.get("sliding_window", default=None):
        n, every = c.get("num_hidden_layers"), c.get("sliding_window_pattern", default=6)
        c.data["layer_types"] = ["sliding_attention" if (i + 1) % every else "full_attention"
                                 for i in range(n)]
    dec = gemma2.describe(c)
    dec.qk_norm = "head"
    if dec.softcap:  # Gemma 3 replaced Gemma 2's attention softcap with the q/k norms
        dec.comment = [f"`attn_logit_softcapping` ({dec.softcap!r}) is not applied: Gemma 3's "
                       "attention in transformers", "does not apply it."]
        dec.softcap = 0.0
    params = c.data.get("rope_parameters")
    if isinstance(params, dict) and isinstance(params.get("full_attention"), dict):
        dec.rope = c.rope_options("full_attention")
        local = c.rope_options("sliding_attention")
    else:
        dec.rope = c.rope_options(theta=1_000_000.0)
        local = {"theta": float(c.get("rope_local_base_freq", default=10000.0))}
    if dec.window:
        dec.local_rope = local
    return dec


def weights(c, dec, t):
    out = gemma2.weights(c, dec, t)
    hd, _, _ = common.dims(dec)
    for i in range(dec.layers):
        for name in ("q_norm", "k_norm"):
            common.norm(out, t, f"model.layers.{i}.self_attn.{name}",
                        f"layers.{i}.self_attn.{name}", hd, False)
    return out
