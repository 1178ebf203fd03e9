"""The NumPy interpreter: one loop over the graph, as in Autodidax's `eval_jaxpr`.

Each value is dropped after its last use, so peak memory follows the live set, not the graph.
An exception inside a kernel is re-raised naming the node (`while executing %7 = ...`).
ARCHC_DEBUG=2 prints every node with its output shape as it runs.

`attention` picks the NumPy kernel of the fused `sdpa` op (-O2): "plain" (every score at once,
O(T^2) memory), "chunked" (a block of queries at a time, O(T * block), the default) or "flash"
(blocks of queries and keys with an online softmax, O(block^2) scores). They give the same
numbers (within 1e-5). Without it, the environment variable ARCHC_ATTENTION decides.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from archc.ir.graph import Graph, Node
from archc.ir.printer import fmt_node
from archc.ops import OPS
from archc.ops.fused import attention_kernel_as


class InterpreterError(RuntimeError):
    pass


def run_graph(graph: Graph, inputs: dict[str, np.ndarray], params: dict[str, np.ndarray],
              attention: str | None = None) -> dict[str, np.ndarray]:
    with attention_kernel_as(attention):
        return _run(graph, inputs, params)


def _run(graph: Graph, inputs, params) -> dict[str, np.ndarray]:
    order = graph.nodes()
    last_use = {i.id: n.id for n in order for i in n.inputs}  # value id -> id of its last reader
    keep = {n.id for n in graph.outputs.values()}
    trace = os.environ.get("ARCHC_DEBUG") == "2"
    env: dict[int, np.ndarray] = {}
    for n in order:
        env[n.id] = _evaluate(n, env, inputs, params)
        if trace:
            shape = [a.shape for a in env[n.id]] if isinstance(env[n.id], tuple) else \
                env[n.id].shape
            print(f"{fmt_node(n)}  -> {shape}", file=sys.stderr)
        for i in {i.id for i in n.inputs}:
            if last_use[i] == n.id and i not in keep:
                del env[i]
    return {name: env[node.id] for name, node in graph.outputs.items()}


def _evaluate(n: Node, env, inputs, params) -> np.ndarray:
    if n.kind == "input":
        return inputs[n.name]
    if n.kind == "param":
        return params[n.name]
    if n.kind == "const":
        return n.value
    try:
        out = OPS[n.op].numpy(*(env[i.id] for i in n.inputs), **n.attrs)
        return out if isinstance(out, tuple) else np.asarray(out)  # a tuple: see ops/fused.py
    except Exception as e:
        raise InterpreterError(f"while executing {fmt_node(n)}: {type(e).__name__}: {e}") from e
