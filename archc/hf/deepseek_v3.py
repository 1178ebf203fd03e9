"""deepseek_v3: multi-head latent attention (`latent_attention`: low-rank q and kv projections
with RMSNorms, a decoupled rope part with one shared rope key, yarn with DeepSeek's mscale) and
`routed_glu_moe` experts: a sigmoid router whose picks use a learned correction bias, limited to
the best `topk_group` of `n_group` expert groups, top-k gates renormalised and scaled by
`routed_scaling_factor`, shared experts as one wide GLU; the first `first_k_dense_replace`
layers keep a dense FFN. Its KV cache holds the latent and the rope key per token and layer
(`archc stats` counts them). deepseek_v2 reuses this with its own router."""

from __future__ import annotations

import math

from archc.diagnostics import ArchcError, Diagnostic
from archc.hf import common, llama
from archc.hf.config import HFConfig
from archc.hf.qwen2_moe import (
    MOE_NOTE,
    experts,
    ffn_lines,
    flag,
    glu,
    head,
    layer_norms,
    n_experts,
    number,
    render,
    rope_line,
    size,
    wrap,
)
from archc.hf.tensors import Tensors


def mla_lets(c: HFConfig) -> list[str]:
    return [f"vocab = {c.get('vocab_size')}", f"d = {c.get('hidden_size')}",
            f"heads = {c.get('num_attention_heads')}", f"layers = {c.get('num_hidden_layers')}",
            f"eps = {number(c, 'rms_norm_eps', c.get('rms_norm_eps', default=1e-6), False)!r}",
            f"ff = {c.get('intermediate_size')}", f"experts = {n_experts(c)}",
            f"top_k = {c.get('num_experts_per_tok')}",
            f"expert_ff = {size(c, 'moe_intermediate_size')}",
            f"shared_ff = {size(c, 'moe_intermediate_size') * size(c, 'n_shared_experts', 0)}",
            f"q_rank = {size(c, 'q_lora_rank', 0) or 0}", f"kv_rank = {size(c, 'kv_lora_rank')}",
            f"nope_dim = {size(c, 'qk_nope_head_dim')}",
            f"rope_dim = {size(c, 'qk_rope_head_dim')}", f"v_dim = {size(c, 'v_head_dim')}"]


def scale_text(c: HFConfig) -> str:
    """1/sqrt(qk head dim), times mscale(factor, mscale_all_dim)^2 under yarn (as transformers)."""
    text = "(nope_dim + rope_dim) ** -0.5"
    kind = c.rope("rope_type", None) or c.rope("type", "default")
    m_all = c.rope("mscale_all_dim", None)
    if kind != "default" and m_all:
        factor = number(c, "factor", c.rope("factor", None))
        m = 1.0 if factor <= 1 else 0.1 * number(c, "mscale_all_dim", m_all) * \
            math.log(factor) + 1.0
        text += f" * {m * m!r}"
    return text


def mla_layer(c: HFConfig, moe_opts: list[str]) -> list[str]:
    n = c.get("num_hidden_layers")
    first = size(c, "first_k_dense_replace", 0)
    freq = size(c, "moe_layer_freq", 1) or 1
    sparse = [i for i in range(n) if n_experts(c) and i >= first and i % freq == 0]
    opts = ["heads", "kv_rank", "nope_dim", "rope_dim", "v_dim", "q_rank = q_rank",
            "rope = rotary_cfg", "mask = attention_mask",
            f"scale = {scale_text(c)}",
            f"bias = {str(flag(c, 'attention_bias', False)).lower()}"]
    act = llama.act(c.get("hidden_act", default="silu"))
    moe = wrap("routed_glu_moe(h, experts, top_k, expert_ff, ",
               [f"act = {act}", *moe_opts, "shared_hidden = shared_ff"], ") as mlp", 10, 86)
    return ["h = rms_norm(x, eps) as input_norm",
            *wrap("x = x + latent_attention(h, ", opts, ") as self_attn", 8),
            "h = rms_norm(x, eps) as post_attention_norm",
            *ffn_lines(sparse, n, moe, f"glu(h, ff, act = {act}) as mlp")]


