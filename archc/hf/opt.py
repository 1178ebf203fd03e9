"""opt: learned positions counted over the attention mask with offset 2, pre-LN, ReLU MLP,
biases, tied head. OPT-350m: post-LN (`do_layer_norm_before` false: norm(x + f(x)), no final
norm) and embeddings `word_embed_proj_dim` wide, projected in and out (`project_in/out`)."""

from __future__ import annotations

from archc.hf import common, llama
from archc.hf.decoder import Decoder


def describe(c, tensors=None):
    d = c.get("hidden_size")
    pre_ln = c.get("do_layer_norm_before", default=True)
    embed_dim = c.get("word_embed_proj_dim", default=d)
    bias = c.get("enable_bias", default=True)
    return Decoder(
        block="sequential" if pre_ln else "post_ln", final_norm=pre_ln,
        embed_dim=0 if embed_dim == d else embed_dim,
        name="opt", vocab=c.get("vocab_size"), d=d, heads=c.get("num_attention_heads"),
        layers=c.get("num_hidden_layers"), ff=c.get("ffn_dim"), eps=1e-5, norm="layer_norm",
        learned_positions=c.get("max_position_embeddings"), position_offset=2,
        positions_from_mask=True, qkv_bias=bias, out_bias=bias, ffn="mlp",
        act=llama.act(c.get("activation_function", default="relu")), ffn_bias=bias,
        head=llama.head_kind(c, True))


def weights(c, dec, t):
    p = "model.decoder"
    e = dec.embed_dim or dec.d
    out = {"embed_tokens.weight": t.take(f"{p}.embed_tokens.weight", (dec.vocab, e)),
           "embed_positions.weight": t.take(f"{p}.embed_positions.weight",
                                            (dec.learned_positions + 2, dec.d))}
    for i in range(dec.layers):
        hf, me = f"{p}.layers.{i}", f"layers.{i}"
        common.norm(out, t, f"{hf}.self_attn_layer_norm", f"{me}.input_norm", dec.d)
        common.attention(out, t, f"{hf}.self_attn", f"{me}.self_attn", dec,
                         proj=("q_proj", "k_proj", "v_proj", "out_proj"))
        common.norm(out, t, f"{hf}.final_layer_norm", f"{me}.post_attention_norm", dec.d)
        common.mlp(out, t, hf, f"{me}.mlp", dec)
    if dec.final_norm:
        common.norm(out, t, f"{p}.final_layer_norm", "norm", dec.d)
    if dec.embed_dim:
        common.linear(out, t, f"{p}.project_in", "project_in", e, dec.d, False)
        common.linear(out, t, f"{p}.project_out", "project_out", dec.d, e, False)
    common.head(out, t, dec)
    return out
