"""infer_shapes: the interpreter loop run over each op's shape rule instead of its kernel."""

from __future__ import annotations

from archc.ir.graph import Graph, Node
from archc.ir.types import TensorType
from archc.ops import OPS


def infer_node(node: Node) -> TensorType:
    """The type `node` produces, by its op's shape rule (raises ShapeError)."""
    return OPS[node.op].infer(*(i.type for i in node.inputs), **node.attrs)


def infer_shapes(graph: Graph):
    from archc.passes import PassResult

    changed = False
    for node in graph.nodes():
        if node.kind == "op":
            new = infer_node(node)
            changed |= new != node.type
            node.type = new
    return PassResult(graph, changed)
