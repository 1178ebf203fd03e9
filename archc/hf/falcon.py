"""falcon: parallel attention + MLP (one LayerNorm; two in the new decoder architecture),
multi-query or grouped kv heads with a fused qkv, rotary positions, GELU MLP, tied head.

With `alibi` (Falcon-RW) there are no rotary positions but ALiBi's bias, in the form that
transformers' default (SDPA) attention and the original Falcon-RW code compute.
`build_alibi_tensor` works in bfloat16 whatever the checkpoint's dtype: the slopes, the key
positions (not all exact past 256) and their product are each rounded to bfloat16. The bias is
added to the scores before they are scaled: softmax((q k^T + alibi) / sqrt(head_dim)). The
spec writes the roundings out (`bfloat16_round`) and folds the scale into the bias.
transformers' eager attention differs: it adds the bias to the scores and again through the
mask it folds the bias into, a doubling that neither SDPA nor the original code has, so it is
not followed here (the fixture's reference logits come from SDPA).
"""

from __future__ import annotations

from archc.hf import common, llama
from archc.hf.decoder import Decoder

# Round to nearest bfloat16, ties to even, with float32 arithmetic: adding c = 1.5 * 2^(e + 16)
# (e = floor(log2 x)) puts x + c in a binade whose float32 spacing is 2^(e - 7), bfloat16's
# spacing at x, and the float32 add rounds to it (ties to even); subtracting c is exact. An e
# off by one near a power of two (log's error) rounds x to the same value.
_BF16 = """\
# bfloat16 rounding of x >= 0 in float32 arithmetic: Falcon builds its ALiBi in bfloat16
block bfloat16_round(x) {
  e = floor(log(maximum(x, 1e-30)) / log(2.0))
  c = 2.0 ** (e + 16.0) * 1.5
  return (x + c) - c
}

"""
_LIBRARY_ALIBI = "  bias = alibi(attention_mask, heads)\n"
_FALCON_ALIBI = """\
  # ALiBi as Falcon builds it: slopes, positions and their product in bfloat16, scaled with
  # the scores
  slopes = bfloat16_round(alibi_slopes(heads))
  pos = bfloat16_round(cast(mask_positions(attention_mask) * attention_mask, float32))
  pos = reshape(pos, [dim(attention_mask, 0), 1, 1, -1])
  bias = bfloat16_round(pos * reshape(slopes, [heads, 1, 1])) / sqrt(d / heads)
"""


class _AlibiDecoder(Decoder):
    """The template with Falcon's ALiBi in place of the library's float32 one."""

    def render(self) -> str:
        text = super().render()
        assert _LIBRARY_ALIBI in text, "the decoder template no longer writes `alibi(...)`"
        head, model = text.split("model ", 1)
        return head + _BF16 + "model " + model.replace(_LIBRARY_ALIBI, _FALCON_ALIBI)


def describe(c, tensors=None):
    d, heads = c.get("hidden_size"), c.get("num_attention_heads")
    new = c.get("new_decoder_architecture", default=False)
    kv = c.get("num_kv_heads", default=heads) if new else \
        (1 if c.get("multi_query", default=True) else heads)
    parallel = c.get("parallel_attn", default=True)
    two_norms = new and (c.get("num_ln_in_parallel_attn", default=2) == 2)
    bias = c.get("bias", default=False)
    alibi = c.get("alibi", default=False)
    return (_AlibiDecoder if alibi else Decoder)(
        name="falcon", vocab=c.get("vocab_size"), d=d, heads=heads,
        layers=c.get("num_hidden_layers"), ff=c.get("ffn_hidden_size", default=None) or 4 * d,
        eps=float(c.get("layer_norm_epsilon", default=1e-5)), norm="layer_norm", kv_heads=kv,
        rope=None if alibi else c.rope_options(), alibi=alibi, qkv_bias=bias, out_bias=bias,
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
