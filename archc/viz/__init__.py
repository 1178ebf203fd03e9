"""`archc viz`: pictures of a model as self-contained SVG (or an HTML page around the same
SVG) that open in a browser as is and are byte-identical for the same spec.

- `svg(graph)`: the block diagram in the style of the papers' figures (`blocks.py`), drawn from
  the lowered graph's call records and its dataflow (`flow.py`).
- `svg_ir(graph)`: the IR's dataflow graph, one node per op, grouped by layer (`ir.py`).
"""

from __future__ import annotations

from archc.ir.graph import Graph
from archc.viz.blocks import Diagram
from archc.viz.common import esc, page
from archc.viz.ir import svg_ir


def svg(graph: Graph) -> str:
    """The block diagram of a lowered (unoptimized) graph, as SVG text."""
    return Diagram(graph).render()


def html(graph: Graph) -> str:
    """A page around the same SVG: opens in a browser as is."""
    return page(graph.name, svg(graph))


def html_ir(graph: Graph) -> str:
    return page(f"{graph.name} IR", svg_ir(graph))


__all__ = ["esc", "html", "html_ir", "svg", "svg_ir"]
