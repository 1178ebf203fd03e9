"""The pattern engine: declarative rewrite rules (pattern, check, rewrite), after onnxscript's
rewriter. Rules never touch networkx: they emit through `Graph.add_op`, and the engine rewires
with `replace_all_uses_with` and `erase_node`.

A rule is a class with a pattern, an optional check and a rewrite:

    class RmsNorm(Rule):
        name = "rms_norm"
        commute = True                         # also match add/mul with operands swapped
        consts = ("eps",)                      # these pattern variables must be const nodes

        def pattern(self, op, x, w, eps):      # each parameter is a pattern variable
            ms = op.reduce_mean(op.mul(x, x), _name="mean")  # `m["mean"]` in the check
            return op.mul(op.div(x, op.sqrt(op.add(ms, eps))), w)

        def check(self, m):                    # a Match.fail(reason, node) says why not
            if not m["mean"].attrs.get("keepdims"):
                return Match.fail("the mean drops its axis", m["mean"])
            return m

        def rewrite(self, op, m):              # op.NAME(...) adds a node, type inferred
            return op.fused_rms_norm(m["x"], m["w"], eps=scalar(m["eps"]))

The pattern is written with the same call shape as graph construction (`op.NAME(*inputs,
**attrs)`); it is a DAG whose root is the value the rule replaces. Matching walks from a
candidate root back through its inputs. A variable matches any node, the same node at every
use. Attributes written in the pattern must be equal; the others are the check's business, so
that it can say what differs ("averages axis 1, not the last"). Checks chain small tests that
return None when they pass: `return problem_a(m) or problem_b(m) or m`.

Commutativity is explicit: `commute = True` adds a variant of the pattern for every way of
swapping the operands of its commutative ops (`add`, `mul`; `OpDef.commutative`), under the
same rule name. Semantic variants (`rms_norm_pow`, `rms_norm_rsqrt`) are separate rules with
their own names. A `Pattern` can also be matched on its own, which checks use to peel optional
wrappers (attention's softcap, bias and scale).

An intermediate node of the pattern (not the root) with a user outside the pattern fails the
match ("%7 (`mul`) is also used outside the pattern"), unless the rule sets `shared_ok` (the
node then stays for its other users) or names it an extra output (`op.add(a, b, _out="sum")`):
the rewrite then returns a dict with a replacement for it too (`{"": root_value, "sum": s}`).

`apply_rules(graph, rules)` sweeps the graph in topological order, giving each node to the
rules whose root op it has, in order, until a sweep fires nothing; it returns a
`Counter[rule_name]`. With `why_not={}` it also fills in, for each rule that never fired, the
reason of its most advanced failed match: a failed check beats a shared intermediate, which
beats a structural mismatch, and deeper mismatches beat shallower ones.
"""

from __future__ import annotations

import inspect
import itertools
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from archc.ir.graph import Graph, Node
from archc.ops import OPS


# ------------------------------------------------------------------ patterns
@dataclass(eq=False)
class Var:
    """A pattern variable: matches any node (the same one at every use)."""

    name: str


@dataclass(eq=False)
class PNode:
    """A pattern op: `op` with these inputs; `attrs` listed here must equal the node's."""

    op: str
    inputs: tuple[PNode | Var, ...]
    attrs: dict[str, Any]
    out: str | None = None  # the name of an extra output (see the module docstring)
    name: str | None = None  # `m[name]` is the matched node (for checks)

    def key(self) -> str:
        args = ", ".join(i.name if isinstance(i, Var) else i.key() for i in self.inputs)
        return f"{self.op}({args}){sorted(self.attrs.items())}"


class PatternBuilder:
    """`op.NAME(*inputs, **attrs)` builds a PNode; `_name="n"` names the matched node for the
    check (`m["n"]`), `_out="n"` also marks it an extra output (see the module docstring)."""

    def __getattr__(self, op: str):
        def build(*inputs: PNode | Var, _out: str | None = None, _name: str | None = None,
                  **attrs) -> PNode:
            return PNode(op, tuple(inputs), attrs, _out, _name or _out)
        return build


