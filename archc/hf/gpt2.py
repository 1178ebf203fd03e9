"""gpt2: learned positions, pre-LN, fused `c_attn` in Conv1D layout (already [in, out]),
GELU (tanh) MLP, tied head."""

from __future__ import annotations

from archc.hf import common, llama
from archc.hf.decoder import Decoder


def describe(c, tensors=None):
    d = c.get("n_embd", "hidden_size")
    return Decoder(
        name="gpt2", vocab=c.get("vocab_size"), d=d, heads=c.get("n_head"),
        layers=c.get("n_layer"), ff=c.get("n_inner", default=None) or 4 * d,
        eps=float(c.get("layer_norm_epsilon", default=1e-5)), norm="layer_norm",
        learned_positions=c.get("n_positions", "max_position_embeddings"),
        qkv_bias=True, out_bias=True, ffn="mlp",
        act=llama.act(c.get("activation_function", default="gelu_new")), ffn_bias=True,
        head=llama.head_kind(c, True))


def weights(c, dec, t):
    d = dec.d
    out = {"embed_tokens.weight": t.take("transformer.wte.weight", (dec.vocab, d)),
           "embed_positions.weight": t.take("transformer.wpe.weight", (dec.learned_positions, d))}
    for i in range(dec.layers):
        hf, me = f"transformer.h.{i}", f"layers.{i}"
        common.norm(out, t, f"{hf}.ln_1", f"{me}.input_norm", d)
        common.norm(out, t, f"{hf}.ln_2", f"{me}.post_attention_norm", d)
        w = t.take(f"{hf}.attn.c_attn.weight", (d, 3 * d))  # Conv1D: [in, out]
        b = t.take(f"{hf}.attn.c_attn.bias", (3 * d,))
        common.split_qkv(out, f"{me}.self_attn", w.T, b, "blocks", dec)
        out[f"{me}.self_attn.o.weight"] = t.take(f"{hf}.attn.c_proj.weight", (d, d))
        out[f"{me}.self_attn.o.bias"] = t.take(f"{hf}.attn.c_proj.bias", (d,))
        out[f"{me}.mlp.fc.weight"] = t.take(f"{hf}.mlp.c_fc.weight", (d, dec.ff))
        out[f"{me}.mlp.fc.bias"] = t.take(f"{hf}.mlp.c_fc.bias", (dec.ff,))
        out[f"{me}.mlp.proj.weight"] = t.take(f"{hf}.mlp.c_proj.weight", (dec.ff, d))
        out[f"{me}.mlp.proj.bias"] = t.take(f"{hf}.mlp.c_proj.bias", (d,))
    common.norm(out, t, "transformer.ln_f", "norm", d)
    common.head(out, t, dec)
    return out
