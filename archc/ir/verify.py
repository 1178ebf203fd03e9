"""verify(graph): the IR's invariants, checked after every pass in tests and debug runs."""

from __future__ import annotations

from archc.ir.graph import KINDS, Graph
from archc.ir.printer import fmt_node
from archc.ops import OPS, get_op


class VerifyError(AssertionError):
    pass


def verify(graph: Graph) -> None:
    if graph.has_cycle():
        raise VerifyError("graph has a cycle")
    seen: set[int] = set()
    for node in graph.nodes():
        where = f"in `{fmt_node(node)}`"
        if node.kind not in KINDS:
            raise VerifyError(f"unknown node kind `{node.kind}` {where}")
        for i in node.inputs:
            if i.id not in seen or i not in graph:
                raise VerifyError(f"%{i.id} used before it is defined {where}")
        seen.add(node.id)
        if node.kind != "op":
            continue
        try:
            op = get_op(node.op)
        except KeyError as e:
            raise VerifyError(f"{e.args[0]} {where}") from None
        lo, hi = op.arity
        if not lo <= len(node.inputs) <= hi:
            n = len(node.inputs)
            raise VerifyError(f"`{node.op}` takes {lo}..{hi} inputs, has {n} {where}")
        missing = [a for a, req in op.attrs.items() if req and a not in node.attrs]
        unknown = [a for a in node.attrs if a not in op.attrs]
        if missing or unknown:
            raise VerifyError(f"attrs missing {missing} / unknown {unknown} {where}")
        expected = OPS[node.op].infer(*(i.type for i in node.inputs), **node.attrs)
        if expected != node.type:
            raise VerifyError(f"type {node.type} but the shape rule gives {expected} {where}")
    for name, node in graph.outputs.items():
        if node not in graph:
            raise VerifyError(f"output `{name}` names a node that is not in the graph")
