"""The NumPy interpreter: one loop over the graph, as in Autodidax's `eval_jaxpr`.

`compile_graph` walks the graph once and turns it into a `Plan`: every value gets a slot in one
list (its index in the topological order), and every op node becomes a `Step` holding its
kernel, the slots it reads, its attributes, the slot it writes and the slots whose last reader
it is. `run_plan` is then a flat loop with no per-node dict lookups, kind tests or use-def work,
which is what one decode step (a few hundred small nodes) pays for; a `Runner`
(archc.kvcache) compiles its graph once and runs the plan every step, `run_graph` compiles and
runs. Compile the graph again after changing it: a plan is a snapshot. `bind` fills a plan's
weights in once (and lays out transposed weights for BLAS).

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
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from archc.backends.cache import SESSION_CACHE_SIZE, cache_key
from archc.ir.graph import Graph, Node
from archc.ir.printer import fmt_node
from archc.ops import OPS
from archc.ops.fused import attention_kernel_as


class InterpreterError(RuntimeError):
    pass


class Step(NamedTuple):
    kernel: Callable[..., Any]
    args: tuple[int, ...]  # slots of the inputs
    attrs: dict[str, Any]
    out: int  # slot of the result
    free: tuple[int, ...]  # slots read here for the last time (graph outputs never are)
    node: Node  # for error messages and tracing


class Plan(NamedTuple):
    values: list  # the slots before a run: consts filled in, everything else None
    feeds: tuple[tuple[int, str, str], ...]  # (slot, "input" | "param", name)
    steps: tuple[Step, ...]
    outputs: dict[str, int]  # output name -> slot


def compile_graph(graph: Graph) -> Plan:
    order = graph.nodes()
    slot = {n.id: k for k, n in enumerate(order)}
    last = {i.id: k for k, n in enumerate(order) for i in n.inputs}  # value -> last reader
    keep = {n.id for n in graph.outputs.values()}
    steps = []
    for k, n in enumerate(order):
        if n.kind == "op":
            free = sorted({slot[i.id] for i in n.inputs if last[i.id] == k and i.id not in keep})
            steps.append(Step(_kernel(n), tuple(slot[i.id] for i in n.inputs), n.attrs, k,
                              tuple(free), n))
    return Plan([n.value if n.kind == "const" else None for n in order],
                tuple((slot[n.id], n.kind, n.name) for n in order if n.kind in ("input", "param")),
                tuple(steps), {name: slot[n.id] for name, n in graph.outputs.items()})


def bind(plan: Plan, params: dict[str, np.ndarray]) -> Plan:
    """The plan with the weights filled in, for a caller that runs it many times (a `Runner`).
    A transpose of a weight is computed here, once, into a contiguous array: a tied LM head
    reads the embedding table transposed, and BLAS multiplies by a contiguous [D, V] matrix
    about twice as fast as by a transposed view of the [V, D] table (GPT-2 decode: 4.6 vs
    2.3 ms of a step, one thread). The copy costs the weight's bytes once."""
    values, fixed = list(plan.values), set()
    for k, kind, name in plan.feeds:
        if kind == "param":
            values[k] = params[name]
            fixed.add(k)
    steps = []
    for step in plan.steps:
        if step.node.op in ("transpose", "concat") and all(a in fixed for a in step.args):
            values[step.out] = aligned_copy(_evaluate(step, values))  # packed weights too
            fixed.add(step.out)
        else:
            steps.append(step)
    return Plan(values, tuple(f for f in plan.feeds if f[1] != "param"), tuple(steps),
                plan.outputs)


def aligned_copy(a: np.ndarray, align: int = 64) -> np.ndarray:
    """A C-contiguous copy of `a` that starts on a cache line. NumPy only promises 16 bytes;
    a GEMV over a [512, 32000] float32 matrix 16 bytes off a line took 6% longer (one thread),
    as BLAS's vector loads then straddle two lines."""
    buf = np.empty(a.nbytes + align, np.uint8)
    start = -buf.ctypes.data % align
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _kernel(n: Node) -> Callable[..., Any]:
    if n.op in OPS:
        return OPS[n.op].numpy
    raise InterpreterError(f"while executing {fmt_node(n)}: KeyError: '{n.op}'")


def run_graph(graph: Graph, inputs: dict[str, np.ndarray], params: dict[str, np.ndarray],
              attention: str | None = None) -> dict[str, np.ndarray]:
    return run_plan(compile_graph(graph), inputs, params, attention)


_BOUND: OrderedDict[tuple, tuple] = OrderedDict()  # key -> (graph ref, weights, bound plan)


def run_bound(graph: Graph, inputs: dict[str, np.ndarray], params: dict[str, np.ndarray]
              ) -> dict[str, np.ndarray]:
    """`graph` with its plan compiled and bound once per (graph, weight arrays), as
    `archc.backends.ort.run_cached` keeps sessions: `bind` computes a packed weight's concat
    (55M LLaMA: 59 MB a call) and a tied head's transpose once, not every call."""
    key = cache_key(graph, params, "numpy", None)
    hit = _BOUND.get(key)
    if hit is None or hit[0]() is not graph:
        used = {name: params[name] for name in graph.params}
        hit = _BOUND[key] = (weakref.ref(graph), used, bind(compile_graph(graph), used))
        while len(_BOUND) > SESSION_CACHE_SIZE:
            _BOUND.popitem(last=False)
    _BOUND.move_to_end(key)
    return run_plan(hit[2], inputs, hit[1])


def run_plan(plan: Plan, inputs: dict[str, np.ndarray], params: dict[str, np.ndarray],
             attention: str | None = None) -> dict[str, np.ndarray]:
    with attention_kernel_as(attention):
        return _run(plan, inputs, params)


def _run(plan: Plan, inputs, params) -> dict[str, np.ndarray]:
    values = list(plan.values)
    for k, kind, name in plan.feeds:
        values[k] = inputs[name] if kind == "input" else params[name]
    evaluate, trace = _evaluate, os.environ.get("ARCHC_DEBUG") == "2"
    for step in plan.steps:
        out = values[step.out] = evaluate(step, values)
        if trace:
            shape = [a.shape for a in out] if isinstance(out, tuple) else out.shape
            print(f"{fmt_node(step.node)}  -> {shape}", file=sys.stderr)
        for k in step.free:
            values[k] = None
    return {name: values[k] for name, k in plan.outputs.items()}


def _evaluate(step: Step, values: list) -> np.ndarray:
    kernel, args, attrs, _, _, node = step
    try:
        out = kernel(*[values[k] for k in args], **attrs)
        return out if isinstance(out, tuple) else np.asarray(out)  # a tuple: see ops/fused.py
    except Exception as e:
        err = InterpreterError(f"while executing {fmt_node(node)}: {type(e).__name__}: {e}")
        err.node, err.cause = node, e  # archc.runner.explained names the spec's line
        raise err from e
