"""fold_constants: evaluate pure ops whose inputs are all consts, with the op's NumPy kernel.

Params are not consts (weights are bound after compilation), so nothing that reads a weight
folds. Precondition: types are inferred (the folded const keeps the node's type).
"""

from __future__ import annotations

from archc.ir.graph import Graph
from archc.ops import OPS


def fold_constants(graph: Graph):
    from archc.passes import PassResult

    changed = False
    for node in graph.nodes():
        if node.kind != "op" or not OPS[node.op].pure:
            continue
        if not node.inputs or any(i.kind != "const" for i in node.inputs):
            continue
        value = OPS[node.op].numpy(*(i.value for i in node.inputs), **node.attrs)
        const = graph.add_const(value, scope=node.scope)
        graph.replace_all_uses_with(node, const)
        graph.erase_node(node)
        changed = True
    return PassResult(graph, changed)
