"""The graph IR: `Graph` over networkx, `Node` (one value each), `TensorType`."""

from archc.ir.graph import Graph, Node
from archc.ir.types import TensorType

__all__ = ["Graph", "Node", "TensorType"]
