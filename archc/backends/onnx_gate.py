"""Values that only exact branches read are computed only when an exact branch runs.

The attention fast paths (archc/ops/sdpa_past.py) put each layer behind an ONNX `If`: the then
branch runs a fused kernel that needs no bias, and the else branch runs the exact lowering,
which reads the [B, 1, T, T] bias that every layer shares. The exporter emits nodes in
topological order, so that bias (and the row checks made from it) sits in the main graph. It
is then built on every run, with O(T^2) memory, although the common case never reads it.

`gate_else_only` moves those nodes into the else branch of one new `If` (like LLVM's code
sinking, but shared: one gate for every reader). A main-graph node moves when its results
are read only inside the else branches of Ifs, or by other nodes that move. The gate's
condition is the AND of those Ifs' conditions. When it holds, no reader runs, so the then
branch only gives placeholders (scalars of the right type).

This holds for any graph: a value read only inside `If(c)`'s else branch is read only when c
is false. The nodes are re-sorted in topological order, each keeping its place where it can.
The nodes are returned unchanged when nothing qualifies, when a placeholder's type is unknown,
or when the gate would close a cycle (a condition computed from a reader's result).
"""

from __future__ import annotations

import heapq

import onnx
from onnx import AttributeProto, TensorProto, helper

_BOOL = {"Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Not", "Xor",
         "IsNaN", "IsInf"}
_INT64 = {"Shape", "Size", "ArgMax", "ArgMin", "NonZero"}


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    out: list[onnx.GraphProto] = []
    for a in node.attribute:
        if a.type == AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def outer_refs(graph: onnx.GraphProto) -> set[str]:
    """The names a subgraph reads from the scopes around it (nested subgraphs included)."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    refs: set[str] = set()
    for node in graph.node:
        refs |= {x for x in node.input if x and x not in defined}
        for sub in _subgraphs(node):
            refs |= outer_refs(sub) - defined
        defined.update(node.output)
    return refs | {o.name for o in graph.output if o.name not in defined}


def _elem_types(nodes: list[onnx.NodeProto], known: dict[str, int]) -> dict[str, int | None]:
    """The element type of every node result that simple rules can tell (None otherwise)."""
    types: dict[str, int | None] = dict(known)
    for n in nodes:
        op = n.op_type
        attrs = {a.name: a for a in n.attribute}
        if op in _BOOL:
            t = TensorProto.BOOL
        elif op in _INT64:
            t = TensorProto.INT64
        elif op == "Cast":
            t = attrs["to"].i
        elif op == "Constant" and "value" in attrs:
            t = attrs["value"].t.data_type
        elif n.domain or _subgraphs(n) or not n.input or op == "Constant":
            t = None
        else:
            t = types.get(n.input[1] if op == "Where" else n.input[0])
        for o in n.output:
            types[o] = t if len(n.output) == 1 else None
    return types


def _region(nodes: list[onnx.NodeProto], outputs: set[str]) -> tuple[set[int], dict]:
    """The nodes only else branches need, and each value's readers: ("main" | "then" | "else",
    index of the reading node)."""
    readers: dict[str, list[tuple[str, int]]] = {}
    for j, n in enumerate(nodes):
        for x in n.input:
            readers.setdefault(x, []).append(("main", j))
        if n.op_type == "If":
            for a in n.attribute:
                kind = "then" if a.name == "then_branch" else "else"
                for x in outer_refs(a.g):
                    readers.setdefault(x, []).append((kind, j))
        else:
            for sub in _subgraphs(n):
                for x in outer_refs(sub):
                    readers.setdefault(x, []).append(("main", j))
    region: set[int] = set()
    for i in range(len(nodes) - 1, -1, -1):  # every reader comes after its producer
        n = nodes[i]
        outs = [o for o in n.output if o]
        if _subgraphs(n) or not outs or outputs.intersection(outs):
            continue
        rs = [r for o in outs for r in readers.get(o, ())]
        if rs and all(k == "else" or (k == "main" and j in region) for k, j in rs):
            region.add(i)
    return region, readers


def gate_else_only(nodes: list[onnx.NodeProto], outputs: set[str],
                   known: dict[str, int]) -> list[onnx.NodeProto]:
    """`nodes` (a main graph in topological order, with `outputs` its output names and `known`
    the element types of its inputs and initializers) with the values only else branches read
    moved behind one `If`; see the module docstring."""
    region, readers = _region(nodes, outputs)
    if not region:
        return nodes
    made = [o for i in sorted(region) for o in nodes[i].output if o]
    gated = [o for o in made if any(k == "else" for k, _ in readers[o])]
    ifs = sorted({j for o in gated for k, j in readers[o] if k == "else"})
    types = _elem_types(nodes, known)
    if any(types.get(o) is None for o in gated):
        return nodes
    rename = {o: f"gated/{o}" for o in made}
    moved = []
    for i in sorted(region):
        n = onnx.NodeProto()
        n.CopyFrom(nodes[i])
        n.input[:] = [rename.get(x, x) for x in n.input]
        n.output[:] = [rename.get(o, o) for o in n.output]
        n.name = f"gated/{n.name}"
        moved.append(n)
    exact = helper.make_graph(moved, "exact_values", [], [
        helper.make_tensor_value_info(rename[o], types[o], None) for o in gated])
    skipped = helper.make_graph(
        [helper.make_node("Constant", [], [f"skipped/{o}"], name=f"skipped/{o}",
                          value=helper.make_tensor(f"skipped/{o}", types[o], [], [0]))
         for o in gated], "skipped", [],
        [helper.make_tensor_value_info(f"skipped/{o}", types[o], None) for o in gated])
    conds = list(dict.fromkeys(nodes[j].input[0] for j in ifs))
    extra, cond = [], conds[0]
    for k, c in enumerate(conds[1:]):
        extra.append(helper.make_node("And", [cond, c], [f"gate_cond_{k}"],
                                      name=f"gate_cond_{k}"))
        cond = f"gate_cond_{k}"
    extra.append(helper.make_node("If", [cond], gated, name="gated_values",
                                  then_branch=skipped, else_branch=exact))
    first = min(region)
    keep = [(i, n) for i, n in enumerate(nodes) if i not in region]
    return _toposort(keep + [(first, n) for n in extra], nodes)


def _toposort(ranked: list[tuple[int, onnx.NodeProto]], original: list[onnx.NodeProto]
              ) -> list[onnx.NodeProto]:
    """The nodes in a topological order, earliest rank first (ties: list order); `original`
    if there is none (a cycle)."""
    producer = {o: k for k, (_, n) in enumerate(ranked) for o in n.output if o}
    needs = []
    for _, n in ranked:
        deps = set(n.input)
        for sub in _subgraphs(n):
            deps |= outer_refs(sub)
        needs.append({producer[x] for x in deps if x in producer})
    waiting = [len(d) for d in needs]
    users: dict[int, list[int]] = {}
    for k, d in enumerate(needs):
        for p in d:
            users.setdefault(p, []).append(k)
    heap = [(ranked[k][0], k) for k in range(len(ranked)) if not waiting[k]]
    heapq.heapify(heap)
    order = []
    while heap:
        _, k = heapq.heappop(heap)
        order.append(ranked[k][1])
        for u in users.get(k, ()):
            waiting[u] -= 1
            if not waiting[u]:
                heapq.heappush(heap, (ranked[u][0], u))
    return order if len(order) == len(ranked) else original
