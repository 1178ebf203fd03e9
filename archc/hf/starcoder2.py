"""starcoder2: LayerNorm with bias, biased q/k/v/o (`use_bias`), a GELU (tanh) MLP
(`c_fc`, `c_proj`), sliding windows, tied head."""

from __future__ import annotations

from archc.hf import common, llama


def describe(c, tensors=None):
    dec = llama.describe(c)
    dec.eps = float(c.get("norm_epsilon", default=1e-5))
    dec.norm, dec.ffn = "layer_norm", "mlp"
    dec.qkv_bias = dec.out_bias = dec.ffn_bias = c.get("use_bias", default=True)
    dec.act = llama.act(c.get("hidden_act", default="gelu_pytorch_tanh"))
    dec.head = llama.head_kind(c, True)
    llama.windows(c, dec)
    return dec


def weights(c, dec, t):
    out = {"embed_tokens.weight": t.take("model.embed_tokens.weight", (dec.vocab, dec.d))}
    for i in range(dec.layers):
        hf, me = f"model.layers.{i}", f"layers.{i}"
        common.norm(out, t, f"{hf}.input_layernorm", f"{me}.input_norm", dec.d)
        common.attention(out, t, f"{hf}.self_attn", f"{me}.self_attn", dec)
        common.norm(out, t, f"{hf}.post_attention_layernorm", f"{me}.post_attention_norm", dec.d)
        common.mlp(out, t, f"{hf}.mlp", f"{me}.mlp", dec, ("c_fc", "c_proj"))
    common.norm(out, t, "model.norm", "norm", dec.d)
    common.head(out, t, dec)
    return out
