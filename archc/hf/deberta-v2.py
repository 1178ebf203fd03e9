"""deberta-v2 (DeBERTa v2 and v3): a post-LN encoder whose attention adds disentangled
content-to-position and position-to-content scores over log-bucketed relative positions
(`disentangled_attention`, `log_buckets`), with one relative-position table for all layers
(LayerNorm'd by `norm_rel_ebd`), shared with the key/query projections (`share_att_key`) or
through its own `pos_key_proj`/`pos_query_proj`; absolute positions only with
`position_biased_input`; token types only when `type_vocab_size` > 0; an `embed_proj` when
`embedding_size` differs; padded tokens zeroed after the embedding norm; with
`conv_kernel_size` > 0 (deberta-v2-xlarge, -xxlarge) a convolution over the embedding output
joins the first layer's output (`deberta_conv`). `...ForMaskedLM` with the legacy head
(`cls.predictions`, tied decoder) or the new one (`lm_predictions.lm_head`).
(The module name is the config's `model_type`, hyphen included.)"""

from __future__ import annotations

import numpy as np

from archc.diagnostics import ArchcError, Diagnostic
from archc.hf import bert, common, llama
from archc.hf.config import HFConfig
from archc.hf.modernbert import config_error, flag, number
from archc.hf.tensors import Tensors

ATTENTION = {**bert.ATTENTION, "q": "attention.self.query_proj", "k": "attention.self.key_proj",
             "v": "attention.self.value_proj"}


def _int(c: HFConfig, key: str, default: int) -> int:
    v = c.data.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not -1 <= v <= 2**31 - 1:
        raise config_error(c, key, v, "an integer (-1 or more)")
    return v


def _att_types(c: HFConfig) -> set[str]:
    v = c.data.get("pos_att_type") or []
    v = [x.strip() for x in v.lower().split("|")] if isinstance(v, str) else v
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v) or \
            not set(v) <= {"c2p", "p2c"}:
        raise config_error(c, "pos_att_type", v, "a list of `c2p`, `p2c`")
    return set(v)


def shape(c: HFConfig) -> dict:
    s = bert.Encoder(c.get("vocab_size"), c.get("hidden_size"), c.get("num_attention_heads"),
                     c.get("intermediate_size"), c.get("num_hidden_layers"),
                     c.get("max_position_embeddings"), 0, 0.0,
                     llama.act(c.get("hidden_act", default="gelu")))
    if not flag(c, "relative_attention", False) or \
            "attention_head_size" in c.data:
        raise ArchcError([Diagnostic("E0504", "deberta-v2 without relative attention, or with "
                                     "its own `attention_head_size`, is not supported yet")])
    buckets = _int(c, "position_buckets", -1)
    max_rel = _int(c, "max_relative_positions", -1)
    max_rel = max_rel if max_rel >= 1 else s.rows
    norm = c.data.get("norm_rel_ebd", "none")
    if not isinstance(norm, str):
        raise config_error(c, "norm_rel_ebd", norm, "`layer_norm` or `none`")
    types = _int(c, "type_vocab_size", 0)
    emb = bert.size(c, "embedding_size", default=s.d)
    return {"s": s, "buckets": max(buckets, 0), "max_rel": max_rel,
            "span": buckets if buckets > 0 else max_rel, "att": _att_types(c),
            "rel_norm": "layer_norm" in [x.strip() for x in norm.lower().split("|")],
            "share": flag(c, "share_att_key", False),
            "abs_pos": flag(c, "position_biased_input", True), "types": max(types, 0),
            "emb": emb if emb != s.d else 0, "legacy": flag(c, "legacy", True),
            "eps": number(c, "layer_norm_eps", 1e-7), **_conv(c, s.d)}


def _conv(c: HFConfig, d: int) -> dict:
    """`ConvLayer`: kernel (0: none), groups, activation. torch pads (kernel - 1) // 2 each
    side, so only an odd kernel keeps the length the residual needs."""
    kernel = max(_int(c, "conv_kernel_size", 0), 0)
    if kernel == 0:
        return {"conv": 0}
    if kernel % 2 == 0:
        raise config_error(c, "conv_kernel_size", kernel, "odd (or 0: no convolution)")
    groups = _int(c, "conv_groups", 1)
    if groups < 1 or d % groups:
        raise config_error(c, "conv_groups", groups, f"a divisor of `hidden_size` ({d})")
    act = c.data.get("conv_act", "tanh")
    if not isinstance(act, str):
        raise config_error(c, "conv_act", act, "an activation name")
    return {"conv": kernel, "conv_groups": groups, "conv_act": llama.act(act)}


