"""bart and its relatives, one renderer for the four layouts of the `BartForConditionalGeneration`
family: learned positions with offset 2 (bart, mbart) or computed sinusoidal positions with sines
then cosines (marian, pegasus: `sinusoidal_halves`, not stored, or stored and ignored); post-LN
layers (bart, marian) or pre-LN layers with a final norm on each stack (mbart, pegasus); a
LayerNorm on each stack's embeddings (bart, mbart); embeddings scaled by sqrt(d) when
`scale_embedding`. The head is tied to the shared embedding, plus `final_logits_bias`, a buffer
(`logits_bias`), which `archc stats` does not count as a parameter."""

from __future__ import annotations

from dataclasses import dataclass

from archc.diagnostics import ArchcError, Diagnostic
from archc.hf import common, llama
from archc.hf.config import HFConfig
from archc.hf.tensors import Tensors


@dataclass(frozen=True)
class Layout:
    sinusoidal: bool = False  # positions computed (marian, pegasus), else learned, offset 2
    embed_norm: bool = True   # `layernorm_embedding` on each stack's embeddings
    pre_ln: bool = False      # norms before each sublayer, and a final norm on each stack


BART = Layout()


def _shape(c: HFConfig) -> dict:
    if c.get("encoder_attention_heads") != c.get("decoder_attention_heads") or \
            c.get("encoder_ffn_dim") != c.get("decoder_ffn_dim"):
        raise ArchcError([Diagnostic("E0504", f"{c.model_type} with different encoder and "
                                     "decoder widths is not supported yet")])
    return {"vocab": c.get("vocab_size"), "d": c.get("d_model"),
            "heads": c.get("encoder_attention_heads"), "ff": c.get("encoder_ffn_dim"),
            "layers": c.get("encoder_layers"), "dec_layers": c.get("decoder_layers"),
            "max_pos": c.get("max_position_embeddings"),
            "act": llama.act(c.get("activation_function", default="gelu")),
            "scale": c.get("scale_embedding", default=False)}


def has_head(c: HFConfig) -> bool:
    """`...ForConditionalGeneration` and Marian's `MarianMTModel` carry the LM head."""
    return c.with_head() or c.architecture.endswith("MTModel")


def _sublayer(v: str, norm: str, call: str, rest: str, pre: bool) -> str:
    """`v + call(v, rest)` with its norm before (pre-LN) or after the residual (post-LN)."""
    if pre:
        return f"    {v} = {v} + {call}(layer_norm({v}, eps) as {norm}, {rest}"
    return f"    {v} = layer_norm({v} + {call}({v}, {rest}, eps) as {norm}"


def _stack(v: str, ids: str, stack: str, s: dict, lay: Layout) -> list[str]:
    scale = " * sqrt(d)" if s["scale"] else ""
    embed = "embed(input_ids, vocab, d) as shared" if v == "x" else \
        "embed(decoder_input_ids, vocab, d, tied = shared)"
    pos = f"sinusoidal_halves({ids}, d)" if lay.sinusoidal else \
        f"pos_embed({ids}, max_pos, d, offset = 2) as {stack}_positions"
    lines = [f"  {v} = {embed}{scale}", f"  {v} = {v} + {pos}"]
    if lay.embed_norm:
        lines.append(f"  {v} = layer_norm({v}, eps) as {stack}_embed_norm")
    mlp = f"ff, act = {s['act']}) as mlp"
    if v == "x":
        lines += ["  repeat layers as encoder {",
                  _sublayer(v, "attention_norm", "attention",
                            "heads, mask = attention_mask) as attention", lay.pre_ln)]
    else:
        lines += ["  repeat decoder_layers as decoder {",
                  _sublayer(v, "attention_norm", "attention",
                            "heads, causal, mask = decoder_attention_mask) as attention",
                            lay.pre_ln),
                  _sublayer(v, "cross_attention_norm", "attention", "heads, context = enc, "
                            "context_mask = attention_mask) as cross_attention", lay.pre_ln)]
    lines += [_sublayer(v, "mlp_norm", "mlp", mlp, lay.pre_ln), "  }"]
    if lay.pre_ln:
        lines.append(f"  {v} = layer_norm({v}, eps) as {stack}_norm")
    return lines


