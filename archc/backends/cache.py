"""The key both backends cache a prepared graph under: onnxruntime sessions (`ort.run_cached`)
and bound NumPy plans (`numpy_interp.run_bound`). Neutral ground, so that neither backend
imports the other (the NumPy backend must not need onnxruntime's module).

A key is the graph's identity and structure (its node ids in order, so a pass that rewrites the
graph in place makes a new key) and the identity of each weight array it reads (the caches hold
the arrays, so an id is never reused while cached). Mutating a weight array in place is not seen.
"""

from __future__ import annotations

import numpy as np

from archc.ir.graph import Graph

SESSION_CACHE_SIZE = 4  # a cached entry holds its weights; keep only the last few


def cache_key(graph: Graph, weights: dict[str, np.ndarray], provider, threads) -> tuple:
    """What a cached session (or bound NumPy plan) stands for: the graph as it is now and the
    identity of each weight array it reads."""
    structure = hash((tuple(n.id for n in graph.nodes()),
                      tuple((k, v.id) for k, v in graph.outputs.items())))
    arrays = tuple((name, id(weights[name])) for name in sorted(graph.params))
    return (id(graph), structure, arrays, provider, threads)
