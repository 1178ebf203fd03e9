"""qwen3_moe: qwen2_moe without the shared expert or q/k/v biases, with a per-head RMSNorm of
queries and keys (`attention(..., qk_norm = rms_norm)`); the router's top-k gates are
renormalised when `norm_topk_prob` is set (Qwen3-30B-A3B sets it)."""

from __future__ import annotations

from archc.hf import common, llama
from archc.hf.config import HFConfig
from archc.hf.qwen2_moe import (
    MOE_NOTE,
    attention_call,
    attention_dims,
    ffn_lines,
    flag,
    lets,
    moe_weights,
    render,
    rope_line,
    sparse_layers,
    wrap,
)
from archc.hf.tensors import Tensors


def _dims(c: HFConfig):
    bias = flag(c, "attention_bias", False)
    return attention_dims(c, bias, bias)


def describe(c: HFConfig, tensors=None) -> str:
    a, n = _dims(c), c.get("num_hidden_layers")
    norm = str(flag(c, "norm_topk_prob", False)).lower()
    act = llama.act(c.get("hidden_act", default="silu"))
    moe = wrap("routed_glu_moe(h, experts, top_k, expert_ff, ",
               [f"act = {act}", f"normalize = {norm}"], ") as mlp", 10, 86)
    layer = [*attention_call(c, a, ("qk_norm = rms_norm", "qk_eps = eps")),
             "h = rms_norm(x, eps) as post_attention_norm",
             *ffn_lines(sparse_layers(c, n), n, moe, f"glu(h, ff, act = {act}) as mlp")]
    return render(c, lets(c, a, []), layer, MOE_NOTE, rope_line(c))


def weights(c: HFConfig, spec: str, t: Tensors) -> common.Weights:
    return moe_weights(c, t, _dims(c), qk_norm=True, shared_expert=False)