def _commuted(p: PNode | Var, memo: dict) -> list[PNode | Var]:
    """Every variant of `p` with commutative operands swapped (shared sub-patterns stay shared
    only within one variant, which is what matching needs)."""
    if isinstance(p, Var):
        return [p]
    if id(p) in memo:
        return memo[id(p)]
    choices = [_commuted(i, memo) for i in p.inputs]
    out = []
    for combo in itertools.product(*choices):
        orders = [combo]
        if len(combo) == 2 and p.op in OPS and OPS[p.op].commutative:
            orders.append(combo[::-1])
        out += [PNode(p.op, tuple(c), p.attrs, p.out, p.name) for c in orders]
    memo[id(p)] = out
    return out


# ------------------------------------------------------------------ matches
@dataclass
class MatchFailure:
    """Why a rule did not fire at one node. Checks chain tests that return None when they
    pass: `return first_problem(m) or second_problem(m) or m`."""

    reason: str | Callable[[], str]  # a callable: written only if someone reads it
    node: Node | None = None
    progress: int = 0  # how many pattern ops matched before it failed (for explain)

    def __str__(self) -> str:
        reason = self.reason() if callable(self.reason) else self.reason
        return f"{reason} (at {self.node!r})" if self.node is not None else reason


@dataclass
class Match:
    """A successful structural match: variable and extra-output bindings, matched op nodes."""

    root: Node
    bindings: dict[str, Node] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)  # matched op nodes, root first
    outs: dict[str, Node] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Node:
        return self.bindings[name] if name in self.bindings else self.outs[name]

    def __contains__(self, name: str) -> bool:
        return name in self.bindings or name in self.outs

    @staticmethod
    def fail(reason: str, node: Node | None = None) -> MatchFailure:
        return MatchFailure(reason, node)


class _NoMatch(Exception):
    def __init__(self, reason: str, node: Node | None):
        self.reason, self.node = reason, node


def _match(p: PNode | Var, node: Node, m: Match, seen: dict[int, Node], consts) -> None:
    if isinstance(p, Var):
        prev = m.bindings.setdefault(p.name, node)
        if prev is not node:
            raise _NoMatch(f"`{p.name}` would be both {prev!r} and {node!r}", node)
        if p.name in consts and node.kind != "const":
            raise _NoMatch(f"`{p.name}` must be a constant, {node!r} is a {node.kind}", node)
        return
    if id(p) in seen:
        if seen[id(p)] is not node:
            raise _NoMatch(f"a value used twice in `{p.op}` differs: {seen[id(p)]!r}, "
                           f"{node!r}", node)
        return
    what = f"`{node.op}`" if node.kind == "op" else f"a {node.kind}"
    if node.kind != "op" or node.op != p.op:
        raise _NoMatch(f"{node!r} is {what}, the pattern wants `{p.op}`", node)
    if len(node.inputs) != len(p.inputs):
        raise _NoMatch(f"`{p.op}` {node!r} has {len(node.inputs)} inputs, the pattern "
                       f"{len(p.inputs)}", node)
    for k, v in p.attrs.items():
        if node.attrs.get(k) != v:
            raise _NoMatch(f"`{p.op}` {node!r} has {k}={node.attrs.get(k)!r}, the pattern "
                           f"wants {v!r}", node)
    seen[id(p)] = node
    m.nodes.append(node)
    if p.name:
        m.bindings[p.name] = node
    if p.out:
        m.outs[p.out] = node
    for pi, ni in zip(p.inputs, node.inputs):
        _match(pi, ni, m, seen, consts)


