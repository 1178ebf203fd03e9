"""phi: one LayerNorm feeds attention and MLP in parallel; partial rotary; biases everywhere;
GELU (tanh) MLP; lm_head with bias; optional per-head q/k LayerNorm (`qk_layernorm`)."""

from __future__ import annotations

from archc.hf import common, llama
from archc.hf.decoder import Decoder


def describe(c, tensors=None):
    d, heads = c.get("hidden_size"), c.get("num_attention_heads")
    return Decoder(
        name="phi", vocab=c.get("vocab_size"), d=d, heads=heads,
        layers=c.get("num_hidden_layers"), ff=c.get("intermediate_size"),
        eps=float(c.get("layer_norm_eps", default=1e-5)), norm="layer_norm",
        kv_heads=c.get("num_key_value_heads", default=heads),
        rope=c.rope_options(fraction=0.5),
        qkv_bias=True, out_bias=True, block="parallel", ffn="mlp",
        act=llama.act(c.get("hidden_act", default="gelu_new")), ffn_bias=True,
        head=llama.head_kind(c, False), head_bias=True,
        qk_norm="head" if c.get("qk_layernorm", default=False) else None)


def weights(c, dec, t):
    out = {"embed_tokens.weight": t.take("model.embed_tokens.weight", (dec.vocab, dec.d))}
    for i in range(dec.layers):
        hf, me = f"model.layers.{i}", f"layers.{i}"
        common.norm(out, t, f"{hf}.input_layernorm", f"{me}.input_norm", dec.d)
        common.attention(out, t, f"{hf}.self_attn", f"{me}.self_attn", dec,
                         proj=("q_proj", "k_proj", "v_proj", "dense"))
        if dec.qk_norm:  # a LayerNorm over each head, shared by the heads
            hd, _, _ = common.dims(dec)
            for theirs, mine in (("q_layernorm", "q_norm"), ("k_layernorm", "k_norm")):
                common.norm(out, t, f"{hf}.self_attn.{theirs}", f"{me}.self_attn.{mine}", hd)
        common.mlp(out, t, f"{hf}.mlp", f"{me}.mlp", dec)
    common.norm(out, t, "model.final_layernorm", "norm", dec.d)
    common.head(out, t, dec)
    return out
