"""gptj: parallel block from one LayerNorm, interleaved (rotate-every-two) RoPE on the first
rotary_dim dims, no attention biases, GELU (tanh) MLP, lm_head with bias."""

from __future__ import annotations

from archc.hf import common, llama
from archc.hf.decoder import Decoder


def describe(c, tensors=None):
    d = c.get("n_embd", "hidden_size")
    return Decoder(
        name="gptj", vocab=c.get("vocab_size"), d=d, heads=c.get("n_head"),
        layers=c.get("n_layer"), ff=c.get("n_inner", default=None) or 4 * d,
        eps=float(c.get("layer_norm_epsilon", default=1e-5)), norm="layer_norm",
        rope={"theta": 10000.0, "dim": c.get("rotary_dim", default=None) or d //
              c.get("n_head"), "interleaved": True},
        block="parallel", ffn="mlp", act=llama.act(c.get("activation_function",
                                                         default="gelu_new")),
        ffn_bias=True, head=llama.head_kind(c, False), head_bias=True)


def weights(c, dec, t):
    out = {"embed_tokens.weight": t.take("transformer.wte.weight", (dec.vocab, dec.d))}
    for i in range(dec.layers):
        hf, me = f"transformer.h.{i}", f"layers.{i}"
        common.norm(out, t, f"{hf}.ln_1", f"{me}.input_norm", dec.d)
        common.attention(out, t, f"{hf}.attn", f"{me}.self_attn", dec,
                         proj=("q_proj", "k_proj", "v_proj", "out_proj"))
        common.mlp(out, t, f"{hf}.mlp", f"{me}.mlp", dec, ("fc_in", "fc_out"))
    common.norm(out, t, "transformer.ln_f", "norm", dec.d)
    common.head(out, t, dec)
    return out
