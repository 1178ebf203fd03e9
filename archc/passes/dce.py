"""eliminate_dead_code: erase op and const nodes that no output depends on.

Inputs and params stay: they are the graph's interface, even when a spec leaves one unused.
"""

from __future__ import annotations

from archc.ir.graph import Graph


def eliminate_dead_code(graph: Graph):
    from archc.passes import PassResult

    changed = False
    for node in reversed(graph.nodes()):
        if node.kind in ("op", "const") and not graph.users(node) and not graph.is_output(node):
            graph.erase_node(node)
            changed = True
    return PassResult(graph, changed)
