"""glm4: llama with a norm after each sublayer as well as before (sandwich), q/k/v biases,
partial rotary on interleaved pairs, and a fused `gate_up_proj` ([gate; up]) split on
import."""

from __future__ import annotations

from archc.hf import common, llama, phi3


def describe(c, tensors=None):
    dec = llama.describe(c)
    dec.rope = c.rope_options(fraction=0.5)
    dec.rope["interleaved"] = True
    dec.block, dec.qkv_bias, dec.out_bias = "sandwich", c.get("attention_bias", default=True), \
        False
    return dec


def weights(c, dec, t):
    out = {"embed_tokens.weight": t.take("model.embed_tokens.weight", (dec.vocab, dec.d))}
    for i in range(dec.layers):
        hf, me = f"model.layers.{i}", f"layers.{i}"
        for theirs, mine in (("input_layernorm", "input_norm"),
                             ("post_self_attn_layernorm", "post_attention_norm"),
                             ("post_attention_layernorm", "pre_feedforward_norm"),
                             ("post_mlp_layernorm", "post_feedforward_norm")):
            common.norm(out, t, f"{hf}.{theirs}", f"{me}.{mine}", dec.d, False)
        common.attention(out, t, f"{hf}.self_attn", f"{me}.self_attn", dec)
        phi3.gate_up(out, t, hf, me, dec)
    common.norm(out, t, "model.norm", "norm", dec.d, False)
    common.head(out, t, dec)
    return out