def describe(c: HFConfig, tensors: Tensors | None = None) -> str:
    m = shape(c)
    s = m["s"]
    e = "e" if m["emb"] else "d"
    mlm = c.architecture.endswith("ForMaskedLM")
    inputs = ["input_ids", *(["token_type_ids"] if m["types"] else []), "attention_mask"]
    opts = [f"buckets = {m['buckets']}", f"max_distance = {m['max_rel']}"]
    opts += [f"{a} = false" for a in ("c2p", "p2c") if a not in m["att"]]
    opts += [] if m["share"] else ["share_key = false"]
    rel = "param(2 * span, d, init = normal) as rel_embeddings"
    lines = [
        f"# {c.architecture or 'deberta-v2'} imported from a Hugging Face checkpoint by "
        "`archc import-hf`.",
        "model deberta_v2 {",
        f"  let vocab = {s.vocab}, d = {s.d}, heads = {s.heads}, ff = {s.ff}, "
        f"layers = {s.layers}, eps = {m['eps']!r},",
        f"      span = {m['span']}" + (f", e = {m['emb']}" if m["emb"] else "") +
        (f", max_pos = {s.rows}" if m["abs_pos"] else "") +
        (f", types = {m['types']}" if m["types"] else "") +
        (f", kernel = {m['conv']}" if m["conv"] else ""),
        "", *[f"  input {n}: int64[batch, seq]" for n in inputs], "",
        f"  x = embed(input_ids, vocab, {e}) as word_embeddings"]
    if m["abs_pos"]:
        lines.append(f"  x = x + pos_embed(input_ids, max_pos, {e}) as position_embeddings")
    if m["types"]:
        lines.append(f"  x = x + type_embed(token_type_ids, types, {e}) as token_type_embeddings")
    if m["emb"]:
        lines.append("  x = linear(x, d, bias = false) as embed_project")
    lines += [
        "  x = layer_norm(x, eps) as embed_norm",
        "  x = x * reshape(cast(attention_mask, float32), [dim(x, 0), dim(x, 1), 1])  # pads: 0",
        f"  rel = layer_norm({rel}, eps) as rel_norm" if m["rel_norm"] else f"  rel = {rel}",
        *(["  e = x"] if m["conv"] else []),
        "  repeat layers as layers {",
        "    a = disentangled_attention(x, heads, rel, mask = attention_mask,",
        f"                               {', '.join(opts)}) as attention",
        "    x = layer_norm(x + a, eps) as attention_norm",
        f"    x = layer_norm(x + mlp(x, ff, act = {s.act}) as mlp, eps) as mlp_norm",
        *_conv_lines(m), "  }"]
    if mlm:
        w = e if m["legacy"] else "d"
        lines += [f"  h = layer_norm({s.act}(linear(x, {w}) as transform), eps) as transform_norm",
                  "  output logits = lm_head(h, vocab, tied = word_embeddings, bias = true)"]
    else:
        lines.append("  output last_hidden_state = x")
    return "\n".join([*lines, "}", ""])


def _conv_lines(m: dict) -> list[str]:
    if not m["conv"]:
        return []
    note = (f" (conv_groups = {m['conv_groups']}: a block-diagonal weight)"
            if m["conv_groups"] > 1 else "")
    return ["    if layers == 0 {  # the convolution layer, after the first layer only" + note,
            "      x = deberta_conv(e, x, kernel, mask = attention_mask, "
            f"act = {m['conv_act']}, eps = eps) as conv", "    }"]


def _conv_weights(out, t: Tensors, hf: str, me: str, m: dict, d: int) -> None:
    """torch's grouped Conv1d weight [d, d / g, k] -> the dense [d, d, k] `conv1d` takes,
    zero outside each group's block (exact: the zeros add nothing)."""
    k, g = m["conv"], m["conv_groups"]
    w = t.take(f"{hf}.conv.weight", (d, d // g, k))
    dense = np.zeros((d, d, k), np.float32)
    n = d // g
    for i in range(g):
        dense[i * n:(i + 1) * n, i * n:(i + 1) * n] = w[i * n:(i + 1) * n]
    out[f"{me}.weight"] = dense
    out[f"{me}.bias"] = t.take(f"{hf}.conv.bias", (d,))
    common.norm(out, t, f"{hf}.LayerNorm", f"{me}.norm", d)


def weights(c: HFConfig, text: str, t: Tensors) -> common.Weights:
    m = shape(c)
    s = m["s"]
    d, e = s.d, m["emb"] or s.d
    p = "deberta." if t.has("deberta.embeddings.word_embeddings.weight") else ""
    out = {"word_embeddings.weight": t.take(f"{p}embeddings.word_embeddings.weight",
                                            (s.vocab, e))}
    if m["abs_pos"]:
        out["position_embeddings.weight"] = t.take(f"{p}embeddings.position_embeddings.weight",
                                                   (s.rows, e))
    if m["types"]:
        out["token_type_embeddings.weight"] = t.take(
            f"{p}embeddings.token_type_embeddings.weight", (m["types"], e))
    if m["emb"]:
        common.linear(out, t, f"{p}embeddings.embed_proj", "embed_project", e, d, False)
    common.norm(out, t, f"{p}embeddings.LayerNorm", "embed_norm", d)
    out["rel_embeddings"] = t.take(f"{p}encoder.rel_embeddings.weight", (2 * m["span"], d))
    if m["rel_norm"]:
        common.norm(out, t, f"{p}encoder.LayerNorm", "rel_norm", d)
    for i in range(s.layers):
        hf, me = f"{p}encoder.layer.{i}", f"layers.{i}"
        bert.layer_weights(out, t, hf, me, s, names=ATTENTION)
        if not m["share"]:
            for a, theirs, mine in (("c2p", "pos_key_proj", "pos_k"),
                                    ("p2c", "pos_query_proj", "pos_q")):
                if a in m["att"]:
                    common.linear(out, t, f"{hf}.attention.self.{theirs}",
                                  f"{me}.attention.{mine}", d, d, True)
    if m["conv"]:
        _conv_weights(out, t, f"{p}encoder.conv", "layers.0.conv", m, d)
    if c.architecture.endswith("ForMaskedLM"):
        if m["legacy"]:
            bert.mlm_weights(out, t, bert.Encoder(**{**s.__dict__, "emb": m["emb"]}), "cls")
        else:
            bert.mlm_weights(out, t, s, "lm_predictions")
    return out
