"""qwen2_moe: qwen2 attention (q/k/v biases) with a mixture of SwiGLU experts: a softmax router
whose top-k gates are renormalised only with `norm_topk_prob`, plus one shared expert scaled by
a learned sigmoid gate; layers in `mlp_only_layers` (or off the `decoder_sparse_step`) keep a
dense FFN. The spec uses the library's `routed_glu_moe` (archc/stdlib/latent_experts.arch).

The helpers here (checked config numbers, rope configs with scaling, the spec text of a MoE
decoder, expert tensors in either checkpoint layout) are shared by the qwen3_moe, deepseek_v2,
deepseek_v3 and gpt_oss modules.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

import numpy as np

from archc.diagnostics import ArchcError, Diagnostic
from archc.hf import common, decoder, llama
from archc.hf.config import HFConfig
from archc.hf.tensors import Tensors


@dataclass
class Dims:
    """What `archc.hf.common.attention` reads from a decoder description."""
    d: int
    heads: int
    kv_heads: int
    head_dim: int
    qkv_bias: bool
    out_bias: bool


# ---------------------------------------------------------------- checked config values
def number(c: HFConfig, key: str, value, positive: bool = True) -> float:
    """A float config value (of a field `config.py` does not type) that may reach the spec."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and value <= 0) or (not positive and value < 0):
        raise ArchcError([Diagnostic("E0506", f"`{c.path}`: `{key}` is {value!r}; it must be a "
                                     f"finite {'positive' if positive else 'non-negative'} "
                                     "number")])
    return float(value)


def size(c: HFConfig, key: str, default=None) -> int:
    v = c.data.get(key)
    v = default if v is None else v
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 2**31 - 1:
        raise ArchcError([Diagnostic("E0506", f"`{c.path}`: `{key}` is {v!r}; it must be a "
                                     "non-negative integer")])
    return v


def n_experts(c: HFConfig) -> int:
    """The routed experts: `num_experts` (Qwen), `num_local_experts` (transformers 5 saves
    Qwen's under this name; Mixtral, GPT-OSS) or `n_routed_experts` (DeepSeek)."""
    key = next((k for k in ("num_experts", "num_local_experts", "n_routed_experts")
                if c.data.get(k) is not None), "num_experts")
    return size(c, key, 0)


def flag(c: HFConfig, key: str, default: bool) -> bool:
    v = c.data.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ArchcError([Diagnostic("E0506", f"`{c.path}`: `{key}` is {v!r}; it must be "
                                     "true or false")])
    return v


def indices(c: HFConfig, key: str, n: int) -> list[int]:
    v = c.data.get(key) or []
    if not isinstance(v, list) or not all(isinstance(i, int) and not isinstance(i, bool)
                                          for i in v):
        raise ArchcError([Diagnostic("E0506", f"`{c.path}`: `{key}` must be a list of layer "
                                     "indices")])
    return [i for i in v if 0 <= i < n]


# ---------------------------------------------------------------- rope with scaling
def rope_line(c: HFConfig, interleaved: bool = False, theta_default: float = 10000.0
              ) -> list[str]:
    """`rotary_cfg = rope(...)`, the config's rotary settings, for the model body."""
    return wrap("rotary_cfg = rope(", _rope_parts(c, interleaved, theta_default), ")", 4)


