"""gpt_neox: parallel residual with two LayerNorms (or sequential), partial rotary, fused qkv
interleaved per head, GELU MLP, untied `embed_out` head."""

from __future__ import annotations

from archc.hf import common, llama
from archc.hf.decoder import Decoder


def describe(c, tensors=None):
    d, heads = c.get("hidden_size"), c.get("num_attention_heads")
    bias = c.get("attention_bias", default=True)
    return Decoder(
        name="gpt_neox", vocab=c.get("vocab_size"), d=d, heads=heads,
        layers=c.get("num_hidden_layers"), ff=c.get("intermediate_size"),
        eps=float(c.get("layer_norm_eps", default=1e-5)), norm="layer_norm",
        rope=c.rope_options(theta=c.get("rotary_emb_base", default=10000.0),
                            fraction=c.get("rotary_pct", default=0.25)),
        qkv_bias=bias, out_bias=bias,
        block="parallel_two_norms" if c.get("use_parallel_residual", default=True)
        else "sequential",
        ffn="mlp", act=llama.act(c.get("hidden_act", default="gelu")), ffn_bias=True,
        head=llama.head_kind(c, False))


def weights(c, dec, t):
    out = {"embed_tokens.weight": t.take("gpt_neox.embed_in.weight", (dec.vocab, dec.d))}
    for i in range(dec.layers):
        hf, me = f"gpt_neox.layers.{i}", f"layers.{i}"
        common.norm(out, t, f"{hf}.input_layernorm", f"{me}.input_norm", dec.d)
        common.norm(out, t, f"{hf}.post_attention_layernorm", f"{me}.post_attention_norm", dec.d)
        qkv = t.take(f"{hf}.attention.query_key_value.weight", (3 * dec.d, dec.d))
        b = t.take(f"{hf}.attention.query_key_value.bias", (3 * dec.d,)) if dec.qkv_bias else None
        common.split_qkv(out, f"{me}.self_attn", qkv, b, "per_head", dec)
        common.linear(out, t, f"{hf}.attention.dense", f"{me}.self_attn.o", dec.d, dec.d,
                      dec.out_bias)
        common.mlp(out, t, f"{hf}.mlp", f"{me}.mlp", dec, ("dense_h_to_4h", "dense_4h_to_h"))
    common.norm(out, t, "gpt_neox.final_layer_norm", "norm", dec.d)
    common.head(out, t, dec, hf="embed_out")
    return out
