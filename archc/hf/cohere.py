"""cohere: one LayerNorm without bias feeds attention and the SwiGLU MLP in parallel;
interleaved rotary pairs; optional per-head q/k LayerNorm (`use_qk_norm`, a weight
[heads, head_dim] per projection); tied head; logits * logit_scale."""

from __future__ import annotations

from archc.hf import common, llama


def describe(c, tensors=None):
    dec = llama.describe(c)
    dec.eps = float(c.get("layer_norm_eps", default=1e-5))
    dec.norm, dec.norm_bias, dec.block = "layer_norm", False, "parallel"
    dec.rope["interleaved"] = True
    if c.get("use_qk_norm", default=False):
        dec.qk_norm = "head_weights"
    dec.head = llama.head_kind(c, True)
    dec.logits_mult = float(c.get("logit_scale", default=0.0625))
    return dec


def weights(c, dec, t):
    out = {"embed_tokens.weight": t.take("model.embed_tokens.weight", (dec.vocab, dec.d))}
    hd, _, _ = common.dims(dec)
    for i in range(dec.layers):
        hf, me = f"model.layers.{i}", f"layers.{i}"
        common.norm(out, t, f"{hf}.input_layernorm", f"{me}.input_norm", dec.d, False)
        common.attention(out, t, f"{hf}.self_attn", f"{me}.self_attn", dec)
        if dec.qk_norm:
            for name, n in (("q_norm", dec.heads), ("k_norm", dec.kv_heads or dec.heads)):
                out[f"{me}.self_attn.{name}.weight"] = t.take(f"{hf}.self_attn.{name}.weight",
                                                              (n, hd))
        common.glu(out, t, f"{hf}.mlp", f"{me}.mlp", dec)
    common.norm(out, t, "model.norm", "norm", dec.d, False)
    common.head(out, t, dec)
    return out
