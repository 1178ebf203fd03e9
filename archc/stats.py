"""Exact parameter counts of a lowered graph, by role.

`total` counts each parameter once (a tied head or a shared layer once); `with_duplicates`
counts it once per layer that uses it. The four buckets sum to `total`.

Buffers are tensors a checkpoint stores but does not train: the `final_logits_bias` of BART,
Marian, Pegasus and mBART (the library block `logits_bias` names it so). Frameworks do not
count them as parameters, so neither does `total`: they are reported as `buffers`.
"""

from __future__ import annotations

from archc.ir.graph import Graph
from archc.ir.types import numel

BUCKETS = {
    "token_embedding": "token embedding",
    "position_embedding": "position and token-type embeddings",
    "token_type_embedding": "position and token-type embeddings",
    "head": "untied output head",
    "other": "non-embedding",
}
BUFFERS = ("final_logits_bias",)  # parameter names (last component) that are buffers


def is_buffer(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in BUFFERS


def param_stats(graph: Graph) -> dict:
    buckets = dict.fromkeys(BUCKETS.values(), 0)
    total = dup = buffers = 0
    for name, p in graph.params.items():
        n = numel(p.type.shape)
        if is_buffer(name):
            buffers += n
            continue
        total += n
        dup += n * max(1, graph.param_uses.get(name, 1))
        buckets[BUCKETS[p.attrs.get("role", "other")]] += n
    # Per token, a mixture-of-experts layer runs top_k of its experts. A layer in a shared
    # repeat records its experts once per step: count each parameter once.
    idle = {n: numel(graph.params[n].type.shape) * (m["experts"] - m["top_k"]) // m["experts"]
            for m in graph.meta.get("moe", []) for n in m["params"]}
    kv = graph.meta.get("kv_per_token", 0)
    return {"model": graph.name, "parameters": total, "with_duplicates": dup,
            "active_per_token": total - sum(idle.values()), "tensors": len(graph.params),
            "breakdown": buckets, "buffers": buffers,
            "kv_cache_bytes_per_token": {"float32": 4 * kv, "float16": 2 * kv}}


def format_stats(s: dict) -> str:
    kv = s["kv_cache_bytes_per_token"]
    rows = [("parameters", s["parameters"], ""),
            ("with duplicates", s["with_duplicates"], "  (tied/shared weights per use)"),
            ("active per token", s["active_per_token"], "  (mixture of experts: top-k only)"),
            ("tensors", s["tensors"], "")]
    rows += [(f"  {k}", v, "") for k, v in s["breakdown"].items()]
    if s["buffers"]:
        rows.append(("buffers", s["buffers"], "  (stored, not trained: not parameters)"))
    rows += [("KV cache bytes/token", kv["float32"], f"  (float32; float16: {kv['float16']:,})")]
    width = max(len(r[0]) for r in rows)
    lines = [f"model {s['model']}"]
    lines += [f"  {k:<{width}} {v:>16,}{note}" for k, v, note in rows]
    return "\n".join(lines)
