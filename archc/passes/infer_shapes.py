"""infer_shapes: the interpreter loop run over each op's shape rule instead of its kernel."""

from __future__ import annotations

from archc.ir.graph import Graph, Node
from archc.ir.types import ShapeError, TensorType, numel
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


def infer_at(graph: Graph, inputs: dict[str, TensorType]) -> None:
    """The shape rules run again with the graph inputs at these (a run's concrete) types, to say
    where a run failed: raises ShapeError with `.node` set at the first op whose rule refuses
    them (`reshape(x [seq], [2, 2])` holds for seq = 4 only). A symbol a rule still gives
    (`reshape(x, [seq, 4])`) is replaced by its size, and a reshape must keep the count."""
    sizes = {d: n for k, t in inputs.items() if k in graph.inputs
             for d, n in zip(graph.inputs[k].type.shape, t.shape, strict=False)
             if isinstance(d, str)}
    types: dict[int, TensorType] = {}
    for node in graph.nodes():
        if node.kind == "input":
            types[node.id] = inputs.get(node.name, node.type)
        elif node.kind != "op":
            types[node.id] = node.type
        else:
            try:
                t = OPS[node.op].infer(*(types[i.id] for i in node.inputs), **node.attrs)
                if isinstance(t, TensorType):
                    t = t.with_shape(tuple(sizes.get(d, d) for d in t.shape))
                    x = types[node.inputs[0].id] if node.inputs else None
                    if node.op in ("reshape", "reshape_to") and _counts_differ(x, t):
                        raise ShapeError(f"cannot reshape {x} to {list(t.shape)}")
                types[node.id] = t
            except ShapeError as e:
                e.node = node
                raise


def _counts_differ(x: TensorType, t: TensorType) -> bool:
    static = all(isinstance(d, int) for d in (*x.shape, *t.shape))
    return static and numel(x.shape) != numel(t.shape)