def router_opts(c: HFConfig) -> list[str]:
    for key, known in (("scoring_func", "sigmoid"), ("topk_method", "noaux_tc")):
        if c.data.get(key, known) != known:  # transformers' DeepSeek-V3 router knows no other
            raise ArchcError([Diagnostic("E0506", f"`{c.path}`: `{key}` = "
                                         f"{c.data[key]!r} is not supported",
                                         help=f"deepseek_v3 routes with `{known}`")])
    opts = ["score = sigmoid", f"normalize = {str(flag(c, 'norm_topk_prob', True)).lower()}"]
    groups, group_k = size(c, "n_group", 1) or 1, size(c, "topk_group", 1) or 1
    if groups > 1:
        opts += [f"groups = {groups}", f"group_k = {group_k}"]
    opts.append("correction")
    return opts + scale_option(c)


def scale_option(c: HFConfig) -> list[str]:
    """`scale = f` for a routed scaling factor other than 1 (DeepSeek-V2 and V3)."""
    scale = number(c, "routed_scaling_factor", c.data.get("routed_scaling_factor", 1.0))
    return [f"scale = {scale!r}"] if scale != 1.0 else []


def describe(c: HFConfig, tensors=None) -> str:
    return render(c, mla_lets(c), mla_layer(c, router_opts(c)), MOE_NOTE,
                  rope_line(c, interleaved=flag(c, "rope_interleave", True)))


def mla_weights(c: HFConfig, t: Tensors, correction: bool) -> common.Weights:
    n, d, heads, e = c.get("num_hidden_layers"), c.get("hidden_size"), \
        c.get("num_attention_heads"), n_experts(c)
    q_rank, kv_rank = size(c, "q_lora_rank", 0) or 0, size(c, "kv_lora_rank")
    nope, rope, v = (size(c, k) for k in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"))
    bias = flag(c, "attention_bias", False)
    first, freq = size(c, "first_k_dense_replace", 0), size(c, "moe_layer_freq", 1) or 1
    out: common.Weights = {}
    for i in range(n):
        hf, me = f"model.layers.{i}", f"layers.{i}"
        a, s = f"{hf}.self_attn", f"{me}.self_attn"
        layer_norms(out, t, hf, me, d)
        if q_rank:
            common.linear(out, t, f"{a}.q_a_proj", f"{s}.q_a", d, q_rank, bias)
            common.norm(out, t, f"{a}.q_a_layernorm", f"{s}.q_a_norm", q_rank, False)
            common.linear(out, t, f"{a}.q_b_proj", f"{s}.q_b", q_rank, heads * (nope + rope),
                          False)
        else:
            common.linear(out, t, f"{a}.q_proj", f"{s}.q", d, heads * (nope + rope), False)
        common.linear(out, t, f"{a}.kv_a_proj_with_mqa", f"{s}.kv_a", d, kv_rank + rope, bias)
        common.norm(out, t, f"{a}.kv_a_layernorm", f"{s}.kv_a_norm", kv_rank, False)
        common.linear(out, t, f"{a}.kv_b_proj", f"{s}.kv_b", kv_rank, heads * (nope + v), False)
        common.linear(out, t, f"{a}.o_proj", f"{s}.o", heads * v, d, bias)
        if not (e and i >= first and i % freq == 0):
            glu(out, t, f"{hf}.mlp", f"{me}.mlp", d, c.get("intermediate_size"))
            continue
        out[f"{me}.mlp.router.weight"] = t.linear(f"{hf}.mlp.gate.weight", d, e)
        if correction:
            out[f"{me}.mlp.router.correction_bias"] = t.take(
                f"{hf}.mlp.gate.e_score_correction_bias", (e,))
        ff = size(c, "moe_intermediate_size")
        experts(out, t, f"{hf}.mlp.experts", f"{me}.mlp.experts", e, d, ff)
        if size(c, "n_shared_experts", 0):
            glu(out, t, f"{hf}.mlp.shared_experts", f"{me}.mlp.shared_expert", d,
                ff * size(c, "n_shared_experts"))
    head(out, c, t, c.get("vocab_size"), d)
    return out


def weights(c: HFConfig, spec: str, t: Tensors) -> common.Weights:
    return mla_weights(c, t, correction=True)
