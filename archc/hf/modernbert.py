"""modernbert: a pre-LN encoder without positions tables or biases (by default): token embedding
+ LayerNorm; global attention on every n-th layer, or on the layers `layer_types` lists in any
pattern, and local attention over a band of `local_attention` / 2 tokens each side on the
others, each kind with its own rope base; layer 0 has no attention norm; GeGLU FFN from a
fused `Wi` (act on the first half); a final norm; the MLM head is dense + act + norm and a
decoder tied to the embeddings with its own bias. Configs come as 5.x (`layer_types`,
`rope_parameters` per layer type; `layer_types` wins, as in transformers) or 4.x
(`global_attn_every_n_layers`, `global_rope_theta`, `local_rope_theta`)."""

from __future__ import annotations

import json
import math

from archc.diagnostics import ArchcError, Diagnostic
from archc.hf import bert, common, llama, qwen2_moe
from archc.hf.config import HFConfig
from archc.hf.tensors import Tensors

THETA = {"full_attention": ("global_rope_theta", 160000.0),
         "sliding_attention": ("local_rope_theta", 10000.0)}


def config_error(c: HFConfig, key: str, v, expected: str) -> ArchcError:
    return ArchcError([Diagnostic(
        "E0506", f"`{c.path}`: `{key}` is {json.dumps(v)[:60]}; it must be {expected}",
        c._span(key), "this field", help="fix the field in config.json")], {c.path: c.text})


def flag(c: HFConfig, key: str, default: bool) -> bool:
    v = c.data.get(key, default)
    if not isinstance(v, bool):
        raise config_error(c, key, v, "true or false")
    return v


def number(c: HFConfig, key: str, default: float, holder: dict | None = None) -> float:
    v = (holder if holder is not None else c.data).get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
        raise config_error(c, key, v, "a finite positive number")
    return float(v)


def activation(c: HFConfig, key: str) -> str:
    v = c.data.get(key, "gelu")
    if not isinstance(v, str):
        raise config_error(c, key, v, "an activation name")
    return llama.act(v)


def layer_kinds(c: HFConfig, n: int) -> list[bool]:
    """Which layers are global (full attention)."""
    types = c.get("layer_types", default=None)
    if types is None:
        every = bert.size(c, "global_attn_every_n_layers", default=3)
        return [i % every == 0 for i in range(n)]
    if len(types) != n or set(types) - set(THETA):
        raise config_error(c, "layer_types", types, f"{n} of `full_attention`, `sliding_attention`")
    return [t == "full_attention" for t in types]


def theta(c: HFConfig, kind: str) -> float:
    params = c.data.get("rope_parameters")
    key, default = THETA[kind]
    if isinstance(params, dict) and isinstance(params.get(kind), dict):
        held = params[kind]
        if held.get("rope_type", "default") != "default":
            raise ArchcError([Diagnostic("E0502", f"rope scaling `{held['rope_type']}` is not "
                                         "supported for modernbert yet")])
        return number(c, "rope_theta", default, held)
    return number(c, key, default)


def condition(kinds: list[bool]) -> str:
    """The compile-time test for a global layer: `layers % every == 0` when the kinds follow
    that pattern (every layer global: `true`; none: `false`); any other `layer_types` list is
    spelled out as `full_attention[layers]` over a `let full_attention = [...]` of bools."""
    if all(kinds) or not any(kinds):
        return "true" if all(kinds) else "false"
    every = next((i for i in range(1, len(kinds)) if kinds[i]), len(kinds))
    if kinds != [i % every == 0 for i in range(len(kinds))]:
        return "full_attention[layers]"
    return f"layers % {every} == 0"


def pattern(kinds: list[bool]) -> list[str]:
    """The `let` line `condition` reads, when the kinds follow no every-n pattern."""
    if condition(kinds) != "full_attention[layers]":
        return []
    return qwen2_moe.wrap("  let full_attention = [", [str(k).lower() for k in kinds], "]", 24)


def _shape(c: HFConfig) -> dict:
    layers = c.get("num_hidden_layers")
    return {"vocab": c.get("vocab_size"), "d": c.get("hidden_size"),
            "heads": c.get("num_attention_heads"), "ff": c.get("intermediate_size"),
            "layers": layers, "eps": number(c, "norm_eps", 1e-5),
            "window": bert.size(c, "local_attention", default=128),
            "kinds": layer_kinds(c, layers), "act": activation(c, "hidden_activation"),
            "head_act": activation(c, "classifier_activation"),
            "attn_bias": flag(c, "attention_bias", False), "mlp_bias": flag(c, "mlp_bias", False),
            "norm_bias": flag(c, "norm_bias", False),
            "head_bias": flag(c, "classifier_bias", False),
            "decoder_bias": flag(c, "decoder_bias", True)}


