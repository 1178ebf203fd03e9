"""t5: encoder-decoder with RMSNorm (no mean, no bias), bucketed relative position bias
computed once per stack and shared by its layers, no 1/sqrt(d) score scaling, ReLU FFN (or
gated GELU for T5 v1.1: `wi_0`, `wi_1`), cross-attention, and a head tied to the shared
embedding with the d_model^-0.5 output scale (v1.1: no scale; untied when the checkpoint has
its own `lm_head.weight`). mt5 is the same model with a larger vocabulary (its module reuses
this one)."""

from __future__ import annotations

from archc.hf import common, llama
from archc.hf.config import HFConfig
from archc.hf.tensors import Tensors


def _shape(c: HFConfig) -> dict:
    proj = c.get("feed_forward_proj", default="relu")
    act = llama.act("gelu_new" if proj == "gated-gelu" else proj.split("-")[-1])
    return {"vocab": c.get("vocab_size"), "d": c.get("d_model"), "heads": c.get("num_heads"),
            "d_kv": c.get("d_kv"), "ff": c.get("d_ff"), "layers": c.get("num_layers"),
            "dec_layers": c.get("num_decoder_layers", default=None) or c.get("num_layers"),
            "buckets": c.get("relative_attention_num_buckets", default=32),
            "max_distance": c.get("relative_attention_max_distance", default=128),
            "eps": float(c.get("layer_norm_epsilon", default=1e-6)), "act": act,
            "gated": proj.startswith("gated-")}


def _head(c: HFConfig, has_lm_head: bool | None) -> tuple[bool, bool]:
    """(tied, scaled): transformers 5 writes `scale_decoder_outputs`; 4.x configs say
    `tie_word_embeddings: false` for v1.1 (untied, unscaled)."""
    tie = c.get("tie_word_embeddings", default=True)
    scaled = c.get("scale_decoder_outputs", default=tie)
    tied = not has_lm_head if has_lm_head is not None else tie
    return tied, bool(scaled)


def spec(c: HFConfig, has_lm_head: bool | None = None, scaled: bool | None = None) -> str:
    s = _shape(c)
    tied, scaled_by_config = _head(c, has_lm_head)
    scaled = scaled_by_config if scaled is None else scaled
    attn = "heads, head_dim = d_kv, bias = false, scale = 1"
    ffn = (f"glu(h, ff, act = {s['act']}, bias = false)" if s["gated"] else
           f"mlp(h, ff, act = {s['act']}, bias = false)")
    y = "y * d ** -0.5" if scaled else "y"
    head = f"lm_head({y}, vocab, tied = shared)" if tied else f"lm_head({y}, vocab)"
    return "\n".join([
        f"# {c.architecture or 't5'} imported from a Hugging Face checkpoint by "
        "`archc import-hf`.",
        f"model {c.model_type} {{",
        f"  let vocab = {s['vocab']}, d = {s['d']}, heads = {s['heads']}, d_kv = {s['d_kv']}, "
        f"ff = {s['ff']}, eps = {s['eps']!r},",
        f"      layers = {s['layers']}, decoder_layers = {s['dec_layers']}, "
        f"buckets = {s['buckets']}, max_distance = {s['max_distance']}",
        "",
        *common.SEQ2SEQ_INPUTS,
        "",
        "  x = embed(input_ids, vocab, d) as shared",
        "  bias = relative_bias(x, heads, buckets, max_distance) as encoder_relative_bias",
        "  repeat layers as encoder {",
        "    h = rms_norm(x, eps) as attention_norm",
        f"    x = x + attention(h, {attn}, mask = attention_mask,",
        "                      position_bias = bias) as attention",
        "    h = rms_norm(x, eps) as mlp_norm",
        f"    x = x + {ffn} as mlp",
        "  }",
        "  enc = rms_norm(x, eps) as encoder_norm",
        "",
        "  y = embed(decoder_input_ids, vocab, d, tied = shared)",
        "  bias = relative_bias(y, heads, buckets, max_distance, bidirectional = false)"
        " as decoder_relative_bias",
        "  repeat decoder_layers as decoder {",
        "    h = rms_norm(y, eps) as attention_norm",
        f"    y = y + attention(h, {attn}, causal, mask = decoder_attention_mask,",
        "                      position_bias = bias) as attention",
        "    h = rms_norm(y, eps) as cross_attention_norm",
        f"    y = y + attention(h, {attn}, context = enc,",
        "                      context_mask = attention_mask) as cross_attention",
        "    h = rms_norm(y, eps) as mlp_norm",
        f"    y = y + {ffn} as mlp",
        "  }",
        "  y = rms_norm(y, eps) as decoder_norm",
        f"  output logits = {head}",
        "}", ""])


