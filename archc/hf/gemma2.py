"""gemma2: see gemma.py."""

from __future__ import annotations

from archc.hf import common, gemma, llama


def describe(c, tensors=None):
    dec = gemma.describe(c)
    dec.block = "sandwich"
    dec.scale = f"{c.get('query_pre_attn_scalar')} ** -0.5"
    dec.softcap = float(c.get("attn_logit_softcapping", default=0.0) or 0.0)
    dec.final_softcap = float(c.get("final_logit_softcapping", default=0.0) or 0.0)
    if c.get("layer_types", default=None) is None and c.get("sliding_window", default=None):
        c.data["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention"
                                 for i in range(dec.layers)]  # transformers 4.x's fixed pattern
    llama.windows(c, dec)
    return dec


def weights(c, dec, t):
    out = {}
    out["embed_tokens.weight"] = t.take("model.embed_tokens.weight", (dec.vocab, dec.d))
    for i in range(dec.layers):
        hf, me = f"model.layers.{i}", f"layers.{i}"
        for theirs, mine in (("input_layernorm", "input_norm"),
                             ("post_attention_layernorm", "post_attention_norm"),
                             ("pre_feedforward_layernorm", "pre_feedforward_norm"),
                             ("post_feedforward_layernorm", "post_feedforward_norm")):
            common.norm(out, t, f"{hf}.{theirs}", f"{me}.{mine}", dec.d, False)
        common.attention(out, t, f"{hf}.self_attn", f"{me}.self_attn", dec)
        common.glu(out, t, f"{hf}.mlp", f"{me}.mlp", dec)
    common.norm(out, t, "model.norm", "norm", dec.d, False)
    common.head(out, t, dec)
    return out
