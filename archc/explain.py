"""`archc explain`: a spec walked in its own words, one line per block call, indented by
nesting, with input -> output shapes, parameters and forward FLOPs per token.

The evaluator records every block call it expands (`graph.meta["calls"]`: block, scope, input
and output types, the parameters it created). A run of calls that differ only in their repeat
index (`layers.0.attn`, `layers.1.attn`, ...) prints once with ×N; calls that differ in what
they do (an interleaved local layer next to a global one) print separately; steps that differ
only in an option that changes no shape or count (a per-layer `seed`) print once. Each line
keeps its call's options (the arguments that are not tensors, as text) and the KV-cache values
its layers keep per token, for `archc diff`.

FLOPs count 2·m·n·k per matmul (the projections, and the attention scores and mixing at the
given sequence length), for a batch of one, divided by the sequence length; a mixture of
experts' expert matmuls count top_k/experts of their dense cost (`archc.stats.matmul_flops`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from archc.ir.graph import Graph
from archc.ir.types import numel
from archc.lower.calls import BlockValue
from archc.lower.signature import FuncRef, ModuleRef, Rope, SymDim, Word
from archc.stats import matmul_flops


@dataclass
class Line:
    depth: int
    block: str
    scope: str
    inputs: list[str]
    output: str
    params: int
    flops: float  # per token
    children: list[Line] = field(default_factory=list)
    count: int = 1
    steps: list[str] = field(default_factory=list)  # the repeat indices a repeat line stands for
    shared: bool = False  # a step of `repeat N shared`: its scope holds every step's nodes
    args: dict[str, str] = field(default_factory=dict)  # the call's options, as text
    library: bool = False  # a block of the standard library (not the spec's own)
    kv: float = 0.0  # KV-cache values kept per token (`cache` calls in this scope)

    @property
    def total_params(self) -> int:
        """Parameters of every step this line stands for (a shared repeat's once)."""
        return self.params if self.shared else self.params * self.count

    def key(self) -> tuple:
        """What two repeats of a layer share: everything but the repeat index."""
        return (self.block, re.sub(r"\.\d+(?=\.|$)", ".N", self.scope), tuple(self.inputs),
                self.output, self.params, round(self.flops, 3),
                tuple(c.key() for c in self.children))


def explain(graph: Graph, seq: int = 128, merge: bool = True) -> list[Line]:
    """The call tree of `graph` at sequence length `seq`, repeats collapsed; `merge=False`
    keeps each step of a repeat (but a shared repeat's) and the helper calls apart."""
    flops = _flops_by_scope(graph, seq)
    kv = graph.meta.get("kv_by_scope", {})
    lines: list[Line] = []
    stack: list[Line] = []
    for rec in graph.meta.get("calls", []):
        if (rec["scope"] == "" and rec["block"] != "repeat") or "out" not in rec:
            continue
        scope = rec["scope"]
        if rec.get("shared"):  # one set of weights: the nodes of every step share a scope
            scope = scope.rsplit(".", 1)[0]
        line = Line(rec["depth"], rec["block"], scope, rec["in"], rec["out"],
                    sum(numel(graph.params[p].type.shape) for p in rec["params"]
                        if p in graph.params),
                    _within(flops, scope), shared=bool(rec.get("shared")),
                    args={k: arg_text(v) for k, v in sorted(rec.get("args", {}).items())},
                    library=bool(rec.get("library")), kv=_within(kv, scope))
        while stack and stack[-1].depth >= line.depth:
            stack.pop()
        (stack[-1].children if stack else lines).append(line)
        stack.append(line)
    return _collapse(lines, merge)


def _within(by_scope: dict[str, float], scope: str) -> float:
    return sum(f for s, f in by_scope.items() if s == scope or s.startswith(scope + "."))


_ROPE = Rope()


def arg_text(v) -> str:
    """An option's value as the spec would write it (a tensor argument is not an option)."""
    if isinstance(v, bool) or v is None:
        return {True: "true", False: "false", None: "none"}[v]
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, tuple):
        return f"[{', '.join(map(arg_text, v))}]"
    if isinstance(v, Rope):  # the fields that differ from `rope()`'s defaults
        fields = [f"{f.name} = {arg_text(getattr(v, f.name))}" for f in dataclasses.fields(v)
                  if getattr(v, f.name) != getattr(_ROPE, f.name)]
        return f"rope({', '.join(fields)})"
    for kind, attr in ((ModuleRef, "prefix"), (FuncRef, "name"), (Word, "text"),
                       (SymDim, "name")):
        if isinstance(v, kind):
            return getattr(v, attr)
    if isinstance(v, BlockValue):
        return v.node.name
    return type(v).__name__


