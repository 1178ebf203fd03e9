"""stablelm: LayerNorm with bias, partial rotary, q/k/v biases (`use_qkv_bias`), SwiGLU,
sequential or parallel (`use_parallel_residual`: one norm feeds both) blocks, and optional
per-head q/k LayerNorms without bias (`qk_layernorm`: one LayerNorm per head, stored
`q_layernorm.norms.H.weight`, stacked here into [heads, head_dim])."""

from __future__ import annotations

import numpy as np

from archc.hf import common, llama


def describe(c, tensors=None):
    dec = llama.describe(c)
    dec.rope = c.rope_options(fraction=0.25)
    dec.eps = float(c.get("layer_norm_eps", default=1e-5))
    dec.norm, dec.qkv_bias = "layer_norm", c.get("use_qkv_bias", default=False)
    if c.get("use_parallel_residual", default=False):
        dec.block = "parallel"
    if c.get("qk_layernorm", default=False):
        dec.qk_norm = "head_weights"
    return dec


def weights(c, dec, t):
    out = {"embed_tokens.weight": t.take("model.embed_tokens.weight", (dec.vocab, dec.d))}
    hd, _, _ = common.dims(dec)
    for i in range(dec.layers):
        hf, me = f"model.layers.{i}", f"layers.{i}"
        common.norm(out, t, f"{hf}.input_layernorm", f"{me}.input_norm", dec.d)
        common.attention(out, t, f"{hf}.self_attn", f"{me}.self_attn", dec)
        for theirs, mine, n in (("q_layernorm", "q_norm", dec.heads),
                                ("k_layernorm", "k_norm", dec.kv_heads or dec.heads)):
            if dec.qk_norm:
                out[f"{me}.self_attn.{mine}.weight"] = np.stack([
                    t.take(f"{hf}.self_attn.{theirs}.norms.{h}.weight", (hd,)) for h in range(n)])
        if dec.block == "sequential":
            common.norm(out, t, f"{hf}.post_attention_layernorm", f"{me}.post_attention_norm",
                        dec.d)
        common.glu(out, t, f"{hf}.mlp", f"{me}.mlp", dec)
    common.norm(out, t, "model.norm", "norm", dec.d)
    common.head(out, t, dec)
    return out
