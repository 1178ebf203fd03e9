"""falcon: parallel attention + MLP (one LayerNorm; two in the new decoder architecture),
multi-query or grouped kv heads with a fused qkv, rotary positions, GELU MLP, tied head."""

from __future__ import annotations

from archc.diagnostics import ArchcError, Diagnostic
from archc.hf import common, llama
from archc.hf.decoder import Decoder


def describe(c, tensors=None):
    if c.get("alibi", default=False):
        raise ArchcError([Diagnostic("E0504", "falcon with `alibi` is not supported yet")])
    d, heads = c.get("hidden_size"), c.get("num_attention_heads")
    new = c.get("new_decoder_architecture", default=False)
    kv = c.get("num_kv_heads", default=heads) if new else \
        (1 if c.get("multi_query", default=True) else heads)
    parallel = c.get("parallel_attn", default=True)
    two_norms = new and (c.get("num_ln_in_parallel_attn", default=2) == 2)
    bias = c.get("bias", default=False)
    return Decoder(
        name="falcon", vocab=c.get("vocab_size"), d=d, heads=heads,
        layers=c.get("num_hidden_layers"), ff=c.get("ffn_hidden_size", default=None) or 4 * d,
        eps=float(c.get("layer_norm_epsilon", default=1e-5)), norm="layer_norm", kv_heads=kv,
        rope=c.rope_options(), qkv_bias=bias, out_bias=bias,
        block=("parallel_two_norms" if two_norms else "parallel") if new or parallel
        else "sequential",
        ffn="mlp", act=llama.act(c.get("activation", default="gelu")), ffn_bias=bias,
        head=llama.head_kind(c, True))


def weights(c, dec, t):
    out = {"embed_tokens.weight": t.take("transformer.word_embeddings.weight",
                                         (dec.vocab, dec.d))}
    _, q, kv = common.dims(dec)
    new = c.get("new_decoder_architecture", default=False)
    layout = "per_group" if new else ("blocks" if dec.kv_heads == 1 else "per_head")
    for i in range(dec.layers):
        hf, me = f"transformer.h.{i}", f"layers.{i}"
        if dec.block == "parallel_two_norms":
            common.norm(out, t, f"{hf}.ln_attn", f"{me}.input_norm", dec.d)
            common.norm(out, t, f"{hf}.ln_mlp", f"{me}.post_attention_norm", dec.d)
        else:
            common.norm(out, t, f"{hf}.input_layernorm", f"{me}.input_norm", dec.d)
            if dec.block == "sequential":
                common.norm(out, t, f"{hf}.post_attention_layernorm",
                            f"{me}.post_attention_norm", dec.d)
        w = t.take(f"{hf}.self_attention.query_key_value.weight", (q + 2 * kv, dec.d))
        b = t.take(f"{hf}.self_attention.query_key_value.bias") if dec.qkv_bias else None
        common.split_qkv(out, f"{me}.self_attn", w, b, layout, dec)
        common.linear(out, t, f"{hf}.self_attention.dense", f"{me}.self_attn.o", q, dec.d,
                      dec.out_bias)
        common.mlp(out, t, f"{hf}.mlp", f"{me}.mlp", dec, ("dense_h_to_4h", "dense_4h_to_h"))
    common.norm(out, t, "transformer.ln_f", "norm", dec.d)
    common.head(out, t, dec)
    return out
