"""olmo2: llama whose norms come after each sublayer only (x + norm(attention(x)), then
x + norm(mlp(x))), with RMSNorm over the whole q and k projections (`q_norm` [heads *
head_dim], `k_norm` [kv_heads * head_dim]) before the heads are split."""

from __future__ import annotations

from archc.hf import common, llama, qwen3


def describe(c, tensors=None):
    dec = llama.describe(c)
    dec.block, dec.qk_norm = "post", "all"
    return dec


def weights(c, dec, t):
    out = {"embed_tokens.weight": t.take("model.embed_tokens.weight", (dec.vocab, dec.d))}
    attention = qwen3.qk_norms("all")
    for i in range(dec.layers):
        hf, me = f"model.layers.{i}", f"layers.{i}"
        attention(out, t, f"{hf}.self_attn", f"{me}.self_attn", dec)
        for theirs, mine in (("post_attention_layernorm", "post_attention_norm"),
                             ("post_feedforward_layernorm", "post_feedforward_norm")):
            common.norm(out, t, f"{hf}.{theirs}", f"{me}.{mine}", dec.d, False)
        common.glu(out, t, f"{hf}.mlp", f"{me}.mlp", dec)
    common.norm(out, t, "model.norm", "norm", dec.d, False)
    common.head(out, t, dec)
    return out