def _rope_parts(c: HFConfig, interleaved: bool, theta_default: float) -> list[str]:
    """The options of `rope(...)` for default, linear or yarn scaling."""
    kind = c.rope("rope_type", None) or c.rope("type", "default")
    parts = [f"theta = {number(c, 'rope_theta', c.rope('rope_theta', theta_default))!r}"]
    if interleaved:
        parts.append("interleaved = true")
    if kind == "default":
        return parts
    if kind not in ("linear", "yarn"):
        raise ArchcError([Diagnostic("E0502", f"rope scaling `{kind}` is not supported for "
                                     f"`{c.model_type}` yet", help="supported: linear, yarn")])
    orig = c.rope("original_max_position_embeddings", None)
    if orig is not None:
        orig = int(number(c, "original_max_position_embeddings", orig))
    factor = c.rope("factor", None)
    if factor is None and orig:  # transformers: max_position_embeddings / original
        factor = c.get("max_position_embeddings") / orig
    parts += [f"scaling = {kind}", f"factor = {number(c, 'factor', factor)!r}"]
    if kind == "yarn":
        parts.append(f"original_max = {size(c, 'original_max_position_embeddings', orig)}")
        for key, mine in (("beta_fast", "beta_fast"), ("beta_slow", "beta_slow"),
                          ("mscale", "mscale"), ("mscale_all_dim", "mscale_all_dim"),
                          ("attention_factor", "attention_factor")):
            v = c.rope(key, None)
            if v:
                parts.append(f"{mine} = {number(c, key, v)!r}")
        truncate = c.rope("truncate", True)
        if truncate is False:
            parts.append("truncate = false")
    return parts


# ---------------------------------------------------------------- the spec text
MOE_NOTE = ("Every expert runs on every token, and the router's gates zero all but the top k "
            "(`archc stats` counts the active parameters).")


def condition(chosen: list[int], n: int) -> str | None:
    """A compile-time test of `layers` that holds exactly for `chosen` (None: every layer)."""
    if chosen == list(range(n)):
        return None
    for step in (1, 2, 3, 4):  # a start, every step-th layer from there
        if chosen and chosen == list(range(chosen[0], n, step)):
            parts = [f"layers >= {chosen[0]}"] if chosen[0] >= step else []
            parts += [f"layers % {step} == {chosen[0] % step}"] if step > 1 else []
            return " and ".join(parts)
    rest = [i for i in range(n) if i not in chosen]
    if chosen and len(rest) < len(chosen):
        return " and ".join(f"layers != {i}" for i in rest)
    return " or ".join(f"layers == {i}" for i in chosen) or "false"


def wrap(head: str, opts: list[str], tail: str, indent: int, width: int = 96) -> list[str]:
    return decoder.wrap(head, opts, tail, indent, width)  # this family's spec is 96 wide


def render(c: HFConfig, lets: list[str], layer: list[str], what: str,
           pre: tuple[str, ...] | list[str] = ()) -> str:
    """A decoder spec: `pre` lines (the rope config), embeddings, `repeat layers` of `layer`
    (which updates x), final RMSNorm, head (untied, tied or none, from the config)."""
    head = llama.head_kind(c, False)
    lines = [f"# {c.architecture or c.model_type} imported from a Hugging Face checkpoint by "
             "`archc import-hf`.", *textwrap.wrap(what, 96, initial_indent="# ",
                                                   subsequent_indent="# "),
             f"model {c.model_type} {{",
             *("  " + x for x in wrap("let ", lets, "", 4)), "",
             "  input input_ids: int64[batch, seq]", "  input attention_mask: int64[batch, seq]",
             "", *("  " + x for x in pre), "  x = embed(input_ids, vocab, d) as embed_tokens",
             "  repeat layers as layers {",
             *("    " + x for x in layer), "  }"]
    if head == "none":
        lines.append("  output last_hidden_state = rms_norm(x, eps) as norm")
    else:
        tied = ", tied = embed_tokens" if head == "tied" else ""
        lines.append(f"  output logits = lm_head(rms_norm(x, eps) as norm, vocab{tied})")
    return "\n".join(lines) + "\n}\n"


def ffn_lines(sparse: list[int], n: int, moe: list[str], dense: str | None) -> list[str]:
    """`x = x + FFN(h)`: the MoE call on `sparse` layers, the dense one elsewhere."""
    cond = condition(sparse, n)
    if cond is None or dense is None:
        return ["x = x + " + moe[0], *moe[1:]]
    return [f"if {cond} {{", "  f = " + moe[0], *("  " + m for m in moe[1:]),
            f"}} else {{ f = {dense} }}", "x = x + f"]


