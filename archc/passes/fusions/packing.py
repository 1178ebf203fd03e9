"""Packed projections: several matmuls of one activation by parameter weights -> one matmul.

    y_i = x @ W_i (+ b_i),  i = 1..n, every W_i a 2-D parameter [D, N_i]
        -> p = x @ concat(W_1, .., W_n, axis=-1) (+ concat(b_1, .., b_n))
           y_i = slice(p, axis=-1, N_1 + .. + N_{i-1}, + N_i)

This is attention's Q, K and V (one GEMM of [D, Nq + 2 Nkv] instead of three) and SwiGLU's gate
and up. One wide GEMM reads x once and keeps BLAS's blocks full, which matters most at decode,
where each projection is a GEMV over a short row. The concat of parameters costs nothing per
call: onnxruntime folds a Concat of initializers at session load, and the NumPy interpreter's
`bind` evaluates it once (archc/backends/numpy_interp.py). Biases are packed the same way when
every matmul's only user adds a 1-D parameter [N_i]; otherwise the weights alone are packed and
each add stays after its slice.

The rule is rooted at one matmul and finds its siblings among x's users (a pattern cannot say
"every matmul reading x"), so it keeps the graph it was handed by `try_match`. It does not fire,
and says why, where the weight is not a 2-D parameter (a transposed tied embedding, an expert
bank [E, D, N], an activation) or x has no other matmul by such a weight. Precondition: types
are inferred.
"""

from __future__ import annotations

from archc.ir.graph import Graph, Node
from archc.passes.rewrite import Match, MatchFailure, Rule, RuleSet


def _weight_problem(w: Node, x: Node) -> str:
    if w.kind != "param":
        return f"the weight {w!r} is an {w.kind}, not a parameter"
    if w.type.rank != 2 or not isinstance(w.type.shape[1], int):
        return f"the weight {w!r} is {w.type}, not a 2-D [in, out] parameter"
    if w.type.dtype != x.type.dtype:
        return f"the weight {w!r} is {w.type.dtype}, the activation {x!r} {x.type.dtype}"
    return ""


def _bias(graph: Graph, mm: Node) -> Node | None:
    """b when mm's only user is mm + b (either order) with b a 1-D parameter [N]."""
    users = graph.users(mm)
    if len(users) != 1 or graph.is_output(mm) or users[0].op != "add":
        return None
    add = users[0]
    if len(add.inputs) != 2 or add.inputs[0] is add.inputs[1]:
        return None
    b = add.inputs[1] if add.inputs[0] is mm else add.inputs[0]
    ok = b.kind == "param" and b.type.shape == mm.inputs[1].type.shape[1:]
    return b if ok and b.type.dtype == mm.type.dtype else None


class PackProjections(Rule):
    """x @ W_1, .., x @ W_n (W_i 2-D parameters) -> slices of x @ concat(W_1, .., W_n)"""

    name = "pack_projections"

    def pattern(self, op, x, w):
        return op.matmul(x, w)

    def try_match(self, graph: Graph, node: Node) -> Match | MatchFailure:
        self._graph = graph  # the check and the rewrite look at x's other users
        return super().try_match(graph, node)

    def _siblings(self, m: Match) -> list[Node]:
        x = m["x"]
        return [u for u in self._graph.users(x) if u.kind == "op" and u.op == "matmul"
                and len(u.inputs) == 2 and u.inputs[0] is x
                and not _weight_problem(u.inputs[1], x)]

    def check(self, m):
        x, w = m["x"], m["w"]
        if why := _weight_problem(w, x):
            return Match.fail(why, w)
        if len(self._siblings(m)) < 2:
            return Match.fail(f"{x!r} has no other matmul by a 2-D parameter to pack with "
                              f"{m.root!r}", x)
        return m

    def rewrite(self, op, m):
        graph, x = self._graph, m["x"]
        mms = self._siblings(m)
        biases = [_bias(graph, mm) for mm in mms]
        packed = op.matmul(x, op.concat(*(mm.inputs[1] for mm in mms), axis=-1))
        if all(b is not None for b in biases):
            packed = op.add(packed, op.concat(*biases, axis=-1))
            olds = [graph.users(mm)[0] for mm in mms]  # the adds: their slices replace them
        else:
            olds = mms
        start, root_new = 0, None
        for mm, old in zip(mms, olds):
            n = mm.inputs[1].type.shape[1]
            piece = op.slice(packed, axis=-1, start=start, end=start + n)
            start += n
            if mm is m.root and old is mm:
                root_new = piece  # the engine rewires the root and erases it
                continue
            graph.replace_all_uses_with(old, piece)
            for dead in (old, mm) if mm is not m.root else (old,):
                if dead in graph and not graph.users(dead) and not graph.is_output(dead):
                    graph.erase_node(dead)
        # with biases packed the root matmul is left without users (its add is gone): the
        # engine's rewiring of it is then a no-op, and it erases the root as dead
        return root_new if root_new is not None else packed


PACKING = RuleSet("packing", (PackProjections(),))
