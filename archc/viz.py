"""`archc viz`: an architecture diagram in the style of the papers' figures, as a
self-contained SVG (or an HTML page around the same SVG).

It draws the collapsed call tree of `archc explain`, bottom to top: the graph inputs, then one
box per top-level layer (the embedding at the bottom), a repeat drawn once as a frame around
the boxes of one step, labelled ×N (dashed and marked "shared weights" for `repeat N shared`;
interleaved variants of one repeat side by side), the graph outputs on top. Edges carry the
type of the value they carry.

Residuals are found in the IR: an `add` in a frame's scope whose operands have one type, one
of them made inside a child layer (the branch's end) and the other outside it. The bypass
starts below the first sibling that reads that other operand, else an operand of the sum it is
(so a pre-norm bypass goes around the norm and the layer, a post-norm one around the layer
alone, and `x + attn(h) + mlp(h)` has two from below the shared norm) and ends in a ⊕ above
the branch's end. An add whose other operand no sibling reads (embeddings summed) is no
residual. Parallel branches are stacked, not drawn side by side.

Columns: a top-level layer whose inputs are all integer (an embedding of token ids) after a
repeat has been drawn starts a new column, so an encoder and a decoder stand side by side. An
arrow runs from a box of an earlier column to a box of a later one when an op of the later
reads a value the earlier made (cross-attention reading the encoder).

The layout is a fixed computation on character counts (7 px a character at 12 px monospace):
no layout library, no fonts fetched, and the same spec gives byte-identical output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from xml.sax.saxutils import escape

from archc.explain import Line, explain
from archc.ir.graph import Graph

CHAR, BOX_H, GAP, PAD, HEAD, LANE, COL_GAP, MARGIN = 7, 40, 34, 12, 24, 12, 90, 20


def esc(text: str) -> str:
    return escape(str(text), {'"': "&quot;", "'": "&#39;"})


@dataclass
class Item:
    """A box (a layer), a frame (a repeat and its step's boxes) or a row (interleaved
    frames side by side). Sizes first, positions (top-left) after layout."""
    kind: str
    line: Line | None = None
    children: list[Item] = field(default_factory=list)
    residuals: list[tuple[int, int]] = field(default_factory=list)  # child index from, to
    w: int = 0
    h: int = 0
    x: int = 0
    y: int = 0

    def match(self) -> str:
        """The scope prefix of the nodes this item stands for (a repeat's first step)."""
        if self.kind == "row":
            return "\0"
        scope = self.line.scope.replace(" shared", "")
        return f"{scope.split('.{')[0]}.{self.line.steps[0]}" if ".{" in scope else scope


def _inside(scope: str, prefix: str) -> bool:
    return scope == prefix or scope.startswith(prefix + ".") or prefix == ""


def _label(line: Line, tied: str = "") -> tuple[str, str]:
    if line.block == "repeat":
        times = f" ×{line.count}" if line.count > 1 else ""
        shared = "  shared weights" if line.shared else ""
        return f"repeat {line.scope.replace(' shared', '')}{times}{shared}", \
            f"{line.total_params:,} params"
    what = f"tied to {tied}" if tied and not line.params else f"{line.params:,} params"
    return line.scope.rsplit(".", 1)[-1] or line.block, f"{line.block} · {what}"


class _Diagram:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.nodes = list(graph.nodes())
        self.readers: dict[int, list[str]] = {}
        for n in self.nodes:
            for i in n.inputs:
                self.readers.setdefault(i.id, []).append(n.scope)
        self.out: list[str] = []
        self.weights: dict[str, set[str]] = {}  # scope -> the layers whose weights it reads
        for n in self.nodes:
            for i in n.inputs:
                if i.kind == "param" and i.name:
                    self.weights.setdefault(n.scope, set()).add(i.name.rsplit(".", 1)[0])

    def label(self, item: Item) -> tuple[str, str]:
        """A box's name and its block and parameters, or whose weights it reuses (`tied`)."""
        scope = item.match()
        tied = sorted({w for s, ws in self.weights.items() if _inside(s, scope) for w in ws
                       if not _inside(w, scope)})
        return _label(item.line, ", ".join(tied))

    # ------------------------------------------------------------ structure
    def columns(self, lines: list[Line]) -> list[list[Item]]:
        cols: list[list[Item]] = [[]]
        seen_repeat = False
        for line in lines:
            ints = line.inputs and all(t.startswith(("i64", "i32")) for t in line.inputs)
            if ints and seen_repeat and line.block != "repeat":
                cols.append([])
                seen_repeat = False
            item = self.frame(line) if line.block == "repeat" else Item("box", line)
            col = cols[-1]
            prev = col[-1] if col else None
            if item.kind == "frame" and prev is not None and prev.kind in ("frame", "row") and \
                    _base(line) == _base(prev.line if prev.kind == "frame" else
                                         prev.children[0].line):
                if prev.kind == "frame":
                    col[-1] = prev = Item("row", children=[prev])
                prev.children.append(item)
            else:
                col.append(item)
            seen_repeat = seen_repeat or line.block == "repeat"
        return cols

    def frame(self, line: Line) -> Item:
        """A repeat's step; a step that is one block call shows that block's layers."""
        children, parent = line.children, line.scope
        while len(children) == 1 and children[0].children and children[0].block != "repeat":
            parent, children = children[0].scope, children[0].children
        item = Item("frame", line, [Item("box", c) for c in children])
        if children:
            if parent == line.scope:  # the step's scope: `layers.0`, or `layer` when shared
                parent = children[0].scope.rsplit(".", 1)[0]
            item.residuals = self.residuals([c.scope for c in children], parent)
        return item

    def residuals(self, scopes: list[str], parent: str) -> list[tuple[int, int]]:
        found: list[tuple[int, int]] = []
        for n in self.nodes:
            if n.kind != "op" or n.op != "add" or n.scope != parent or len(n.inputs) != 2:
                continue
            for a, b in (n.inputs, n.inputs[::-1]):
                if a.kind == "const" or str(a.type) != str(b.type):
                    continue
                end = next((i for i, s in enumerate(scopes) if _inside(b.scope, s)), None)
                if end is None or _inside(a.scope, scopes[end]):
                    continue
                start = None
                for reads in (self.readers.get(a.id, []), self.reads(a, parent)):
                    start = next((i for i, s in enumerate(scopes[: end + 1])
                                  if any(_inside(r, s) for r in reads)), None)
                    if start is not None:
                        break
                if start is not None and (start, end) not in found:
                    found.append((start, end))
                break
        return sorted(found, key=lambda r: (r[1] - r[0], r))

    def reads(self, value, parent: str) -> list[str]:
        """The scopes that read `value`, or a residual sum it is made of (`x + a + b`)."""
        out: list[str] = []
        todo, seen = [value], set()
        while todo:  # a loop, not recursion: a long `repeat N shared` chains N sums
            v = todo.pop()
            if v.id in seen:
                continue
            seen.add(v.id)
            out += self.readers.get(v.id, [])
            if v.kind == "op" and v.op == "add" and v.scope == parent:
                todo += v.inputs
        return out

    # ------------------------------------------------------------ sizes
    def size(self, item: Item) -> None:
        if item.kind == "box":
            main, sub = self.label(item)
            item.w, item.h = max(170, CHAR * max(len(main), len(sub)) + 24), BOX_H
            return
        for c in item.children:
            self.size(c)
        if item.kind == "row":
            item.w = sum(c.w for c in item.children) + GAP * (len(item.children) - 1)
            item.h = max(c.h for c in item.children)
            return
        head = CHAR * len("  ·  ".join(_label(item.line))) + 2 * PAD
        inner = max((c.w for c in item.children), default=0)
        item.w = max(head, inner + 2 * PAD + LANE * (len(item.residuals) + 1))
        item.h = HEAD + 2 * PAD + sum(c.h for c in item.children) + \
            GAP * max(len(item.children) - 1, 0) + GAP

    def place(self, item: Item, x: int, y: int) -> None:
        """Top-left at (x, y); a frame's children stack bottom to top."""
        item.x, item.y = x, y
        if item.kind == "row":
            for c in item.children:
                self.place(c, x, y + (item.h - c.h))
                x += c.w + GAP
        elif item.kind == "frame":
            cy, inner = y + item.h - PAD - GAP // 2, max((c.w for c in item.children), default=0)
            for c in item.children:
                cy -= c.h
                self.place(c, x + PAD + (inner - c.w) // 2, cy)
                cy -= GAP

    # ------------------------------------------------------------ drawing
    def emit(self, text: str) -> None:
        self.out.append(text)

    def text(self, x: int, y: int, s: str, cls: str = "t", anchor: str = "middle") -> None:
        self.emit(f'<text x="{x}" y="{y}" class="{cls}" text-anchor="{anchor}">{esc(s)}</text>')

    def arrow(self, x1: int, y1: int, x2: int, y2: int, cls: str = "e") -> None:
        self.emit(f'<path d="M{x1},{y1} L{x2},{y2}" class="{cls}" marker-end="url(#a)"/>')

    def draw(self, item: Item) -> None:
        if item.kind == "row":
            for c in item.children:
                self.draw(c)
            return
        main, sub = self.label(item)
        scope = esc(item.line.scope)
        if item.kind == "box":
            kind = "norm" if "norm" in item.line.block else "box"
            self.emit(f'<g class="layer" data-scope="{scope}"><rect x="{item.x}" y="{item.y}" '
                      f'width="{item.w}" height="{item.h}" rx="6" class="{kind}"/>')
            cx = item.x + item.w // 2
            self.text(cx, item.y + 17, main, "n")
            self.text(cx, item.y + 32, sub, "s")
            self.emit("</g>")
            return
        dash = " shared" if item.line.shared else ""
        self.emit(f'<g class="repeat" data-scope="{scope}"><rect x="{item.x}" y="{item.y}" '
                  f'width="{item.w}" height="{item.h}" rx="10" class="frame{dash}"/>')
        if item.children:
            first, last = item.children[0], item.children[-1]
            self.arrow(first.x + first.w // 2, item.y + item.h, first.x + first.w // 2,
                       first.y + first.h)
            self.emit(f'<path d="M{last.x + last.w // 2},{last.y} V{item.y}" class="e"/>')
        self.text(item.x + PAD, item.y + 17, f"{main}  ·  {sub}", "h", "start")
        for c in item.children:
            self.draw(c)
        self.stack(item.children, item.residuals, item.x + PAD + max(
            (c.w for c in item.children), default=0))
        self.emit("</g>")

    def stack(self, items: list[Item], residuals: list[tuple[int, int]], right: int) -> None:
        """Boxes bottom to top with arrows and types between them, and the bypasses."""
        for lower, upper in pairwise(items):
            cx = upper.x + upper.w // 2
            self.arrow(cx, lower.y, cx, upper.y + upper.h)
            if lower.kind == "box" and lower.line.output:
                self.text(cx + 6, lower.y - GAP // 2 + 4, lower.line.output, "s", "start")
        for k, (start, end) in enumerate(residuals):
            s, e = items[start], items[end]
            lane = right + LANE * (k + 1)
            y0, y1, cx = s.y + s.h + GAP // 2 - 8, e.y - GAP // 2, e.x + e.w // 2
            self.emit(f'<path d="M{cx},{y0} L{lane},{y0} L{lane},{y1} L{cx + 7},{y1}" '
                      'class="res" marker-end="url(#a)"/>')
            self.emit(f'<circle cx="{cx}" cy="{y1}" r="7" class="plus"/>'
                      f'<path d="M{cx - 4},{y1} h8 M{cx},{y1 - 4} v8" class="e"/>')

    def render(self) -> str:
        lines = explain(self.graph)
        cols = self.columns(lines)
        for col in cols:
            for item in col:
                self.size(item)
        col_w = [max((i.w for i in col), default=0) for col in cols]
        col_h = [sum(i.h for i in col) + GAP * (len(col) + 1) for col in cols]
        outs = [f"{k}: {v.type}" for k, v in self.graph.outputs.items()]
        height = max(col_h) + 2 * MARGIN + 60 + 16 * max(len(outs) - 1, 0)
        last_x = MARGIN + sum(col_w[:-1]) + COL_GAP * (len(cols) - 1)
        width = max(sum(col_w) + COL_GAP * (len(cols) - 1) + 2 * MARGIN + 120,
                    last_x + col_w[-1] // 2 + CHAR * max(map(len, [*outs, self.graph.name]))
                    + MARGIN)
        x = MARGIN
        for col, w in zip(cols, col_w):
            y = height - MARGIN - 24 - GAP
            for item in col:
                y -= item.h
                self.place(item, x + (w - item.w) // 2, y)
                y -= GAP
            x += w + COL_GAP
        self.emit(f'<text x="{MARGIN}" y="{MARGIN + 6}" class="title">'
                  f'{esc(self.graph.name)}</text>')
        for ci, col in enumerate(cols):
            for item in col:
                self.draw(item)
            self.stack(col, self.residuals([i.match() for i in col], "")
                       if col else [], max((i.x + i.w for i in col), default=0))
            if col:
                self.ends(col, ci == len(cols) - 1)
        self.cross(cols)
        body = "\n".join(self.out)
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
                f'viewBox="0 0 {width} {height}" font-family="monospace">\n'
                f'<title>{esc(self.graph.name)}</title>\n{STYLE}\n{body}\n</svg>\n')

    def ends(self, col: list[Item], last: bool) -> None:
        """The graph inputs under a column; the outputs over the last one."""
        first, top = col[0], col[-1]
        scope = first.match()
        names = [name for name, n in self.graph.inputs.items()
                 if any(_inside(r, scope) for r in self.readers.get(n.id, []))]
        cx = first.x + first.w // 2
        label = ", ".join(names) or ", ".join(first.line.inputs if first.line else [])
        self.text(cx, first.y + first.h + GAP + 6, label, "n")
        self.arrow(cx, first.y + first.h + GAP - 8, cx, first.y + first.h)
        out = top.line.output if top.line else ""
        cx = top.x + top.w // 2
        if last:
            self.arrow(cx, top.y, cx, top.y - GAP + 10)
            for i, name in enumerate(f"{k}: {v.type}" for k, v in self.graph.outputs.items()):
                self.text(top.x, top.y - GAP + 4 - 16 * i, name, "n", "start")
        elif out:
            self.text(cx + 6, top.y - 6, out, "s", "start")

    def cross(self, cols: list[list[Item]]) -> None:
        """Arrows from an earlier column's box to a later column's box that reads it."""
        boxes = [[b for i in col for b in _boxes(i)] for col in cols]
        for ci in range(1, len(cols)):
            lane = max((i.x + i.w for i in cols[ci - 1]), default=0) + COL_GAP // 2
            for target in boxes[ci]:
                scope = target.match()
                for source in [b for col in boxes[:ci] for b in col]:
                    if any(n.kind == "op" and _inside(n.scope, scope) and
                           any(i.kind == "op" and _inside(i.scope, source.match())
                               for i in n.inputs) for n in self.nodes):
                        sx, sy = source.x + source.w, source.y + source.h // 2
                        self.emit(f'<path d="M{sx},{sy} H{lane} V{target.y + target.h // 2} '
                                  f'H{target.x}" class="cross" marker-end="url(#a)"/>')


def _boxes(item: Item) -> list[Item]:
    """The boxes of an item that other columns can read from or feed: a frame's children."""
    if item.kind == "box":
        return [item]
    return [b for c in item.children for b in _boxes(c)]


def _base(line: Line) -> str:
    return line.scope.split(".{")[0].replace(" shared", "")


STYLE = """<style>
.t,.n{font-size:12px;fill:#111}.n{font-weight:bold}.s{font-size:10px;fill:#444}
.h{font-size:12px;font-weight:bold;fill:#111;paint-order:stroke;stroke:#f6f6f6;stroke-width:4px}
.title{font-size:16px;font-weight:bold;fill:#111}
.box{fill:#dbe9f6;stroke:#2b5d8a;stroke-width:1.2}.norm{fill:#fbeed0;stroke:#a07a1c}
.frame{fill:#f6f6f6;stroke:#666;stroke-width:1.2}.frame.shared{stroke-dasharray:6 4}
.e{fill:none;stroke:#222;stroke-width:1.2}.res{fill:none;stroke:#2a7a2a;stroke-width:1.2}
.plus{fill:#fff;stroke:#222;stroke-width:1.2}
.cross{fill:none;stroke:#a02a2a;stroke-width:1.2;stroke-dasharray:4 3}
</style>
<defs><marker id="a" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" \
orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#222"/></marker></defs>"""


def svg(graph: Graph) -> str:
    """The diagram of a lowered (unoptimized) graph, as SVG text."""
    return _Diagram(graph).render()


def html(graph: Graph) -> str:
    """A page around the same SVG: opens in a browser as is."""
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>'
            f'{esc(graph.name)}</title></head>\n<body>\n{svg(graph)}</body></html>\n')


__all__ = ["esc", "html", "svg"]
