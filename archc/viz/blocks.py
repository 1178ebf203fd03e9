"""The block diagram: the collapsed call tree of `archc explain`, bottom to top.

The graph inputs, then one box per top-level layer (the embedding at the bottom), a repeat
drawn once as a frame around the boxes of one step, labelled ×N (dashed and marked "shared
weights" for `repeat N shared`; interleaved variants of one repeat side by side) and with where
its norms sit (pre-norm, post-norm, sandwich), the graph outputs on top. Edges carry the type
of the value they carry. Residual bypasses and parallel branches come from `flow.Flow`;
parallel branches stand side by side and meet in a ⊕.

Columns: a top-level layer whose inputs are all integer (an embedding of token ids) after a
repeat has been drawn starts a new column, so an encoder and a decoder stand side by side. An
arrow runs from a box of an earlier column to a box of a later one when an op of the later
reads a value the earlier made (cross-attention reading the encoder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

from archc.explain import Line, explain
from archc.ir.graph import Graph
from archc.viz.common import CHAR, Canvas, esc
from archc.viz.flow import Flow, inside

BOX_H, GAP, PAD, HEAD, LANE, COL_GAP, MARGIN = 40, 34, 12, 24, 12, 90, 20


@dataclass
class Item:
    """A box (a layer), a frame (a repeat and its step's items), a row (interleaved frames
    side by side) or a par (parallel branches side by side). Sizes first, positions (top-left)
    after layout."""
    kind: str
    line: Line | None = None
    children: list[Item] = field(default_factory=list)
    residuals: list[tuple[int, int]] = field(default_factory=list)  # child index from, to
    out: str = ""  # a par's: the type of the sum of its branches
    norms: str = ""  # a frame's: where its norms sit
    w: int = 0
    h: int = 0
    x: int = 0
    y: int = 0

    def match(self) -> str:
        """The scope prefix of the nodes this item stands for (a repeat's first step)."""
        if self.kind in ("row", "par"):
            return "\0"
        scope = self.line.scope.replace(" shared", "")
        return f"{scope.split('.{')[0]}.{self.line.steps[0]}" if ".{" in scope else scope

    @property
    def cx(self) -> int:
        return self.x + self.w // 2

    @property
    def top(self) -> int:
        """Where the item's output leaves it: a par's from above its ⊕."""
        return self.y - GAP // 2 - 7 if self.kind == "par" else self.y

    def is_norm(self) -> bool:
        return self.kind == "box" and "norm" in self.line.block


def _label(line: Line, tied: str = "") -> tuple[str, str]:
    if line.block == "repeat":
        times = f" ×{line.count}" if line.count > 1 else ""
        shared = "  shared weights" if line.shared else ""
        return f"repeat {line.scope.replace(' shared', '')}{times}{shared}", \
            f"{line.total_params:,} params"
    what = f"tied to {tied}" if tied and not line.params else f"{line.params:,} params"
    return line.scope.rsplit(".", 1)[-1] or line.block, f"{line.block} · {what}"


def _norms(items: list[Item], residuals: list[tuple[int, int]]) -> str:
    """Where the norms sit around the bypasses: inside at the start (pre), inside at the end
    too (sandwich), or right after the sum (post)."""
    found: list[str] = []
    starts = {s for s, _ in residuals}
    for s, e in residuals:
        pre = any(items[k].is_norm() for k in range(s, e))
        inner = e > s and items[e].is_norm()
        post = e + 1 < len(items) and items[e + 1].is_norm() and e + 1 not in starts
        kind = "sandwich norm" if pre and inner else "pre-norm" if pre else \
            "post-norm" if post else ""
        if kind and kind not in found:
            found.append(kind)
    return " + ".join(found)


class Diagram(Canvas):
    def __init__(self, graph: Graph):
        super().__init__()
        self.graph = graph
        self.flow = Flow(graph)
        self.weights: dict[str, set[str]] = {}  # scope -> the layers whose weights it reads
        for n in self.flow.nodes:
            for i in n.inputs:
                if i.kind == "param" and i.name:
                    self.weights.setdefault(n.scope, set()).add(i.name.rsplit(".", 1)[0])

    def label(self, item: Item) -> tuple[str, str]:
        """A box's name and its block and parameters, or whose weights it reuses (`tied`)."""
        scope = item.match()
        tied = sorted({w for s, ws in self.weights.items() if inside(s, scope) for w in ws
                       if not inside(w, scope)})
        return _label(item.line, ", ".join(tied))

    def head(self, item: Item) -> str:
        return "  ·  ".join([*_label(item.line), *([item.norms] if item.norms else [])])

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
            item.children, item.residuals = self.arrange(item.children, parent)
            item.norms = _norms(item.children, item.residuals)
        return item

    def arrange(self, items: list[Item], parent: str) -> tuple[list[Item], list[tuple]]:
        """Parallel branches grouped into pars, and the bypasses between the groups."""
        residuals = self.flow.residuals([i.match() for i in items], parent)
        runs = {run[0]: (run, out) for run, out in self.flow.parallel(
            [i.match() if i.kind == "box" else "" for i in items], parent)}
        out: list[Item] = []
        where: list[int] = []  # item index -> group index
        for i, item in enumerate(items):
            if i < len(where):  # in a run already grouped
                continue
            run, typ = runs.get(i, ([i], ""))
            where += [len(out)] * len(run)
            out.append(Item("par", children=[items[j] for j in run], out=typ)
                       if len(run) > 1 else item)
        grouped = {(where[s], where[e]) for s, e in residuals}
        return out, sorted(grouped, key=lambda r: (r[1] - r[0], r))

    # ------------------------------------------------------------ sizes
    def size(self, item: Item) -> None:
        if item.kind == "box":
            main, sub = self.label(item)
            item.w, item.h = max(170, CHAR * max(len(main), len(sub)) + 24), BOX_H
            return
        for c in item.children:
            self.size(c)
        if item.kind in ("row", "par"):
            item.w = sum(c.w for c in item.children) + GAP * (len(item.children) - 1)
            item.h = max(c.h for c in item.children)
            return
        inner = max((c.w for c in item.children), default=0)
        item.w = max(CHAR * len(self.head(item)) + 2 * PAD,
                     2 * PAD + inner // 2 + _reach(item) + LANE * (len(item.residuals) + 1))
        item.h = HEAD + 2 * PAD + sum(c.h for c in item.children) + \
            GAP * max(len(item.children) - 1, 0) + GAP

    def place(self, item: Item, x: int, y: int) -> None:
        """Top-left at (x, y); a frame's children stack bottom to top, a row's and a par's
        stand side by side on one baseline."""
        item.x, item.y = x, y
        if item.kind in ("row", "par"):
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
    def into(self, item: Item, x: int, y: int) -> None:
        """The edge from (x, y) up into the item; into each branch of a par."""
        if item.kind != "par":
            self.arrow(item.cx, y, item.cx, item.y + item.h)
            return
        split = (y + item.y + item.h) // 2
        for c in item.children:
            self.emit(f'<path d="M{x},{y} V{split} H{c.cx} V{c.y + c.h}" class="e" '
                      'marker-end="url(#a)"/>')

    def draw(self, item: Item) -> None:
        if item.kind in ("row", "par"):
            if item.kind == "par":
                self.emit('<g class="parallel">')
            for c in item.children:
                self.draw(c)
            if item.kind == "par":
                self.merge(item)
                self.emit("</g>")
            return
        main, sub = self.label(item)
        scope = esc(item.line.scope)
        if item.kind == "box":
            kind = "norm" if item.is_norm() else "box"
            self.emit(f'<g class="layer" data-scope="{scope}"><rect x="{item.x}" y="{item.y}" '
                      f'width="{item.w}" height="{item.h}" rx="6" class="{kind}"/>')
            self.text(item.cx, item.y + 17, main, "n")
            self.text(item.cx, item.y + 32, sub, "s")
            self.emit("</g>")
            return
        dash = " shared" if item.line.shared else ""
        self.emit(f'<g class="repeat" data-scope="{scope}"><rect x="{item.x}" y="{item.y}" '
                  f'width="{item.w}" height="{item.h}" rx="10" class="frame{dash}"/>')
        if item.children:
            first, last = item.children[0], item.children[-1]
            self.into(first, first.cx, item.y + item.h)
            self.emit(f'<path d="M{last.cx},{last.top} V{item.y}" class="e"/>')
        self.text(item.x + PAD, item.y + 17, self.head(item), "h", "start")
        for c in item.children:
            self.draw(c)
        inner = max((c.w for c in item.children), default=0)
        self.stack(item.children, item.residuals, item.x + PAD + inner // 2 + _reach(item))
        self.emit("</g>")

    def merge(self, item: Item) -> None:
        """A par's branches join under a ⊕ above them; a branch whose type differs from the
        sum's (a broadcast position table) says so at its box's top right."""
        y, join = item.y - GAP // 2, item.y - 5
        for c in item.children:
            self.emit(f'<path d="M{c.cx},{c.y} V{join} H{item.cx}" class="e"/>')
            if c.line.output and c.line.output != item.out:
                self.text(c.x + c.w - 2, c.y - 8, c.line.output, "s", "end")
        self.emit(f'<path d="M{item.cx},{join} V{y + 7}" class="e"/>')
        self.plus(item.cx, y)

    def stack(self, items: list[Item], residuals: list[tuple[int, int]], right: int) -> None:
        """Items bottom to top with arrows and types between them, and the bypasses."""
        for lower, upper in pairwise(items):
            self.into(upper, upper.cx, lower.top)
            if lower.kind == "par":
                self.text(lower.cx - 10, lower.y - GAP // 2 - 3, lower.out, "s", "end")
            elif lower.kind == "box" and lower.line.output:
                self.text(upper.cx + 10, lower.y - 3, lower.line.output, "s", "start")
        for k, (start, end) in enumerate(residuals):
            s, e = items[start], items[end]
            lane = right + LANE * (k + 1)
            y0, y1 = s.y + s.h + GAP // 2 - 8, e.y - GAP // 2
            self.emit(f'<path d="M{e.cx},{y0} L{lane},{y0} L{lane},{y1} L{e.cx + 7},{y1}" '
                      'class="res" marker-end="url(#a)"/>')
            if e.kind != "par":  # a par's ⊕ is drawn with its branches
                self.plus(e.cx, y1)

    # ------------------------------------------------------------ the page
    def render(self) -> str:
        cols = self.columns(explain(self.graph))
        bypasses = []
        for ci, col in enumerate(cols):
            cols[ci], res = self.arrange(col, "")
            bypasses.append(res)
            for item in cols[ci]:
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
        width = max([width, *(i.cx + 14 + 6 * len(i.line.output) + MARGIN for col in cols
                              for i in col if i.kind == "box" and i.line.output)])
        self.emit(f'<text x="{MARGIN}" y="{MARGIN + 6}" class="title">'
                  f'{esc(self.graph.name)}</text>')
        for ci, col in enumerate(cols):
            for item in col:
                self.draw(item)
            self.stack(col, bypasses[ci], max((i.x + i.w for i in col), default=0))
            if col:
                self.ends(col, ci == len(cols) - 1)
        self.cross(cols)
        return self.document(self.graph.name, width, height, STYLE)

    def ends(self, col: list[Item], last: bool) -> None:
        """The graph inputs under a column (under each branch of a par); the outputs over
        the last column."""
        first, top = col[0], col[-1]
        for item in first.children if first.kind == "par" else [first]:
            names = [name for name, n in self.graph.inputs.items()
                     if any(inside(r, item.match()) for r in self.flow.readers.get(n.id, []))]
            label = ", ".join(names) or ", ".join(item.line.inputs if item.line else [])
            self.text(item.cx, item.y + item.h + GAP + 6, label, "n")
            self.arrow(item.cx, item.y + item.h + GAP - 8, item.cx, item.y + item.h)
        out = top.out if top.kind == "par" else top.line.output if top.line else ""
        if last:
            self.arrow(top.cx, top.top, top.cx, top.y - GAP + 10)
            for i, name in enumerate(f"{k}: {v.type}" for k, v in self.graph.outputs.items()):
                self.text(top.x, top.y - GAP + 4 - 16 * i, name, "n", "start")
        elif out:
            self.text(top.cx + 6, top.y - 6, out, "s", "start")

    def cross(self, cols: list[list[Item]]) -> None:
        """Arrows from an earlier column's box to a later column's box that reads it."""
        boxes = [[b for i in col for b in _boxes(i)] for col in cols]
        for ci in range(1, len(cols)):
            lane = max((i.x + i.w for i in cols[ci - 1]), default=0) + COL_GAP // 2
            for target in boxes[ci]:
                scope = target.match()
                for source in [b for col in boxes[:ci] for b in col]:
                    if any(n.kind == "op" and inside(n.scope, scope) and
                           any(i.kind == "op" and inside(i.scope, source.match())
                               for i in n.inputs) for n in self.flow.nodes):
                        sx, sy = source.x + source.w, source.y + source.h // 2
                        self.emit(f'<path d="M{sx},{sy} H{lane} V{target.y + target.h // 2} '
                                  f'H{target.x}" class="cross" marker-end="url(#a)"/>')


def _reach(frame: Item) -> int:
    """How far right of a frame's axis its boxes and the types above them reach (the types
    are 10 px type, about 6 px a character), so the bypass lanes pass clear of both."""
    inner = max((c.w for c in frame.children), default=0)
    types = [14 + 6 * len(c.line.output) for c in frame.children[:-1]
             if c.kind == "box" and c.line.output]
    return max([inner - inner // 2, *types])


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
</style>"""
