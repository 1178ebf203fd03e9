"""Exact parameter counts of a lowered graph, by role.

`total` counts each parameter once (a tied head or a shared layer once); `with_duplicates`
counts it once per layer that uses it. The four buckets sum to `total`.
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


def param_stats(graph: Graph) -> dict:
    buckets = dict.fromkeys(BUCKETS.values(), 0)
    total = dup = 0
    for name, p in graph.params.items():
        n = numel(p.type.shape)
        total += n
        dup += n * max(1, graph.param_uses.get(name, 1))
        buckets[BUCKETS[p.attrs.get("role", "other")]] += n
    return {"model": graph.name, "parameters": total, "with_duplicates": dup,
            "tensors": len(graph.params), "breakdown": buckets}


def format_stats(s: dict) -> str:
    width = max(len(k) for k in s["breakdown"])
    lines = [f"model {s['model']}",
             f"  parameters        {s['parameters']:>16,}",
             f"  with duplicates   {s['with_duplicates']:>16,}  (tied/shared weights per use)",
             f"  tensors           {s['tensors']:>16,}"]
    lines += [f"    {k:<{width}} {v:>16,}" for k, v in s["breakdown"].items()]
    return "\n".join(lines)
