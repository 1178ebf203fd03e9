"""bert: post-LN encoder with word + position + token-type embeddings and an embedding
LayerNorm; heads by class: pooler (`...Model`), MLM (`...ForMaskedLM`), MLM + next-sentence
(`BertForPreTraining`). The roberta and longformer modules reuse it with their positions
(counted from `padding_idx + 1` over non-padding tokens) and, for longformer, local + global
attention."""

from __future__ import annotations

from archc.diagnostics import ArchcError, Diagnostic
from archc.hf import common, llama
from archc.hf.config import HFConfig
from archc.hf.tensors import Tensors


def shape(c: HFConfig) -> dict:
    return {"vocab": c.get("vocab_size"), "d": c.get("hidden_size"),
            "heads": c.get("num_attention_heads"), "ff": c.get("intermediate_size"),
            "layers": c.get("num_hidden_layers"), "rows": c.get("max_position_embeddings"),
            "types": c.get("type_vocab_size", default=2),
            "eps": float(c.get("layer_norm_eps", default=1e-12)),
            "act": llama.act(c.get("hidden_act", default="gelu"))}


def heads_of(c: HFConfig) -> tuple[bool, bool, bool]:
    """(pooler, mlm, nsp) by the checkpoint's class."""
    arch = c.architecture
    mlm = arch.endswith(("ForMaskedLM", "ForPreTraining"))
    nsp = arch.endswith("ForPreTraining")
    return (not mlm) or nsp, mlm, nsp


def render(c: HFConfig, positions: str, extra_inputs=(), attn_opts: str = "",
           lets: str = "") -> str:
    s = shape(c)
    pooler, mlm, nsp = heads_of(c)
    inputs = ["input_ids", "token_type_ids", "attention_mask", *extra_inputs]
    lines = [f"# {c.architecture or c.model_type} imported from a Hugging Face checkpoint by "
             "`archc import-hf`.", f"model {c.model_type} {{",
             f"  let vocab = {s['vocab']}, d = {s['d']}, heads = {s['heads']}, ff = {s['ff']}, "
             f"layers = {s['layers']},",
             f"      types = {s['types']}, eps = {s['eps']!r}{lets}", ""]
    lines += [f"  input {n}: int64[batch, seq]" for n in inputs] + [""]
    lines += ["  x = embed(input_ids, vocab, d) as word_embeddings",
              f"  x = x + {positions} as position_embeddings",
              "  x = x + type_embed(token_type_ids, types, d) as token_type_embeddings",
              "  x = layer_norm(x, eps) as embed_norm",
              "  repeat layers as layers {",
              f"    a = attention(x, heads, mask = attention_mask{attn_opts}) as attention",
              "    x = layer_norm(x + a, eps) as attention_norm",
              f"    x = layer_norm(x + mlp(x, ff, act = {s['act']}) as mlp, eps) as mlp_norm",
              "  }"]
    if not mlm:
        lines.append("  output last_hidden_state = x")
    if mlm:
        lines += [f"  h = layer_norm({s['act']}(linear(x, d) as transform), eps) as transform_norm",
                  "  output logits = lm_head(h, vocab, tied = word_embeddings, bias = true)"]
    if pooler:
        lines.append("  pooled = tanh(linear(first_token(x), d) as pooler)")
        lines.append("  output nsp_logits = linear(pooled, 2) as nsp" if nsp else
                     "  output pooler_output = pooled")
    return "\n".join(lines) + "\n}\n"


def describe(c: HFConfig, tensors=None):
    return render(c, "pos_embed(input_ids, max_pos, d)", lets=f", max_pos = {shape(c)['rows']}")


def layer_weights(out, t: Tensors, hf: str, me: str, s: dict, global_attn: bool = False):
    d, ff = s["d"], s["ff"]
    names = [("query", "q"), ("key", "k"), ("value", "v")]
    if global_attn:
        names += [("query_global", "q_global"), ("key_global", "k_global"),
                  ("value_global", "v_global")]
    for theirs, mine in names:
        common.linear(out, t, f"{hf}.attention.self.{theirs}", f"{me}.attention.{mine}", d, d,
                      True)
    common.linear(out, t, f"{hf}.attention.output.dense", f"{me}.attention.o", d, d, True)
    common.norm(out, t, f"{hf}.attention.output.LayerNorm", f"{me}.attention_norm", d)
    common.linear(out, t, f"{hf}.intermediate.dense", f"{me}.mlp.fc", d, ff, True)
    common.linear(out, t, f"{hf}.output.dense", f"{me}.mlp.proj", ff, d, True)
    common.norm(out, t, f"{hf}.output.LayerNorm", f"{me}.mlp_norm", d)


def encoder_weights(c: HFConfig, t: Tensors, prefix: str, mlm_head: str,
                    global_attn: bool = False) -> common.Weights:
    s = shape(c)
    d = s["d"]
    pooler, mlm, nsp = heads_of(c)
    base = prefix if any(k.startswith(prefix + ".") for k in t.tensors) else ""
    p = f"{base}." if base else ""
    out = {"word_embeddings.weight": t.take(f"{p}embeddings.word_embeddings.weight",
                                            (s["vocab"], d)),
           "position_embeddings.weight": t.take(f"{p}embeddings.position_embeddings.weight",
                                                (s["rows"], d)),
           "token_type_embeddings.weight": t.take(f"{p}embeddings.token_type_embeddings.weight",
                                                  (s["types"], d))}
    common.norm(out, t, f"{p}embeddings.LayerNorm", "embed_norm", d)
    for i in range(s["layers"]):
        layer_weights(out, t, f"{p}encoder.layer.{i}", f"layers.{i}", s, global_attn)
    if pooler:
        common.linear(out, t, f"{p}pooler.dense", "pooler", d, d, True)
    if mlm:
        names = {"cls": ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
                         "cls.predictions"),
                 "lm_head": ("lm_head.dense", "lm_head.layer_norm", "lm_head")}[mlm_head]
        common.linear(out, t, names[0], "transform", d, d, True)
        common.norm(out, t, names[1], "transform_norm", d)
        out["lm_head.bias"] = t.take(f"{names[2]}.bias", (s["vocab"],))
        for tied in (f"{names[2]}.decoder.weight", f"{names[2]}.decoder.bias"):
            if t.has(tied):  # older files store the tied decoder (and its bias) again
                t.take(tied)
    if nsp:
        common.linear(out, t, "cls.seq_relationship", "nsp", d, 2, True)
    return out


def weights(c: HFConfig, spec: str, t: Tensors) -> common.Weights:
    return encoder_weights(c, t, "bert", "cls")


def check_post_ln(c: HFConfig) -> None:
    if c.get("position_embedding_type", default="absolute") != "absolute":
        raise ArchcError([Diagnostic("E0504", "relative position embeddings in BERT-style "
                                     "models are not supported yet")])
