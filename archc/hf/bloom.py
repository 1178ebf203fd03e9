"""bloom: ALiBi instead of positions, LayerNorm on the embeddings, fused qkv interleaved per
head, GELU (tanh) MLP, tied head; with `apply_residual_connection_post_layernorm` each residual
is taken after the norm (x = h + f(h), h = norm(x))."""

from __future__ import annotations

from archc.hf import common, llama
from archc.hf.decoder import Decoder


def describe(c, tensors=None):
    d = c.get("hidden_size", "n_embed")
    return Decoder(
        name="bloom", vocab=c.get("vocab_size"), d=d, heads=c.get("n_head", "num_attention_heads"),
        layers=c.get("n_layer", "num_hidden_layers"), ff=4 * d,
        eps=float(c.get("layer_norm_epsilon", default=1e-5)), norm="layer_norm",
        embed_norm=True, alibi=True, qkv_bias=True, out_bias=True, ffn="mlp", act="gelu_tanh",
        ffn_bias=True, head=llama.head_kind(c, True),
        residual_from_norm=c.get("apply_residual_connection_post_layernorm", default=False))


def weights(c, dec, t):
    out = {"embed_tokens.weight": t.take("transformer.word_embeddings.weight",
                                         (dec.vocab, dec.d))}
    common.norm(out, t, "transformer.word_embeddings_layernorm", "embed_norm", dec.d)
    for i in range(dec.layers):
        hf, me = f"transformer.h.{i}", f"layers.{i}"
        common.norm(out, t, f"{hf}.input_layernorm", f"{me}.input_norm", dec.d)
        common.norm(out, t, f"{hf}.post_attention_layernorm", f"{me}.post_attention_norm", dec.d)
        w = t.take(f"{hf}.self_attention.query_key_value.weight", (3 * dec.d, dec.d))
        b = t.take(f"{hf}.self_attention.query_key_value.bias", (3 * dec.d,))
        common.split_qkv(out, f"{me}.self_attn", w, b, "per_head", dec)
        common.linear(out, t, f"{hf}.self_attention.dense", f"{me}.self_attn.o", dec.d, dec.d,
                      True)
        common.mlp(out, t, f"{hf}.mlp", f"{me}.mlp", dec, ("dense_h_to_4h", "dense_4h_to_h"))
    common.norm(out, t, "transformer.ln_f", "norm", dec.d)
    common.head(out, t, dec)
    return out
