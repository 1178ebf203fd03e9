"""`archc viz --ir`: the IR's dataflow graph, one box per op (its name and its type), grouped
into a cluster per layer and, inside a layer, per sublayer (`h.0`, then `h.0.attn`).

Which nodes: graph inputs, op nodes and graph outputs. Parameters and constants are operands,
not boxes (hover a box for its full IR line, which names them). Which layer: a node's scope up
to the outermost repeat step it lies in (`h.0.attn.q` → `h.0`), else its first name
(`lm_head`); the steps of `repeat N shared` share one scope, so there the step is the one
whose range of node ids (recorded by lowering) holds the node.

Large graphs: a repeat of more than two steps draws its first step expanded and each later step
as one box (`h.1`, its op count and output type), with the edges in and out of it merged, so a
12-layer model stays about as large as a 2-layer one.

Layout (Sugiyama-style, written here so the output depends on nothing but the graph):
1. rank: longest path from the inputs, then every node but an output moved down to just above
   its first user (a causal mask sits by the attention that reads it, not by the inputs);
2. order: four barycentric sweeps (down, up, down, up), ties broken by node order;
3. place: each rank centred on one axis; an edge that skips ranks runs down a lane right of
   them; clusters are the padded bounding boxes of their nodes.
Top to bottom, like the IR text.
"""

from __future__ import annotations

from archc.ir.graph import Graph, Node
from archc.ir.printer import fmt_node
from archc.viz.common import CHAR, Canvas, esc
from archc.viz.flow import inside

NODE_H, NODE_GAP, RANK_GAP, MARGIN, TOP, PAD, SUB_PAD = 34, 16, 44, 20, 50, 14, 6