def _collapse(lines: list[Line], merge: bool = True) -> list[Line]:
    """Steps of one repeat that do the same print once (×N; `layers.{0,2}` when interleaved);
    helper calls with no parameters and no matmuls are left out. Unmerged, only a shared
    repeat's steps (one set of weights, one scope) are one line."""
    out: list[Line] = []
    groups: dict[tuple, Line] = {}
    for line in lines:
        line.children = _collapse(line.children, merge)
        if line.block != "repeat":
            groups = {}
            if line.depth == 0 or line.params or line.flops or not merge:
                out.append(line)
            continue
        key = (line.scope, "shared") if line.shared else (line.scope.rsplit(".", 1)[0],
                                                            line.key() if merge else line.scope)
        first = groups.get(key)
        if first is None:
            groups[key] = line
            line.steps = [line.scope.rsplit(".", 1)[-1]]
            out.append(line)
        else:
            first.count += 1
            first.steps.append(line.scope.rsplit(".", 1)[-1])
    for line in out:
        if line.shared:  # the nodes of all steps share the scope: per step is total / steps
            _scale(line, 1 / line.count)
            line.scope += " shared"
            continue
        steps = line.steps
        if len(steps) > 1:
            base = line.scope.rsplit(".", 1)[0]
            numbers = list(map(int, steps))
            run = numbers == list(range(numbers[0], numbers[0] + len(numbers)))
            shown = f"{numbers[0]}..{numbers[-1]}" if run else ",".join(steps)
            line.scope = f"{base}.{{{shown}}}"
    return out


def _scale(line: Line, factor: float) -> None:
    line.flops *= factor
    line.kv *= factor
    for child in line.children:
        _scale(child, factor)


def _flops_by_scope(graph: Graph, seq: int) -> dict[str, float]:
    def size(d) -> int:
        return d if isinstance(d, int) else 1 if d == "batch" else seq
    out: dict[str, float] = {}
    for n, flops, _ in matmul_flops(graph, size):  # shared with `archc stats`
        out[n.scope] = out.get(n.scope, 0.0) + flops / seq
    return out


def render(lines: list[Line], max_depth: int = 2) -> str:
    rows: list[tuple[str, str, str, str]] = []

    def walk(ls: list[Line], depth: int) -> None:
        for line in ls:
            times = f" ×{line.count}" if line.count > 1 else ""
            name = f"{'  ' * depth}{line.block} as {line.scope}{times}"
            if line.block == "repeat":
                name = f"{'  ' * depth}repeat {line.scope}{times}"
            shapes = f"{', '.join(line.inputs) or '-'} -> {line.output}" if line.output else ""
            rows.append((name, shapes, f"{line.params:,}", f"{line.flops / 1e6:,.3f}"))
            if depth + 1 < max_depth:
                walk(line.children, depth + 1)

    walk(lines, 0)
    head = ("block", "in -> out", "params", "MFLOP/token")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    text = [f"{head[0]:<{widths[0]}}  {head[1]:<{widths[1]}}  {head[2]:>{widths[2]}}  "
            f"{head[3]:>{widths[3]}}"]
    text += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d:>{widths[3]}}"
             for a, b, c, d in rows]
    return "\n".join(text) + "\n"


def as_json(lines: list[Line]) -> list[dict]:
    return [{"block": x.block, "scope": x.scope, "count": x.count, "inputs": x.inputs,
             "output": x.output, "params": x.params, "flops_per_token": x.flops,
             "args": x.args, "kv_per_token": x.kv,
             "children": as_json(x.children)} for x in lines]


__all__ = ["Line", "as_json", "explain", "render"]