# ------------------------------------------------------------------ patterns as values
class Pattern:
    """A pattern function with its commuted variants, matchable on its own: rules use one for
    their root, and checks use small ones to peel optional wrappers (a softcap, a bias)."""

    def __init__(self, fn, consts: tuple[str, ...] = (), commute: bool = False):
        names = list(inspect.signature(fn).parameters)[1:]
        root = fn(PatternBuilder(), *map(Var, names))
        found = _commuted(root, {}) if commute else [root]
        self.variants = list({v.key(): v for v in found}.values())  # mul(x, x) swapped is itself
        self.consts = consts
        self.root_op = root.op
        # variants grouped by the ops of their root's operands (None: a variable), so a node
        # whose operands fit none is turned away before any matching
        self._groups: dict[tuple, list[PNode]] = {}
        for v in self.variants:
            sig = tuple(i.op if isinstance(i, PNode) else None for i in v.inputs)
            self._groups.setdefault(sig, []).append(v)
        self._fits: dict[tuple, list[PNode]] = {}  # operand signature -> the variants it fits

    def _candidates(self, node: Node) -> list[PNode] | MatchFailure:
        have = tuple(i.op if i.kind == "op" else i.kind for i in node.inputs)
        if (out := self._fits.get(have)) is None:
            out = self._fits[have] = [v for sig, vs in self._groups.items() if len(sig) == len(
                have) and all(w is None or w == h for w, h in zip(sig, have)) for v in vs]
        if out:
            return out
        sig = next(iter(self._groups))
        return MatchFailure(lambda: f"the operands of `{node.op}` {node!r} are ({', '.join(have)})"
                            f", the pattern's ({', '.join(w or '*' for w in sig)})", node, 1)

    def matches(self, node: Node):
        """Each variant's match at `node`, or (when none matches) the furthest failure."""
        candidates = self._candidates(node)
        if isinstance(candidates, MatchFailure):
            yield candidates
            return
        best: MatchFailure | None = None
        for p in candidates:
            m = Match(node)
            try:
                _match(p, node, m, {}, self.consts)
            except _NoMatch as e:
                if best is None or best.progress < len(m.nodes):
                    best = MatchFailure(e.reason, e.node, len(m.nodes))
                continue
            yield m
        if best is not None:
            yield best

    def match(self, node: Node) -> Match | MatchFailure:
        return next(self.matches(node))


# ------------------------------------------------------------------ rules
class Rule:
    """Subclass and define `name`, `pattern`, `rewrite` and, when needed, `check`."""

    name: str = ""
    consts: tuple[str, ...] = ()
    commute: bool = False
    shared_ok: bool = False

    def pattern(self, op: PatternBuilder, *variables: Var) -> PNode:
        raise NotImplementedError

    def check(self, m: Match) -> Match | MatchFailure | bool:
        return m

    def rewrite(self, op: Emitter, m: Match) -> Node | dict[str, Node]:
        raise NotImplementedError

    @property
    def compiled(self) -> Pattern:
        if "_pattern" not in self.__dict__:
            self._pattern = Pattern(self.pattern, self.consts, self.commute)
        return self._pattern

    @property
    def root_op(self) -> str:
        return self.compiled.root_op

    def try_match(self, graph: Graph, node: Node) -> Match | MatchFailure:
        """Each variant in turn; the first that matches, passes `check` and has no shared
        intermediates wins. Otherwise the failure that got furthest (check failures and
        shared intermediates count as further than any structural mismatch)."""
        best: MatchFailure | None = None
        for m in self.compiled.matches(node):
            if isinstance(m, MatchFailure):
                fail = m
            else:
                result = self.check(m)
                if result is False or result is None:
                    result = MatchFailure("check failed", node)
                if isinstance(result, MatchFailure):
                    fail = result
                    fail.progress += 2000 + len(m.nodes)
                elif shared := self._shared_users(graph, m):
                    fail = MatchFailure(shared, node, 1000 + len(m.nodes))
                else:
                    return m
            if best is None or best.progress < fail.progress:
                best = fail
        assert best is not None
        return best

    def _shared_users(self, graph: Graph, m: Match) -> str:
        if self.shared_ok:
            return ""
        inside = {n.id for n in m.nodes}
        extra = {n.id for n in m.outs.values()}
        for n in m.nodes[1:]:
            if n.id in extra:
                continue
            outside = [u for u in graph.users(n) if u.id not in inside]
            if outside or graph.is_output(n):
                return f"{n!r} (`{n.op}`) is also used outside the pattern"
        return ""


