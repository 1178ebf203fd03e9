"""What the block diagram reads from the IR's dataflow, beyond the call records: residual
bypasses and parallel branches among sibling layers.

Residuals: an `add` in a frame's scope whose operands have one type, one of them made inside
a child layer (the branch's end) and the other outside it. The bypass starts below the first
sibling that reads that other operand, else an operand of the sum it is (so a pre-norm bypass
goes around the norm and the layer, a post-norm one around the layer alone, and
`x + attn(h) + mlp(h)` has two from below the shared norm) and ends in a ⊕ above the branch's
end. An add whose other operand no sibling reads (embeddings summed) is no residual.

Parallel branches: two sibling layers neither of which depends on the other, that read the
same value (or only graph inputs: BERT's word, position and type embeddings), and whose
results meet in a sum made by the frame's own ops (`x + attn(n) + mlp(n)`). "Own ops" are the
nodes whose scope is the frame's scope exactly: the glue between its layers.
"""

from __future__ import annotations

from archc.ir.graph import Graph, Node


def inside(scope: str, prefix: str) -> bool:
    return scope == prefix or scope.startswith(prefix + ".") or prefix == ""


class Flow:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.nodes = list(graph.nodes())
        self.readers: dict[int, list[str]] = {}
        self.users: dict[int, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                self.readers.setdefault(i.id, []).append(n.scope)
                self.users.setdefault(i.id, []).append(n)
        self._own: dict[str, list[Node]] = {}
        self._up: dict[str, set[int]] = {}

    def own(self, scope: str) -> list[Node]:
        """The op nodes inside `scope`."""
        if scope not in self._own:
            self._own[scope] = [n for n in self.nodes if n.kind == "op" and inside(n.scope, scope)]
        return self._own[scope]

    # ------------------------------------------------------------ residuals
    def residuals(self, scopes: list[str], parent: str) -> list[tuple[int, int]]:
        """(start, end) sibling indices of each bypass, shortest first."""
        found: list[tuple[int, int]] = []
        for n in self.nodes:
            if n.kind != "op" or n.op != "add" or n.scope != parent or len(n.inputs) != 2:
                continue
            for a, b in (n.inputs, n.inputs[::-1]):
                if a.kind == "const" or str(a.type) != str(b.type):
                    continue
                end = next((i for i, s in enumerate(scopes) if inside(b.scope, s)), None)
                if end is None or inside(a.scope, scopes[end]):
                    continue
                start = None
                for reads in (self.readers.get(a.id, []), self.reads(a, parent)):
                    start = next((i for i, s in enumerate(scopes[: end + 1])
                                  if any(inside(r, s) for r in reads)), None)
                    if start is not None:
                        break
                if start is not None and (start, end) not in found:
                    found.append((start, end))
                break
        return sorted(found, key=lambda r: (r[1] - r[0], r))

    def reads(self, value: Node, parent: str) -> list[str]:
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

    # ------------------------------------------------------------ parallel branches
    def parallel(self, scopes: list[str], parent: str) -> list[tuple[list[int], str]]:
        """Runs of consecutive siblings that are parallel branches, each with the type of the
        sum that combines them; `scopes` may hold "" for a sibling that is no layer."""
        runs: list[tuple[list[int], str]] = []
        i = 0
        while i < len(scopes):
            run, sums = [i], []
            for j in range(i + 1, len(scopes)):
                joined = [self._branches(scopes[k], scopes[j], parent) for k in run]
                if not all(joined) or not self._common(run, j, scopes, parent):
                    break
                run.append(j)
                sums += joined
            if len(run) > 1:  # the sum that takes the last branch in
                runs.append((run, str(max(sums, key=lambda n: n.id).type)))
            i = run[-1] + 1
        return runs

    def _glue(self, n: Node, parent: str) -> bool:
        return n.kind == "op" and n.scope == parent

    def _sources(self, scope: str, parent: str) -> set[int]:
        """The values from outside `scope` its ops read, traced back through the glue."""
        out: set[int] = set()
        todo = [i for n in self.own(scope) for i in n.inputs
                if i.kind in ("op", "input") and not inside(i.scope, scope)]
        seen: set[int] = set()
        while todo:
            v = todo.pop()
            if v.id in seen:
                continue
            seen.add(v.id)
            if self._glue(v, parent):
                todo += [i for i in v.inputs if i.kind in ("op", "input")]
            else:
                out.add(v.id)
        return out

    def _common(self, run: list[int], j: int, scopes: list[str], parent: str) -> bool:
        mine = self._sources(scopes[j], parent)
        inputs = {n.id for n in self.graph.inputs.values()}
        return any(mine & self._sources(scopes[k], parent) or
                   (mine <= inputs and self._sources(scopes[k], parent) <= inputs)
                   for k in run)

    def _upstream(self, scope: str) -> set[int]:
        """Every node the ops of `scope` depend on."""
        if scope not in self._up:
            seen: set[int] = set()
            todo = [i for n in self.own(scope) for i in n.inputs]
            while todo:
                v = todo.pop()
                if v.id not in seen:
                    seen.add(v.id)
                    todo += v.inputs
            self._up[scope] = seen
        return self._up[scope]

    def _branches(self, a: str, b: str, parent: str) -> Node | None:
        """The first glue sum that both `a` and `b` flow into, when neither depends on the
        other; None when they are not parallel."""
        if not a or not b or not self.own(a) or not self.own(b):
            return None
        if self._upstream(b) & {n.id for n in self.own(a)}:
            return None
        reach = [self._sums(s, parent) for s in (a, b)]
        both = sorted(set(reach[0]) & set(reach[1]))
        return reach[0][both[0]] if both else None

    def _sums(self, scope: str, parent: str) -> dict[int, Node]:
        """The glue adds that the outputs of `scope` flow into, by id."""
        out: dict[int, Node] = {}
        todo = [u for n in self.own(scope) for u in self.users.get(n.id, [])
                if not inside(u.scope, scope)]
        while todo:
            u = todo.pop()
            if u.id in out or not (self._glue(u, parent) and u.op == "add"):
                continue
            out[u.id] = u
            todo += self.users.get(u.id, [])
        return out