# ---------------------------------------------------------------- expert tensors
def experts(out: common.Weights, t: Tensors, hf: str, me: str, e: int, d: int, ff: int,
            names=("gate_proj", "up_proj", "down_proj")) -> None:
    """Experts fused ([E, 2ff, d] gate_up_proj, [E, d, ff] down_proj, as transformers 5 saves
    them) or per expert (`experts.N.gate_proj.weight`, as published) -> experts.gate/up [E,d,ff]
    and experts.down [E,ff,d]."""
    if t.has(f"{hf}.gate_up_proj"):
        gate_up = t.take(f"{hf}.gate_up_proj", (e, 2 * ff, d))
        gate, up = gate_up[:, :ff], gate_up[:, ff:]
        down = t.take(f"{hf}.down_proj", (e, d, ff))
    else:
        gate, up, down = (np.stack([t.take(f"{hf}.{j}.{k}.weight") for j in range(e)])
                          for k in names)
    out[f"{me}.gate"] = np.ascontiguousarray(gate.transpose(0, 2, 1))
    out[f"{me}.up"] = np.ascontiguousarray(up.transpose(0, 2, 1))
    out[f"{me}.down"] = np.ascontiguousarray(down.transpose(0, 2, 1))


def glu(out: common.Weights, t: Tensors, hf: str, me: str, d: int, ff: int) -> None:
    for mine, theirs in (("gate", "gate_proj"), ("up", "up_proj")):
        out[f"{me}.{mine}.weight"] = t.linear(f"{hf}.{theirs}.weight", d, ff)
    out[f"{me}.down.weight"] = t.linear(f"{hf}.down_proj.weight", ff, d)


def head(out: common.Weights, c: HFConfig, t: Tensors, vocab: int, d: int) -> None:
    out["embed_tokens.weight"] = t.take("model.embed_tokens.weight", (vocab, d))
    out["norm.weight"] = t.take("model.norm.weight", (d,))
    if llama.head_kind(c, False) == "untied":
        out["lm_head.weight"] = t.linear("lm_head.weight", d, vocab)


# ---------------------------------------------------------------- qwen2_moe itself
def sparse_layers(c: HFConfig, n: int) -> list[int]:
    step = size(c, "decoder_sparse_step", 1) or 1
    only = set(indices(c, "mlp_only_layers", n))
    if not n_experts(c):
        return []
    return [i for i in range(n) if i not in only and (i + 1) % step == 0]