def describe(c: HFConfig, tensors: Tensors | None = None) -> str:
    """Whether the head is tied shows in the tensors (a 4.x v1.1 file has its own
    `lm_head.weight`); with the config alone it follows `tie_word_embeddings`."""
    return spec(c, None if tensors is None else tensors.has("lm_head.weight"))


def _attention(out, t: Tensors, hf: str, me: str, s: dict) -> None:
    inner = s["heads"] * s["d_kv"]
    for n in "qkv":
        out[f"{me}.{n}.weight"] = t.linear(f"{hf}.{n}.weight", s["d"], inner)
    out[f"{me}.o.weight"] = t.linear(f"{hf}.o.weight", inner, s["d"])


def _ffn(out, t: Tensors, hf: str, me: str, s: dict) -> None:
    d, ff = s["d"], s["ff"]
    if s["gated"]:
        for theirs, mine in (("wi_0", "gate"), ("wi_1", "up")):
            out[f"{me}.{mine}.weight"] = t.linear(f"{hf}.{theirs}.weight", d, ff)
        out[f"{me}.down.weight"] = t.linear(f"{hf}.wo.weight", ff, d)
    else:
        out[f"{me}.fc.weight"] = t.linear(f"{hf}.wi.weight", d, ff)
        out[f"{me}.proj.weight"] = t.linear(f"{hf}.wo.weight", ff, d)


def weights(c: HFConfig, text: str, t: Tensors) -> common.Weights:
    s = _shape(c)
    d = s["d"]
    out = {"shared.weight": t.take("shared.weight", (s["vocab"], d))}
    for stack, n, me in (("encoder", s["layers"], "encoder"),
                         ("decoder", s["dec_layers"], "decoder")):
        if t.has(f"{stack}.embed_tokens.weight"):
            t.take(f"{stack}.embed_tokens.weight")  # a tied copy of `shared`
        out[f"{me}_relative_bias.weight"] = t.take(
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            (s["buckets"], s["heads"]))
        for i in range(n):
            hf = f"{stack}.block.{i}.layer"
            _attention(out, t, f"{hf}.0.SelfAttention", f"{me}.{i}.attention", s)
            common.norm(out, t, f"{hf}.0.layer_norm", f"{me}.{i}.attention_norm", d, False)
            ffn = 1
            if stack == "decoder":
                _attention(out, t, f"{hf}.1.EncDecAttention", f"{me}.{i}.cross_attention", s)
                common.norm(out, t, f"{hf}.1.layer_norm", f"{me}.{i}.cross_attention_norm", d,
                            False)
                ffn = 2
            _ffn(out, t, f"{hf}.{ffn}.DenseReluDense", f"{me}.{i}.mlp", s)
            common.norm(out, t, f"{hf}.{ffn}.layer_norm", f"{me}.{i}.mlp_norm", d, False)
        common.norm(out, t, f"{stack}.final_layer_norm", f"{me}_norm", d, False)
    if t.has("lm_head.weight"):
        out["lm_head.weight"] = t.linear("lm_head.weight", d, s["vocab"])
    return out
