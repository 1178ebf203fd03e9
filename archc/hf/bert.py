"""bert: post-LN encoder with word + position + token-type embeddings and an embedding
LayerNorm; heads by class: pooler (`...Model`), MLM (`...ForMaskedLM`), MLM + next-sentence
(`BertForPreTraining`). The roberta, xlm-roberta, longformer, electra and distilbert modules
reuse it: positions counted from `padding_idx + 1` over non-padding tokens (roberta), local +
global attention (longformer), a narrower embedding projected up to the model width (electra),
no token types (distilbert). A one-row token-type table needs no `token_type_ids` input: every
token is type 0, as RoBERTa's and XLM-R's tokenizers produce no token types."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from archc.diagnostics import ArchcError, Diagnostic
from archc.hf import common, llama
from archc.hf.config import MAX_SIZE, HFConfig
from archc.hf.tensors import Tensors


def size(c: HFConfig, key: str, default=None) -> int:
    """A positive-integer field that `config.FIELDS` does not list, checked the same way."""
    v = c.data.get(key)
    if v is None and default is not None:
        return default
    if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIZE:
        return v
    raise ArchcError([Diagnostic(
        "E0506", f"`{c.path}`: `{key}` is {json.dumps(v)[:60]}; it must be a positive integer "
        f"(at most {MAX_SIZE})", c._span(key), "this field", help="fix the field in config.json")],
        {c.path: c.text})


@dataclass
class Encoder:
    """What `render` writes: the sizes and the variant switches of a BERT-like encoder."""
    vocab: int
    d: int
    heads: int
    ff: int
    layers: int
    rows: int
    types: int
    eps: float
    act: str
    emb: int = 0          # ELECTRA: embedding width, projected up to `d` (0: the same as d)
    head_act: str = ""    # the MLM transform's activation (ELECTRA: always gelu)
    extra: dict = field(default_factory=dict)


def shape(c: HFConfig) -> Encoder:
    return Encoder(c.get("vocab_size"), c.get("hidden_size"), c.get("num_attention_heads"),
                   c.get("intermediate_size"), c.get("num_hidden_layers"),
                   c.get("max_position_embeddings"), c.get("type_vocab_size", default=2),
                   float(c.get("layer_norm_eps", default=1e-12)),
                   llama.act(c.get("hidden_act", default="gelu")))


def heads_of(c: HFConfig, t: Tensors | None = None) -> tuple[bool, bool, bool]:
    """(pooler, mlm, nsp) by the checkpoint's class; with the tensors, a `...Model` saved
    without its pooler (`add_pooling_layer=False`, as sentence encoders are) has none."""
    arch = c.architecture
    mlm = arch.endswith(("ForMaskedLM", "ForPreTraining"))
    nsp = arch.endswith("ForPreTraining")
    stored = t is None or any(k.endswith(("pooler.dense.weight", "pooler.weight"))
                              for k in t.tensors)
    return ((not mlm) or nsp) and stored, mlm, nsp


def render(c: HFConfig, positions: str, extra_inputs=(), attn_opts: str = "", lets: str = "",
           s: Encoder | None = None, pooler: bool | None = None,
           tail: list[str] | None = None, tensors: Tensors | None = None) -> str:
    """The spec; `tail` replaces the heads the class implies (ELECTRA's discriminator)."""
    s = s or shape(c)
    has_pooler, mlm, nsp = heads_of(c, tensors)
    pooler = has_pooler if pooler is None else pooler and has_pooler
    e = "e" if s.emb else "d"
    inputs = ["input_ids", *(["token_type_ids"] if s.types > 1 else []), "attention_mask",
              *extra_inputs]
    types = "token_type_ids" if s.types > 1 else "input_ids * 0"  # one row: every token type 0
    lines = [f"# {c.architecture or c.model_type} imported from a Hugging Face checkpoint by "
             "`archc import-hf`.", f"model {c.model_type.replace('-', '_')} {{",
             f"  let vocab = {s.vocab}, d = {s.d}, heads = {s.heads}, ff = {s.ff}, "
             f"layers = {s.layers},",
             f"      {f'types = {s.types}, ' if s.types else ''}eps = {s.eps!r}{lets}" +
             (f", e = {s.emb}" if s.emb else ""), ""]
    lines += [f"  input {n}: int64[batch, seq]" for n in inputs] + [""]
    lines += [f"  x = embed(input_ids, vocab, {e}) as word_embeddings",
              f"  x = x + {positions} as position_embeddings"]
    if s.types:
        lines.append(f"  x = x + type_embed({types}, types, {e}) as token_type_embeddings")
    lines.append("  x = layer_norm(x, eps) as embed_norm")
    if s.emb:
        lines.append("  x = linear(x, d) as embed_project")
    lines += ["  repeat layers as layers {",
              f"    a = attention(x, heads, mask = attention_mask{attn_opts}) as attention",
              "    x = layer_norm(x + a, eps) as attention_norm",
              f"    x = layer_norm(x + mlp(x, ff, act = {s.act}) as mlp, eps) as mlp_norm",
              "  }"]
    if tail is not None:
        return "\n".join(lines + tail) + "\n}\n"
    if not mlm:
        lines.append("  output last_hidden_state = x")
    if mlm:
        act = s.head_act or s.act
        lines += [f"  h = layer_norm({act}(linear(x, {e}) as transform), eps) as transform_norm",
                  "  output logits = lm_head(h, vocab, tied = word_embeddings, bias = true)"]
    if pooler:
        lines.append("  pooled = tanh(linear(first_token(x), d) as pooler)")
        lines.append("  output nsp_logits = linear(pooled, 2) as nsp" if nsp else
                     "  output pooler_output = pooled")
    return "\n".join(lines) + "\n}\n"


def describe(c: HFConfig, tensors=None):
    check_post_ln(c)
    return render(c, "pos_embed(input_ids, max_pos, d)", lets=f", max_pos = {shape(c).rows}",
                  tensors=tensors)


ATTENTION = {"q": "attention.self.query", "k": "attention.self.key",
             "v": "attention.self.value", "o": "attention.output.dense",
             "q_global": "attention.self.query_global", "k_global": "attention.self.key_global",
             "v_global": "attention.self.value_global",
             "attention_norm": "attention.output.LayerNorm", "mlp.fc": "intermediate.dense",
             "mlp.proj": "output.dense", "mlp_norm": "output.LayerNorm"}


def layer_weights(out, t: Tensors, hf: str, me: str, s: Encoder, global_attn: bool = False,
                  names: dict = ATTENTION):
    d, ff = s.d, s.ff
    mine = ["q", "k", "v", *(["q_global", "k_global", "v_global"] if global_attn else [])]
    for n in mine:
        common.linear(out, t, f"{hf}.{names[n]}", f"{me}.attention.{n}", d, d, True)
    common.linear(out, t, f"{hf}.{names['o']}", f"{me}.attention.o", d, d, True)
    common.norm(out, t, f"{hf}.{names['attention_norm']}", f"{me}.attention_norm", d)
    common.linear(out, t, f"{hf}.{names['mlp.fc']}", f"{me}.mlp.fc", d, ff, True)
    common.linear(out, t, f"{hf}.{names['mlp.proj']}", f"{me}.mlp.proj", ff, d, True)
    common.norm(out, t, f"{hf}.{names['mlp_norm']}", f"{me}.mlp_norm", d)


MLM_HEADS = {  # (transform, its norm, the head holding `bias` and the tied `decoder`)
    "cls": ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
            "cls.predictions"),
    "lm_head": ("lm_head.dense", "lm_head.layer_norm", "lm_head"),
    "generator": ("generator_predictions.dense", "generator_predictions.LayerNorm",
                  "generator_lm_head"),
    "vocab": ("vocab_transform", "vocab_layer_norm", "vocab_projector"),
    "lm_predictions": ("lm_predictions.lm_head.dense", "lm_predictions.lm_head.LayerNorm",
                       "lm_predictions.lm_head"),
}