def attention_dims(c: HFConfig, qkv_bias: bool, out_bias: bool) -> Dims:
    d, heads = c.get("hidden_size"), c.get("num_attention_heads")
    return Dims(d, heads, c.get("num_key_value_heads", default=heads),
                c.get("head_dim", default=None) or d // heads, qkv_bias, out_bias)


def lets(c: HFConfig, a: Dims, extra: list[str]) -> list[str]:
    out = [f"vocab = {c.get('vocab_size')}", f"d = {a.d}", f"heads = {a.heads}",
           f"kv_heads = {a.kv_heads}", f"head_dim = {a.head_dim}",
           f"layers = {c.get('num_hidden_layers')}",
           f"eps = {number(c, 'rms_norm_eps', c.get('rms_norm_eps', default=1e-6), False)!r}",
           f"ff = {c.get('intermediate_size')}", f"experts = {n_experts(c)}",
           f"top_k = {c.get('num_experts_per_tok')}",
           f"expert_ff = {size(c, 'moe_intermediate_size')}"]
    return out + extra


def attention_call(c: HFConfig, a: Dims, extra: tuple[str, ...] = ()) -> list[str]:
    window = ""
    types = c.get("layer_types", default=None)
    if flag(c, "use_sliding_window", False) and types and "sliding_attention" in types:
        window = "window = w"
    opts = ["heads", "kv_heads = kv_heads", "head_dim = head_dim", "causal",
            "mask = attention_mask", *([window] if window else []), "rope = rotary_cfg",
            f"qkv_bias = {str(a.qkv_bias).lower()}", f"out_bias = {str(a.out_bias).lower()}",
            *extra]
    lines = ["h = rms_norm(x, eps) as input_norm"]
    if window:
        sliding = [i for i, k in enumerate(types) if k == "sliding_attention"]
        lines.append(f"if {condition(sliding, len(types)) or 'true'} "
                     f"{{ w = {c.get('sliding_window')} }} else {{ w = 0 }}")
    return lines + wrap("x = x + attention(h, ", opts, ") as self_attn", 8)


def describe(c: HFConfig, tensors=None) -> str:
    a = attention_dims(c, flag(c, "qkv_bias", True), False)
    n = c.get("num_hidden_layers")
    norm = str(flag(c, "norm_topk_prob", False)).lower()
    moe = wrap("routed_glu_moe(h, experts, top_k, expert_ff, ",
               [f"act = {llama.act(c.get('hidden_act', default='silu'))}",
                f"normalize = {norm}", "shared_hidden = shared_ff", "shared_gate"],
               ") as mlp", 10, 86)
    layer = [*attention_call(c, a), "h = rms_norm(x, eps) as post_attention_norm",
             *ffn_lines(sparse_layers(c, n), n, moe, "glu(h, ff, act = silu) as mlp")]
    extra = [f"shared_ff = {size(c, 'shared_expert_intermediate_size')}"]
    return render(c, lets(c, a, extra), layer, MOE_NOTE, rope_line(c))


def weights(c: HFConfig, spec: str, t: Tensors) -> common.Weights:
    return moe_weights(c, t, attention_dims(c, flag(c, "qkv_bias", True), False),
                       qk_norm=False, shared_expert=True)


def moe_weights(c: HFConfig, t: Tensors, a, qk_norm: bool, shared_expert: bool
                ) -> common.Weights:
    """The Qwen MoE layer stack: norms, attention (with per-head q/k norms: Qwen3), and a
    dense GLU or routed experts (with a gated shared expert: Qwen2) per layer."""
    n, e, d = c.get("num_hidden_layers"), n_experts(c), a.d
    out: common.Weights = {}
    sparse = set(sparse_layers(c, n))
    for i in range(n):
        hf, me = f"model.layers.{i}", f"layers.{i}"
        layer_norms(out, t, hf, me, d)
        common.attention(out, t, f"{hf}.self_attn", f"{me}.self_attn", a)
        for k in ("q_norm", "k_norm") if qk_norm else ():
            common.norm(out, t, f"{hf}.self_attn.{k}", f"{me}.self_attn.{k}", a.head_dim, False)
        if i not in sparse:
            glu(out, t, f"{hf}.mlp", f"{me}.mlp", d, c.get("intermediate_size"))
            continue
        out[f"{me}.mlp.router.weight"] = t.linear(f"{hf}.mlp.gate.weight", d, e)
        experts(out, t, f"{hf}.mlp.experts", f"{me}.mlp.experts", e, d,
                size(c, "moe_intermediate_size"))
        if shared_expert:
            glu(out, t, f"{hf}.mlp.shared_expert", f"{me}.mlp.shared_expert", d,
                size(c, "shared_expert_intermediate_size"))
            out[f"{me}.mlp.shared_expert_gate.weight"] = t.linear(
                f"{hf}.mlp.shared_expert_gate.weight", d, 1)
    head(out, c, t, c.get("vocab_size"), d)
    return out


def layer_norms(out: common.Weights, t: Tensors, hf: str, me: str, d: int) -> None:
    common.norm(out, t, f"{hf}.input_layernorm", f"{me}.input_norm", d, False)
    common.norm(out, t, f"{hf}.post_attention_layernorm", f"{me}.post_attention_norm", d, False)
