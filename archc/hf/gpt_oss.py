"""gpt_oss: attention with q/k/v/o biases and a learned sink logit per head
(`attention(..., sinks)`), sliding windows on the layers `layer_types` marks, yarn rope; a
mixture of experts whose router has a bias and softmaxes its top-k logits (= the softmax over
all experts renormalised over the picks), and whose experts are clamped SwiGLUs with biases:
h = min(g, L) sigmoid(alpha min(g, L)) (clip(u, -L, L) + 1). The checkpoint stores gate and up
interleaved in one [E, d, 2 ff] tensor (gate at even columns)."""

from __future__ import annotations

import numpy as np

from archc.hf import common
from archc.hf.config import HFConfig
from archc.hf.qwen2_moe import (
    MOE_NOTE,
    attention_dims,
    condition,
    head,
    layer_norms,
    lets,
    n_experts,
    number,
    render,
    rope_line,
    wrap,
)
from archc.hf.tensors import Tensors


def _dims(c: HFConfig):
    bias = c.get("attention_bias", default=True)
    return attention_dims(c, bias, bias)


def describe(c: HFConfig, tensors=None) -> str:
    a, n = _dims(c), c.get("num_hidden_layers")
    types = c.get("layer_types", default=None) or [
        "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    window = c.get("sliding_window", default=None)
    sliding = [i for i, k in enumerate(types[:n]) if k == "sliding_attention"]
    layer = []
    opts = ["heads", "kv_heads = kv_heads", "head_dim = head_dim", "causal",
            "mask = attention_mask"]
    if window and sliding:
        cond = condition(sliding, n)
        layer.append("w = window" if cond is None else
                     f"if {cond} {{ w = window }} else {{ w = 0 }}")
        opts.append("window = w")
    opts += ["rope = rotary_cfg", f"bias = {str(a.qkv_bias).lower()}", "sinks"]
    limit = number(c, "swiglu_limit", c.data.get("swiglu_limit", 7.0))
    alpha = number(c, "swiglu_alpha", c.data.get("swiglu_alpha", 1.702))
    moe = wrap("x = x + routed_glu_moe(h, experts, top_k, expert_ff, ",
               ["normalize = true", "router_bias = true", "bias = true", f"limit = {limit!r}",
                f"alpha = {alpha!r}"], ") as mlp", 10, 86)
    layer += ["h = rms_norm(x, eps) as input_norm",
              *wrap("x = x + attention(h, ", opts, ") as self_attn", 8),
              "h = rms_norm(x, eps) as post_attention_norm", *moe]
    extra = [f"window = {window}"] if window and sliding else []
    # gpt_oss has no separate expert width: intermediate_size is the experts'
    c.data.setdefault("moe_intermediate_size", c.get("intermediate_size"))
    return render(c, lets(c, a, extra), layer, MOE_NOTE, rope_line(c, theta_default=150000.0))


def weights(c: HFConfig, spec: str, t: Tensors) -> common.Weights:
    a = _dims(c)
    n, e, d, ff = c.get("num_hidden_layers"), n_experts(c), a.d, c.get("intermediate_size")
    out: common.Weights = {}
    for i in range(n):
        hf, me = f"model.layers.{i}", f"layers.{i}"
        layer_norms(out, t, hf, me, d)
        common.attention(out, t, f"{hf}.self_attn", f"{me}.self_attn", a)
        out[f"{me}.self_attn.sinks"] = t.take(f"{hf}.self_attn.sinks", (a.heads,))
        common.linear(out, t, f"{hf}.mlp.router", f"{me}.mlp.router", d, e, True)
        x, m = f"{hf}.mlp.experts", f"{me}.mlp.experts"
        gate_up = t.take(f"{x}.gate_up_proj", (e, d, 2 * ff))  # [E, d, 2ff], already [in, out]
        bias = t.take(f"{x}.gate_up_proj_bias", (e, 2 * ff))
        out[f"{m}.gate"] = np.ascontiguousarray(gate_up[..., ::2])
        out[f"{m}.up"] = np.ascontiguousarray(gate_up[..., 1::2])
        out[f"{m}.down"] = t.take(f"{x}.down_proj", (e, ff, d))
        out[f"{m}.gate_bias"] = np.ascontiguousarray(bias[:, ::2])
        out[f"{m}.up_bias"] = np.ascontiguousarray(bias[:, 1::2])
        out[f"{m}.down_bias"] = t.take(f"{x}.down_proj_bias", (e, d))
    head(out, c, t, c.get("vocab_size"), d)
    return out