def mlm_weights(out, t: Tensors, s: Encoder, head: str) -> None:
    e = s.emb or s.d
    names = MLM_HEADS[head]
    common.linear(out, t, names[0], "transform", s.d, e, True)
    common.norm(out, t, names[1], "transform_norm", e)
    out["lm_head.bias"] = t.take(f"{names[2]}.bias", (s.vocab,))
    for tied in (f"{names[2]}.decoder.weight", f"{names[2]}.decoder.bias", f"{names[2]}.weight"):
        if t.has(tied):  # some files store the tied decoder (and its bias) again
            t.take(tied)


def encoder_weights(c: HFConfig, t: Tensors, prefix: str, mlm_head: str,
                    global_attn: bool = False, s: Encoder | None = None) -> common.Weights:
    s = s or shape(c)
    d, e = s.d, s.emb or s.d
    pooler, mlm, nsp = heads_of(c, t)
    base = prefix if any(k.startswith(prefix + ".") for k in t.tensors) else ""
    p = f"{base}." if base else ""
    out = {"word_embeddings.weight": t.take(f"{p}embeddings.word_embeddings.weight",
                                            (s.vocab, e)),
           "position_embeddings.weight": t.take(f"{p}embeddings.position_embeddings.weight",
                                                (s.rows, e)),
           "token_type_embeddings.weight": t.take(f"{p}embeddings.token_type_embeddings.weight",
                                                  (s.types, e))}
    common.norm(out, t, f"{p}embeddings.LayerNorm", "embed_norm", e)
    if s.emb:
        common.linear(out, t, f"{p}embeddings_project", "embed_project", e, d, True)
    for i in range(s.layers):
        layer_weights(out, t, f"{p}encoder.layer.{i}", f"layers.{i}", s, global_attn)
    if pooler and mlm_head != "generator":
        common.linear(out, t, f"{p}pooler.dense", "pooler", d, d, True)
    if mlm:
        mlm_weights(out, t, s, mlm_head)
    if nsp:
        common.linear(out, t, "cls.seq_relationship", "nsp", d, 2, True)
    return out


def weights(c: HFConfig, spec: str, t: Tensors) -> common.Weights:
    return encoder_weights(c, t, "bert", "cls")


def check_post_ln(c: HFConfig) -> None:
    if c.get("position_embedding_type", default="absolute") != "absolute":
        raise ArchcError([Diagnostic("E0504", "relative position embeddings in BERT-style "
                                     "models are not supported yet")])