class IRDiagram(Canvas):
    def __init__(self, graph: Graph):
        super().__init__()
        self.graph = graph
        self.steps = self._steps()
        self._layer: dict[int, tuple[str, str]] = {}
        self.keys: list[tuple] = []  # vertices in order: ("in", name) | ("op", id) | ...
        self.info: dict[tuple, dict] = {}  # label, sub, layer, node, count
        self.succ: dict[tuple, list[tuple]] = {}
        self.pred: dict[tuple, list[tuple]] = {}
        self._build()

    def _steps(self) -> dict[str, tuple[str, int, int, bool]]:
        """The outermost repeat steps by name (`h.1`): the scope their nodes have (`h.1`; the
        repeat's for `repeat N shared`, whose steps share one), the range of node ids lowering
        gave them, and whether the step is drawn collapsed."""
        found: dict[str, tuple[str, int, int, str]] = {}
        for r in self.graph.meta.get("calls", []):
            if r["block"] != "repeat":
                continue
            base = r["scope"].rsplit(".", 1)[0]
            lo, hi = r.get("nodes", (0, 1 << 62))
            if not any(inside(base, m) and a <= lo and hi <= b for m, a, b, _ in found.values()):
                found[r["scope"]] = (base if r.get("shared") else r["scope"], lo, hi, base)
        bases = [v[3] for v in found.values()]
        return {name: (m, lo, hi, bases.count(b) > 2 and bases.index(b) != i)
                for i, (name, (m, lo, hi, b)) in enumerate(found.items())}

    def layer(self, n: Node) -> tuple[str, str]:
        """The cluster and the sub-cluster of a node ("" when none). A node in a shared
        repeat's scope belongs to the step whose id range holds it or its origin's (the lowered
        node a rewrite made it for, `graph.meta["origin"]`); one with neither (made by a pass
        outside the rewrite engine) to the last step its operands belong to."""
        if n.id in self._layer:
            return self._layer[n.id]
        if not n.scope:
            return "", ""
        steps = [name for name, (m, *_) in self.steps.items() if inside(n.scope, m)]
        if steps:
            oid = self.graph.meta.get("origin", {}).get(n.id, n.id)
            held = [s for s in steps if self.steps[s][1] <= oid < self.steps[s][2]]
            mine = [self.layer(i)[0] for i in n.inputs if i.kind == "op"]
            name = held[0] if held else max((s for s in mine if s in steps),
                                            key=steps.index, default=steps[0])
            match = self.steps[name][0]
        else:
            name = match = n.scope.split(".")[0]
        rest = n.scope[len(match) + 1:]
        self._layer[n.id] = name, f"{name}.{rest.split('.')[0]}" if rest else ""
        return self._layer[n.id]

    def _vertex(self, n: Node) -> tuple | None:
        if n.kind == "input":
            return ("in", n.name)
        if n.kind != "op":
            return None
        layer, _ = self.layer(n)
        return ("step", layer) if layer in self.steps and self.steps[layer][3] else ("op", n.id)

    def _add(self, key: tuple, **info) -> None:
        if key not in self.info:
            self.keys.append(key)
            self.info[key] = info
            self.succ[key], self.pred[key] = [], []
        elif key[0] == "step":
            self.info[key]["count"] += 1
            self.info[key]["node"] = info["node"]

    def _edge(self, a: tuple, b: tuple) -> None:
        if a != b and b not in self.succ[a]:
            self.succ[a].append(b)
            self.pred[b].append(a)

    def _build(self) -> None:
        for n in self.graph.nodes():
            key = self._vertex(n)
            if key is None:
                continue
            layer, sub = self.layer(n)
            if key[0] == "in":
                self._add(key, label=n.name, node=n, layer="", sub="", count=1)
            else:
                self._add(key, label=key[1] if key[0] == "step" else n.op, node=n,
                          layer=layer, sub="" if key[0] == "step" else sub, count=1)
            for i in n.inputs:
                src = self._vertex(i)
                if src is not None:
                    self._edge(src, key)
        for name, n in self.graph.outputs.items():
            src = self._vertex(n)
            if src is not None:
                self._add(("out", name), label=name, node=n, layer="", sub="", count=1)
                self._edge(src, ("out", name))

    # ------------------------------------------------------------ layout
    def ranks(self) -> dict[tuple, int]:
        rank: dict[tuple, int] = {}
        for k in self.keys:  # node order is topological
            rank[k] = max((rank[p] + 1 for p in self.pred[k] if p in rank), default=0)
        for k in reversed(self.keys):
            if self.succ[k] and k[0] != "out":
                rank[k] = max(rank[k], min(rank[s] for s in self.succ[k]) - 1)
        return rank

    def order(self, rank: dict[tuple, int]) -> list[list[tuple]]:
        rows: list[list[tuple]] = [[] for _ in range(max(rank.values(), default=-1) + 1)]
        for k in self.keys:
            rows[rank[k]].append(k)
        first = {k: i for i, k in enumerate(self.keys)}
        for sweep in range(4):
            pos = {k: i / max(len(row), 1) for row in rows for i, k in enumerate(row)}
            nbrs = self.pred if sweep % 2 == 0 else self.succ
            seq = range(1, len(rows)) if sweep % 2 == 0 else range(len(rows) - 2, -1, -1)
            for r in seq:
                bary = []
                for k in rows[r]:
                    near = [pos[n] for n in nbrs[k]]
                    bary.append((sum(near) / len(near) if near else pos[k], first[k], k))
                rows[r] = [k for _, _, k in sorted(bary)]
                pos.update({k: i / len(rows[r]) for i, k in enumerate(rows[r])})
        return rows

    def size(self, key: tuple) -> int:
        info = self.info[key]
        return max(90, CHAR * max(len(info["label"]), len(self.sub_label(key))) + 16)

    def sub_label(self, key: tuple) -> str:
        info = self.info[key]
        kind = str(info["node"].type) if info["node"].type is not None else "?"
        return f"{info['count']} ops · {kind}" if key[0] == "step" else kind

    def render(self) -> str:
        rows = self.order(self.ranks())
        width = max((sum(self.size(k) for k in row) + NODE_GAP * (len(row) - 1)
                     for row in rows), default=0) + 2 * MARGIN + 2 * PAD
        box: dict[tuple, tuple[int, int, int]] = {}  # x, y, w
        for r, row in enumerate(rows):
            x = (width - sum(self.size(k) for k in row) - NODE_GAP * (len(row) - 1)) // 2
            for k in row:
                box[k] = (x, TOP + r * (NODE_H + RANK_GAP), self.size(k))
                x += self.size(k) + NODE_GAP
        height = TOP + len(rows) * (NODE_H + RANK_GAP) + MARGIN
        self.emit(f'<text x="{MARGIN}" y="{MARGIN + 6}" class="title">'
                  f'{esc(self.graph.name)} · IR</text>')
        right = [max((box[k][0] + box[k][2] for k in row), default=0) for row in rows]
        rank = {k: r for r, row in enumerate(rows) for k in row}
        lanes = [max(right[rank[k] + 1:rank[s]]) + 14 + 6 * (i % 8) if rank[s] > rank[k] + 1
                 else None for i, (k, s) in enumerate(self.edges())]
        for (k, s), lane in zip(self.edges(), lanes):
            self.edge(box[k], box[s], lane)
        width = max([width, *(lane + MARGIN for lane in lanes if lane is not None)])
        clusters: dict[str, dict[str, list[tuple]]] = {}
        for k in self.keys:
            info = self.info[k]
            clusters.setdefault(info["layer"], {}).setdefault(info["sub"], []).append(k)
        for layer, subs in sorted(clusters.items(), key=lambda c: not c[0]):
            self.cluster(layer, subs, box)  # nodes outside any layer last: over the boxes
        return self.document(f"{self.graph.name} IR", width, height, STYLE)

    def edges(self) -> list[tuple[tuple, tuple]]:
        return [(k, s) for k in self.keys for s in self.succ[k]]

    def edge(self, a: tuple[int, int, int], b: tuple[int, int, int], lane: int | None) -> None:
        """An edge to the next rank is straight; a longer one runs down a lane right of the
        ranks it passes, so it never hides behind (or looks like) the edges between them."""
        x1, y1, x2, y2 = a[0] + a[2] // 2, a[1] + NODE_H, b[0] + b[2] // 2, b[1]
        if lane is None:
            self.arrow(x1, y1, x2, y2)
            return
        half = RANK_GAP // 2
        self.emit(f'<path d="M{x1},{y1} L{lane},{y1 + half} V{y2 - half} L{x2},{y2}" '
                  'class="e long" marker-end="url(#a)"/>')

    def cluster(self, layer: str, subs: dict[str, list[tuple]], box: dict) -> None:
        """A layer's group: its box, its sub-clusters' boxes and its nodes; outside any layer
        (inputs, outputs, top-level glue), the nodes alone."""
        every = [k for ks in subs.values() for k in ks]
        collapsed = len(every) == 1 and every[0][0] == "step"
        if layer:
            cls = "cluster collapsed" if collapsed else "cluster"
            self.emit(f'<g class="{cls}" data-scope="{esc(layer)}">')
            if not collapsed:
                self.frame(every, box, PAD, layer, "layer")
        for sub, keys in subs.items():
            if sub:
                self.emit(f'<g class="sub" data-scope="{esc(sub)}">')
                self.frame(keys, box, SUB_PAD, sub[len(layer) + 1:], "sublayer")
            for k in keys:
                self.node(k, box[k])
            if sub:
                self.emit("</g>")
        if layer:
            self.emit("</g>")

    def frame(self, keys: list[tuple], box: dict, pad: int, name: str, cls: str) -> None:
        x0 = min(box[k][0] for k in keys) - pad
        y0 = min(box[k][1] for k in keys) - pad
        x1 = max(box[k][0] + box[k][2] for k in keys) + pad
        y1 = max(box[k][1] for k in keys) + NODE_H + pad
        self.emit(f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" rx="6" '
                  f'class="{cls}"/>')
        self.text(x0 + 6, y0 + 3, name, f"{cls}-name", "start")

    def node(self, key: tuple, at: tuple[int, int, int]) -> None:
        x, y, w = at
        info = self.info[key]
        cls = {"in": "io", "out": "io", "step": "step"}.get(key[0], "op")
        tip = fmt_node(info["node"]) if key[0] == "op" else f"{key[0]} {info['label']}"
        self.emit(f'<g class="node" data-kind="{key[0]}"><title>{esc(tip)}</title>'
                  f'<rect x="{x}" y="{y}" width="{w}" height="{NODE_H}" rx="4" class="{cls}"/>')
        self.text(x + w // 2, y + 14, info["label"], "n")
        self.text(x + w // 2, y + 27, self.sub_label(key), "s")
        self.emit("</g>")


STYLE = """<style>
.t,.n{font-size:12px;fill:#111}.n{font-weight:bold}.s{font-size:10px;fill:#444}
.title{font-size:16px;font-weight:bold;fill:#111}
.op{fill:#dbe9f6;stroke:#2b5d8a;stroke-width:1}.io{fill:#e4f2e0;stroke:#2a7a2a}
.step{fill:#eee;stroke:#666;stroke-dasharray:5 3}
.layer{fill:#f3f3f3;fill-opacity:.55;stroke:#666}.sublayer{fill:#fff8e6;fill-opacity:.5;\
stroke:#b09040;stroke-dasharray:3 2}
.layer-name,.sublayer-name{font-size:10px;font-weight:bold;fill:#333;paint-order:stroke;\
stroke:#fff;stroke-width:3px}
.e{fill:none;stroke:#222;stroke-width:1}.e.long{stroke:#888}
</style>"""


def svg_ir(graph: Graph) -> str:
    """The dataflow diagram of an (optimized) graph, as SVG text."""
    return IRDiagram(graph).render()
