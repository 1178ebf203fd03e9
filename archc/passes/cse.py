"""eliminate_common_subexpressions: one node per (op, attrs, inputs); equal consts merge too.

Masks and rotary angles are rebuilt by every layer during lowering; this pass leaves one copy.
"""

from __future__ import annotations

import hashlib

from archc.ir.graph import Graph, Node
from archc.ir.printer import fmt_attrs
from archc.ops import OPS


def _key(node: Node):
    if node.kind == "const":
        v = node.value
        return ("const", str(v.dtype), v.shape, hashlib.sha256(v.tobytes()).hexdigest())
    ids = [i.id for i in node.inputs]
    if OPS[node.op].commutative:
        ids.sort()
    return ("op", node.op, tuple(ids), fmt_attrs(node.attrs))


def eliminate_common_subexpressions(graph: Graph):
    from archc.passes import PassResult

    seen: dict[tuple, Node] = {}
    changed = False
    for node in graph.nodes():
        if node.kind not in ("op", "const"):
            continue
        key = _key(node)
        first = seen.setdefault(key, node)
        if first is not node:
            graph.replace_all_uses_with(node, first)
            graph.erase_node(node)
            changed = True
    return PassResult(graph, changed)
