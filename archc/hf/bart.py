"""bart: post-LN encoder-decoder, learned positions with offset 2, a LayerNorm on each
stack's embeddings, GELU FFNs, a head tied to the shared embedding plus `final_logits_bias`."""

from __future__ import annotations

from archc.diagnostics import ArchcError, Diagnostic
from archc.hf import common, llama
from archc.hf.config import HFConfig
from archc.hf.tensors import Tensors


def _shape(c: HFConfig) -> dict:
    if c.get("encoder_attention_heads") != c.get("decoder_attention_heads") or \
            c.get("encoder_ffn_dim") != c.get("decoder_ffn_dim"):
        raise ArchcError([Diagnostic("E0504", "bart with different encoder and decoder widths "
                                     "is not supported yet")])
    return {"vocab": c.get("vocab_size"), "d": c.get("d_model"),
            "heads": c.get("encoder_attention_heads"), "ff": c.get("encoder_ffn_dim"),
            "layers": c.get("encoder_layers"), "dec_layers": c.get("decoder_layers"),
            "max_pos": c.get("max_position_embeddings"),
            "act": llama.act(c.get("activation_function", default="gelu")),
            "scale": c.get("scale_embedding", default=False)}


def describe(c: HFConfig, tensors: Tensors | None = None) -> str:
    s = _shape(c)
    scale = " * sqrt(d)" if s["scale"] else ""
    head = c.with_head()
    lines = [
        f"# {c.architecture or 'bart'} imported from a Hugging Face checkpoint by "
        "`archc import-hf`.",
        "model bart {",
        f"  let vocab = {s['vocab']}, d = {s['d']}, heads = {s['heads']}, ff = {s['ff']}, "
        f"max_pos = {s['max_pos']}, eps = 1e-05,",
        f"      layers = {s['layers']}, decoder_layers = {s['dec_layers']}",
        "",
        *common.SEQ2SEQ_INPUTS,
        "",
        f"  x = embed(input_ids, vocab, d) as shared{scale}",
        "  x = x + pos_embed(input_ids, max_pos, d, offset = 2) as encoder_positions",
        "  x = layer_norm(x, eps) as encoder_embed_norm",
        "  repeat layers as encoder {",
        "    x = layer_norm(x + attention(x, heads, mask = attention_mask) as attention, eps)"
        " as attention_norm",
        f"    x = layer_norm(x + mlp(x, ff, act = {s['act']}) as mlp, eps) as mlp_norm",
        "  }",
        "",
        f"  y = embed(decoder_input_ids, vocab, d, tied = shared){scale}",
        "  y = y + pos_embed(decoder_input_ids, max_pos, d, offset = 2) as decoder_positions",
        "  y = layer_norm(y, eps) as decoder_embed_norm",
        "  repeat decoder_layers as decoder {",
        "    a = attention(y, heads, causal, mask = decoder_attention_mask) as attention",
        "    y = layer_norm(y + a, eps) as attention_norm",
        "    a = attention(y, heads, context = x, context_mask = attention_mask)"
        " as cross_attention",
        "    y = layer_norm(y + a, eps) as cross_attention_norm",
        f"    y = layer_norm(y + mlp(y, ff, act = {s['act']}) as mlp, eps) as mlp_norm",
        "  }",
        "  output logits = lm_head(y, vocab, tied = shared, bias = true)" if head else
        "  output last_hidden_state = y",
        "}", ""]
    return "\n".join(lines)


def _attention(out, t: Tensors, hf: str, me: str, d: int) -> None:
    for theirs, mine in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("out_proj", "o")):
        common.linear(out, t, f"{hf}.{theirs}", f"{me}.{mine}", d, d, True)


def weights(c: HFConfig, text: str, t: Tensors) -> common.Weights:
    s = _shape(c)
    d, p = s["d"], "model." if t.has("model.shared.weight") else ""
    out = {"shared.weight": t.take(f"{p}shared.weight", (s["vocab"], d))}
    for stack, n in (("encoder", s["layers"]), ("decoder", s["dec_layers"])):
        if t.has(f"{p}{stack}.embed_tokens.weight"):
            t.take(f"{p}{stack}.embed_tokens.weight")  # a tied copy of `shared`
        out[f"{stack}_positions.weight"] = t.take(f"{p}{stack}.embed_positions.weight",
                                                  (s["max_pos"] + 2, d))
        common.norm(out, t, f"{p}{stack}.layernorm_embedding", f"{stack}_embed_norm", d)
        for i in range(n):
            hf, me = f"{p}{stack}.layers.{i}", f"{stack}.{i}"
            _attention(out, t, f"{hf}.self_attn", f"{me}.attention", d)
            common.norm(out, t, f"{hf}.self_attn_layer_norm", f"{me}.attention_norm", d)
            if stack == "decoder":
                _attention(out, t, f"{hf}.encoder_attn", f"{me}.cross_attention", d)
                common.norm(out, t, f"{hf}.encoder_attn_layer_norm",
                            f"{me}.cross_attention_norm", d)
            common.linear(out, t, f"{hf}.fc1", f"{me}.mlp.fc", d, s["ff"], True)
            common.linear(out, t, f"{hf}.fc2", f"{me}.mlp.proj", s["ff"], d, True)
            common.norm(out, t, f"{hf}.final_layer_norm", f"{me}.mlp_norm", d)
    if c.with_head():
        out["lm_head.bias"] = t.take("final_logits_bias", (1, s["vocab"]))[0]
        if t.has("lm_head.weight"):
            t.take("lm_head.weight")  # tied to `shared`
    return out