class Emitter:
    """What `rewrite` sees: `op.NAME(*inputs, **attrs)` adds an op node (type inferred, scope
    and span of the replaced root); `op.const(value)` adds a constant. `graph.meta["origin"]`
    maps each node it adds to the lowered node the root stands for (torch.fx's `from_node`):
    it tells a shared repeat's steps apart (archc/viz/ir.py)."""

    def __init__(self, graph: Graph, root: Node):
        self.graph, self.root = graph, root
        origins = graph.meta.setdefault("origin", {})
        self._origin, self._origins = origins.get(root.id, root.id), origins

    def _made(self, node: Node) -> Node:
        self._origins[node.id] = self._origin
        return node

    def const(self, value) -> Node:
        return self._made(self.graph.add_const(np.asarray(value), scope=self.root.scope))

    def __getattr__(self, name: str):
        def emit(*inputs: Node, **attrs) -> Node:
            t = OPS[name].infer(*(i.type for i in inputs), **attrs)
            return self._made(self.graph.add_op(name, inputs, attrs, type=t,
                                                scope=self.root.scope, span=self.root.span))
        return emit


@dataclass
class RuleSet:
    """An ordered group of rules; earlier rules get the first try at each node."""

    name: str
    rules: tuple[Rule, ...]

    def __iter__(self):
        return iter(self.rules)


def _flatten(rules: Iterable[Rule | RuleSet]) -> list[Rule]:
    out: list[Rule] = []
    for r in rules:
        out += list(r) if isinstance(r, RuleSet) else [r]
    return out


def _apply(graph: Graph, rule: Rule, m: Match) -> None:
    new = rule.rewrite(Emitter(graph, m.root), m)
    replacements = new if isinstance(new, dict) else {"": new}
    for name, value in replacements.items():
        graph.replace_all_uses_with(m.root if name == "" else m.outs[name], value)
    while True:  # erase the matched nodes nothing reads any more, consumers before producers
        dead = [n for n in m.nodes if n in graph and not graph.users(n) and not graph.is_output(n)]
        if not dead:
            return
        for n in dead:
            graph.erase_node(n)


def apply_rules(graph: Graph, rules: Iterable[Rule | RuleSet], why_not: dict | None = None,
                max_sweeps: int = 8) -> Counter:
    """Apply `rules` until none fires (at most `max_sweeps` sweeps over the graph); returns how
    often each rule fired. `why_not`, when given, receives {rule name: first failing reason}
    for each rule that never fired (the failed match that got furthest)."""
    flat = _flatten(rules)
    by_root: dict[str, list[Rule]] = {}
    for rule in flat:
        by_root.setdefault(rule.root_op, []).append(rule)
    fired: Counter = Counter()
    best: dict[str, MatchFailure] = {}
    for _ in range(max_sweeps):
        changed = False
        for node in graph.nodes():
            if node.kind != "op" or node.op not in by_root or node not in graph:
                continue
            for rule in by_root[node.op]:
                result = rule.try_match(graph, node)
                if isinstance(result, Match):
                    _apply(graph, rule, result)
                    fired[rule.name] += 1
                    changed = True
                    break
                old = best.get(rule.name)
                if old is None or old.progress < result.progress:
                    best[rule.name] = result
        if not changed:
            break
    if why_not is not None:
        for rule in flat:
            if rule.name not in fired:
                fail = best.get(rule.name)
                why_not.setdefault(rule.name, f"no `{rule.root_op}` node in the graph"
                                   if fail is None else str(fail))
    return fired