def describe(c: HFConfig, tensors: Tensors | None = None) -> str:
    s = _shape(c)
    ln = "eps" if s["norm_bias"] else "eps, bias = false"
    mlm = c.architecture.endswith("ForMaskedLM")
    attn_bias = "" if s["attn_bias"] else ", bias = false"
    lines = [
        f"# {c.architecture or 'modernbert'} imported from a Hugging Face checkpoint by "
        "`archc import-hf`.",
        "model modernbert {",
        f"  let vocab = {s['vocab']}, d = {s['d']}, heads = {s['heads']}, ff = {s['ff']}, "
        f"layers = {s['layers']}, eps = {s['eps']!r},",
        f"      window = {s['window']}, global_theta = {theta(c, 'full_attention')!r}, "
        f"local_theta = {theta(c, 'sliding_attention')!r}",
        *pattern(s["kinds"]),
        "",
        "  input input_ids: int64[batch, seq]",
        "  input attention_mask: int64[batch, seq]",
        "",
        f"  x = layer_norm(embed(input_ids, vocab, d) as tok_embeddings, {ln}) as embed_norm",
        "  repeat layers as layers {",
        f"    if {condition(s['kinds'])} {{  # global attention",
        "      w = 0",
        "      theta = global_theta",
        "    } else {  # local: window / 2 tokens each side",
        "      w = window",
        "      theta = local_theta",
        "    }",
        "    h = x",
        f"    if layers > 0 {{ h = layer_norm(x, {ln}) as attention_norm }}",
        "    x = x + attention(h, heads, mask = attention_mask, window = w, "
        f"rope = rope(theta = theta){attn_bias}) as attention",
        f"    x = x + glu(layer_norm(x, {ln}) as mlp_norm, ff, act = {s['act']}, "
        f"bias = {str(s['mlp_bias']).lower()}) as mlp",
        "  }",
        f"  x = layer_norm(x, {ln}) as final_norm"]
    if mlm:
        lines += [f"  h = layer_norm({s['head_act']}(linear(x, d, bias = "
                  f"{str(s['head_bias']).lower()}) as head), {ln}) as head_norm",
                  "  output logits = lm_head(h, vocab, tied = tok_embeddings, bias = "
                  f"{str(s['decoder_bias']).lower()})"]
    else:
        lines.append("  output last_hidden_state = x")
    return "\n".join([*lines, "}", ""])


def _norm(out, t: Tensors, hf: str, me: str, s: dict) -> None:
    common.norm(out, t, hf, me, s["d"], s["norm_bias"])


def _split(out, t: Tensors, hf: str, names: tuple[str, ...], n_in: int, n: int,
           bias: bool) -> None:
    """A fused [len(names) * n, n_in] torch weight -> one [n_in, n] weight per name."""
    w = t.take(f"{hf}.weight", (len(names) * n, n_in))
    b = t.take(f"{hf}.bias", (len(names) * n,)) if bias else None
    for i, name in enumerate(names):
        out[f"{name}.weight"] = w[i * n:(i + 1) * n].T.copy()
        if b is not None:
            out[f"{name}.bias"] = b[i * n:(i + 1) * n].copy()


def weights(c: HFConfig, text: str, t: Tensors) -> common.Weights:
    s = _shape(c)
    d, ff = s["d"], s["ff"]
    p = "model." if t.has("model.embeddings.tok_embeddings.weight") else ""
    out = {"tok_embeddings.weight": t.take(f"{p}embeddings.tok_embeddings.weight",
                                           (s["vocab"], d))}
    _norm(out, t, f"{p}embeddings.norm", "embed_norm", s)
    for i in range(s["layers"]):
        hf, me = f"{p}layers.{i}", f"layers.{i}"
        if i > 0:
            _norm(out, t, f"{hf}.attn_norm", f"{me}.attention_norm", s)
        _split(out, t, f"{hf}.attn.Wqkv", tuple(f"{me}.attention.{n}" for n in "qkv"), d, d,
               s["attn_bias"])
        common.linear(out, t, f"{hf}.attn.Wo", f"{me}.attention.o", d, d, s["attn_bias"])
        _norm(out, t, f"{hf}.mlp_norm", f"{me}.mlp_norm", s)
        _split(out, t, f"{hf}.mlp.Wi", (f"{me}.mlp.gate", f"{me}.mlp.up"), d, ff, s["mlp_bias"])
        common.linear(out, t, f"{hf}.mlp.Wo", f"{me}.mlp.down", ff, d, s["mlp_bias"])
    _norm(out, t, f"{p}final_norm", "final_norm", s)
    if c.architecture.endswith("ForMaskedLM"):
        common.linear(out, t, "head.dense", "head", d, d, s["head_bias"])
        _norm(out, t, "head.norm", "head_norm", s)
        if s["decoder_bias"]:
            out["lm_head.bias"] = t.take("decoder.bias", (s["vocab"],))
        if t.has("decoder.weight"):
            t.take("decoder.weight")  # tied to the token embeddings
    return out
