"""deepseek_v2: deepseek_v3's latent attention (rope always on interleaved pairs) with a softmax
router: `greedy` top-k, or `group_limited_greedy` (the best `topk_group` of `n_group` groups,
a group ranked by its best expert); the gates are not renormalised (transformers' router
ignores `norm_topk_prob`) and are scaled by `routed_scaling_factor`; no correction bias."""

from __future__ import annotations

from archc.diagnostics import ArchcError, Diagnostic
from archc.hf.config import HFConfig
from archc.hf.deepseek_v3 import mla_layer, mla_lets, mla_weights, scale_option
from archc.hf.qwen2_moe import MOE_NOTE, render, rope_line, size
from archc.hf.tensors import Tensors


def router_opts(c: HFConfig) -> list[str]:
    if c.data.get("scoring_func", "softmax") != "softmax":
        raise ArchcError([Diagnostic("E0506", f"`{c.path}`: `scoring_func` = "
                                     f"{c.data['scoring_func']!r} is not supported",
                                     help="deepseek_v2 routes with `softmax`")])
    method = c.data.get("topk_method") or "greedy"
    if method not in ("greedy", "group_limited_greedy"):
        raise ArchcError([Diagnostic("E0506", f"`{c.path}`: `topk_method` = {method!r} is not "
                                     "supported", help="supported: greedy, group_limited_greedy")])
    opts = []
    if method == "group_limited_greedy":
        opts += [f"groups = {size(c, 'n_group')}", f"group_k = {size(c, 'topk_group')}",
                 "group_by = max"]
    return opts + scale_option(c)


def describe(c: HFConfig, tensors=None) -> str:
    # DeepSeek-V2 rotates interleaved pairs (complex multiplication)
    return render(c, mla_lets(c), mla_layer(c, router_opts(c)), MOE_NOTE,
                  rope_line(c, interleaved=True))


def weights(c: HFConfig, spec: str, t: Tensors):
    return mla_weights(c, t, correction=False)