def render(c: HFConfig, lay: Layout) -> str:
    s = _shape(c)
    head = has_head(c)
    pos = "" if lay.sinusoidal else f", max_pos = {s['max_pos']}"
    return "\n".join([
        f"# {c.architecture or c.model_type} imported from a Hugging Face checkpoint by "
        "`archc import-hf`.",
        f"model {c.model_type} {{",
        f"  let vocab = {s['vocab']}, d = {s['d']}, heads = {s['heads']}, ff = {s['ff']}{pos}, "
        "eps = 1e-05,",
        f"      layers = {s['layers']}, decoder_layers = {s['dec_layers']}",
        "",
        *common.SEQ2SEQ_INPUTS,
        "",
        *_stack("x", "input_ids", "encoder", s, lay),
        "  enc = x",
        "",
        *_stack("y", "decoder_input_ids", "decoder", s, lay),
        "  output logits = logits_bias(lm_head(y, vocab, tied = shared)) as _" if head else
        "  output last_hidden_state = y",
        "}", ""])


def describe(c: HFConfig, tensors: Tensors | None = None) -> str:
    return render(c, BART)


def _attention(out, t: Tensors, hf: str, me: str, d: int) -> None:
    for theirs, mine in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("out_proj", "o")):
        common.linear(out, t, f"{hf}.{theirs}", f"{me}.{mine}", d, d, True)


def _layer(out, t: Tensors, hf: str, me: str, s: dict, cross: bool) -> None:
    d = s["d"]
    _attention(out, t, f"{hf}.self_attn", f"{me}.attention", d)
    common.norm(out, t, f"{hf}.self_attn_layer_norm", f"{me}.attention_norm", d)
    if cross:
        _attention(out, t, f"{hf}.encoder_attn", f"{me}.cross_attention", d)
        common.norm(out, t, f"{hf}.encoder_attn_layer_norm", f"{me}.cross_attention_norm", d)
    common.linear(out, t, f"{hf}.fc1", f"{me}.mlp.fc", d, s["ff"], True)
    common.linear(out, t, f"{hf}.fc2", f"{me}.mlp.proj", s["ff"], d, True)
    common.norm(out, t, f"{hf}.final_layer_norm", f"{me}.mlp_norm", d)


def layout_weights(c: HFConfig, t: Tensors, lay: Layout) -> common.Weights:
    s = _shape(c)
    d, p = s["d"], "model." if t.has("model.shared.weight") else ""
    out = {"shared.weight": t.take(f"{p}shared.weight", (s["vocab"], d))}
    for stack, n in (("encoder", s["layers"]), ("decoder", s["dec_layers"])):
        if t.has(f"{p}{stack}.embed_tokens.weight"):
            t.take(f"{p}{stack}.embed_tokens.weight")  # a tied copy of `shared`
        positions = f"{p}{stack}.embed_positions.weight"
        if not lay.sinusoidal:
            out[f"{stack}_positions.weight"] = t.take(positions, (s["max_pos"] + 2, d))
        elif t.has(positions):
            t.take(positions)  # the sinusoid itself, which the spec computes
        if lay.embed_norm:
            common.norm(out, t, f"{p}{stack}.layernorm_embedding", f"{stack}_embed_norm", d)
        for i in range(n):
            _layer(out, t, f"{p}{stack}.layers.{i}", f"{stack}.{i}", s, stack == "decoder")
        if lay.pre_ln:
            common.norm(out, t, f"{p}{stack}.layer_norm", f"{stack}_norm", d)
    if has_head(c):
        out["final_logits_bias"] = t.take("final_logits_bias", (1, s["vocab"]))[0]
        if t.has("lm_head.weight"):
            t.take("lm_head.weight")  # tied to `shared`
    return out


def weights(c: HFConfig, text: str, t: Tensors) -> common.Weights:
    return layout_weights(c, t, BART)
