"""Lowering: walk a model's statements and build the IR graph.

Compile-time values (numbers, bools, words, lists, symbolic dims, layer names, rope configs)
are computed here; tensors are IR nodes. `repeat` unrolls, `if` picks a branch by a
compile-time condition, a `block` call expands its body in a fresh scope. Nothing in a spec is
executed as code: the evaluator knows only the AST's node types and the primitive table.

Parameter names follow the block nesting: `repeat 12 as h` gives `h.0`, `h.1`, ...;
`repeat 6 shared as h` gives `h` for every iteration (one set of weights); a block call is named
by `as NAME` or after the block (`attention`, then `attention_1`, ... within one scope), and
`as _` expands a block in the caller's scope. Inside a block, `w = param(...)` names the
parameter `w`.

The standard library (`archc/stdlib/*.arch`) is in scope in every spec. An error inside a
library block points at the user's call, with the library line in a note.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter

from archc import serving
from archc.diagnostics import Collector, Span, did_you_mean
from archc.frontend import ast
from archc.ir.graph import Graph, Node
from archc.ir.types import DTYPES, ShapeError, TensorType
from archc.lower import operators, primitives  # noqa: F401  (registers the primitives)
from archc.lower.builder import Abort
from archc.lower.calls import BlockValue, Calls, Env, Frame, Scope, _Return
from archc.lower.signature import POISON, SymDim, describe

MAX_REPEAT = 4096
MAX_EXPANSIONS = 100_000  # block calls and repeat steps per model, all nesting counted
MAX_NODES = 100_000  # graph nodes per model (an 80-layer LLaMA has about 16,000)


_UNSET = object()


def _assigned(stmts) -> set[str]:
    """Names the statements assign, in nested `if` branches too."""
    out: set[str] = set()
    for st in stmts:
        if isinstance(st, ast.Assign):
            out.update(st.targets)
        elif isinstance(st, ast.Let):
            out.update(name for name, _, _ in st.bindings)
        elif isinstance(st, ast.If):
            out |= _assigned(st.then + st.orelse)
    return out


class Evaluator(Calls):
    def __init__(self, blocks, diags: Collector, cache: bool = False,
                 library: frozenset[str] = frozenset()):
        self.cache = cache
        self.diags = diags
        self.library = library  # files of the standard library
        self.env = Env()
        self.env.vars.update({"true": True, "false": False, "pi": math.pi, "none": None})
        self.graph: Graph | None = None
        self.scope = Scope("")
        self.shared: tuple[str, ...] = ()
        self.modules: dict[str, str] = {}
        self.uses: Counter = Counter()
        self.frames: list[Frame] = []
        self.expansions = 0
        self.naming: str | None = None  # the target of `w = param(...)`
        self.nexts: set[str] = set()  # states given a `next` (even a failed one)
        self.step_params: set[str] = set()  # made in this step of a shared repeat
        self.repeat_depth = 0  # repeats we are inside (for the call records of `explain`)
        for blk in blocks:
            self.env.vars[blk.name] = BlockValue(blk, self.env, blk.span.file in library)
        diags.locate = self._locate

    def err(self, code: str, message: str, span: Span | None, label: str = "",
            help: str | None = None):
        self.diags.error(code, message, span, label, help=help)

    def _locate(self, span: Span | None) -> tuple[Span | None, tuple[str, ...]]:
        """Errors inside the library point at the user's call; the library line is a note."""
        if span is None or span.file not in self.library:
            return span, ()
        site = next((f for f in reversed(self.frames) if f.call.file not in self.library), None)
        if site is None:
            return span, ()
        line, col = span.line_col(self.diags.sources[span.file])
        return site.call, (f"in library block `{site.block}` at {span.file}:{line}:{col}",)

    # ------------------------------------------------------------ statements
    def model(self, m: ast.Model) -> Graph:
        self.graph = Graph(m.name)
        self.graph.meta["cache"] = self.cache
        self.graph.meta["states"] = {}
        self.graph.meta["serving"], self.graph.meta["serving_at"] = {}, {}  # archc.serving
        self.facts_named: dict[str, Span] = {}  # serving fact -> where it was first given
        for d in serving.legacy_comments(m.span.file, self.diags.sources.get(m.span.file, ""),
                                         m.name):
            self.err(d.code, d.message, d.span, d.label, help=d.help)
        declared = {s.name for s in m.body if isinstance(s, ast.Input)}
        # With a cache, the decoder's mask covers past + new tokens; an encoder's does not.
        self.cache_masks = ("decoder_attention_mask",) if "decoder_input_ids" in declared \
            else ("attention_mask",)
        self.env = Env(self.env)
        with contextlib.suppress(Abort):  # a failed `require` at model level
            self.block(m.body)
        states = self.graph.meta["states"]
        for name, out in states.items():
            if out not in self.graph.outputs and name not in self.nexts and \
                    not name.startswith("past_key_values."):
                node = self.graph.inputs[name]
                self.err("E0110", f"state `{name}` has no `next` value", node.span,
                         "declared here", help=f"add `next {name} = ...`")
        late = [k for k in self.graph.outputs if k.startswith("present.") or k in
                states.values()]
        for k in late:  # the spec's outputs first, then states and the cache
            self.graph.outputs[k] = self.graph.outputs.pop(k)
        if not self.graph.outputs and not self.diags.diagnostics:
            self.err("E0107", f"model `{m.name}` has no `output`", m.span, "declares no output",
                     help="add a line such as `output logits = lm_head(x, vocab)`")
        return self.graph

    def block(self, stmts) -> None:
        for s in stmts:
            getattr(self, "stmt_" + type(s).__name__.lower())(s)

    def stmt_let(self, s: ast.Let):
        for name, expr, _ in s.bindings:
            self.env.vars[name] = self.eval(expr)

    def stmt_serving(self, s: ast.Serving):
        """Evaluate and check the facts (archc/serving.py) into `graph.meta`; no IR."""
        facts, spans = self.graph.meta["serving"], self.graph.meta["serving_at"]
        for key, expr, at in s.bindings:
            value = self.eval(expr)
            if key not in serving.FACT_KEYS:
                self.err(serving.FACTS_CODE, f"unknown serving fact `{key}`", at,
                         "not a serving fact", help=did_you_mean(key, serving.FACT_KEYS)
                         or f"the facts are {', '.join(serving.FACT_KEYS)}")
                continue
            if key in self.facts_named:
                first = self.facts_named[key]
                line, col = first.line_col(self.diags.sources[first.file])
                self.diags.error(serving.FACTS_CODE, f"serving fact `{key}` is given twice", at,
                                 "again here", notes=(f"first given at {first.file}:{line}:"
                                                      f"{col}",))
                continue
            self.facts_named[key] = at
            want = None if value is POISON else serving.check_fact(key, value)
            if want is None and value is not POISON:
                facts[key] = list(value) if isinstance(value, tuple) else value
                spans[key] = expr.span
            elif want is not None:  # point at the bad id of a list
                pairs = zip(expr.items, value, strict=True) if isinstance(expr, ast.ListExpr) \
                    and key != "context_length" and expr.items else ()
                bad = next((e for e, v in pairs if serving.check_fact(key, v)), expr)
                self.err(serving.FACTS_CODE, f"serving fact `{key}` is "
                         f"{serving.literal(value) or describe(value)}, not {want}", bad.span,
                         "here" if bad is expr else "not a token id")

    def stmt_assign(self, s: ast.Assign):
        single = len(s.targets) == 1
        if single and isinstance(s.value, ast.Call) and s.value.func == "param":
            self.naming = s.targets[0]
        try:
            value = self.eval(s.value)
        finally:
            self.naming = None
        if single:
            self.env.vars[s.targets[0]] = value
        elif value is POISON:
            self.env.vars.update(dict.fromkeys(s.targets, POISON))
        elif isinstance(value, tuple) and len(value) == len(s.targets):
            self.env.vars.update(zip(s.targets, value))
        else:
            self.err("E0104", f"cannot unpack {describe(value)} into {len(s.targets)} names",
                     s.value.span, "here")
            self.env.vars.update(dict.fromkeys(s.targets, POISON))

    def stmt_callstmt(self, s: ast.CallStmt):
        self.eval(s.call)

    def stmt_blockdef(self, s: ast.BlockDef):
        self.env.vars[s.name] = BlockValue(s, self.env)

    def _type(self, s: ast.Input | ast.State) -> TensorType | None:
        if s.dtype not in DTYPES:
            self.err("E0104", f"unknown dtype `{s.dtype}`", s.dtype_span, "not a dtype",
                     help=did_you_mean(s.dtype, DTYPES) or f"use one of {', '.join(DTYPES)}")
            return None
        dims: list = []
        for d, span in s.dims:
            if isinstance(d, str) and d in self.env and isinstance(self.env.get(d), int):
                d = self.env.get(d)
            elif isinstance(d, str) and d in self.env and isinstance(self.env.get(d), SymDim):
                d = self.env.get(d).name
            if not isinstance(d, int | str) or isinstance(d, float | bool) or (
                    isinstance(d, int) and d < 1):
                self.err("E0104", "a dim must be a name or a positive integer", span,
                         f"this is {describe(d)}")
                return None
            dims.append(d)
        return TensorType(s.dtype, tuple(dims))

    def _declare(self, s: ast.Input | ast.State, t: TensorType) -> Node | None:
        if s.name in self.graph.inputs:
            self.err("E0105", f"input `{s.name}` is declared twice", s.span, "second one")
            return None
        node = self.graph.add_input(s.name, t, s.span)
        self.env.vars[s.name] = node
        for axis, d in enumerate(t.shape):  # `seq` becomes a value: zeros(batch, seq), x / seq
            if isinstance(d, str) and d.isidentifier() and d not in self.env:
                self.env.vars[d] = SymDim(d, node, axis)
        return node

    def stmt_input(self, s: ast.Input):
        t = self._type(s)
        if t is None:
            return
        if self.cache and s.name in self.cache_masks and t.rank == 2 and \
                isinstance(t.shape[1], str):  # with a cache the mask covers past and new tokens
            t = TensorType(t.dtype, (t.shape[0], f"past+{t.shape[1]}"))
        self._declare(s, t)

    def stmt_state(self, s: ast.State):
        t = self._type(s)
        if t is not None and self._declare(s, t) is not None:
            self.graph.meta["states"][s.name] = f"next.{s.name}"

    def stmt_next(self, s: ast.Next):
        self.nexts.add(s.name)
        value = self.eval(s.value)
        state = self.graph.inputs.get(s.name)
        if value is POISON:
            return
        if s.name not in self.graph.meta["states"]:
            self.err("E0110", f"`{s.name}` is not a state", s.span, "no such state",
                     help=did_you_mean(s.name, self.graph.meta["states"]) or
                     f"declare it first: `state {s.name}: float32[...]`")
        elif not isinstance(value, Node) or value.type.dtype != state.type.dtype or \
                value.type.rank != state.type.rank or any(
                    isinstance(a, int) and isinstance(b, int) and a != b
                    for a, b in zip(value.type.shape, state.type.shape)):
            self.err("E0201", f"next `{s.name}` must be {state.type}", s.value.span,
                     f"this is {describe(value)}")
        elif f"next.{s.name}" in self.graph.outputs:
            self.err("E0105", f"`next {s.name}` is set twice", s.span, "second one")
        else:
            self.graph.set_output(f"next.{s.name}", value)

    def stmt_output(self, s: ast.Output):
        value = self.eval(s.value)
        if value is POISON:
            return
        if not isinstance(value, Node):
            self.err("E0104", f"output `{s.name}` must be a tensor", s.value.span,
                     f"this is {describe(value)}")
        elif s.name in self.graph.outputs:
            self.err("E0105", f"output `{s.name}` is declared twice", s.span, "second one")
        else:
            self.graph.set_output(s.name, value)

    def stmt_return(self, s: ast.Return):
        if not self.frames:
            self.err("E0104", "`return` outside a block", s.span, "in the model body",
                     help="a model ends with `output` statements")
            return
        raise _Return(self.eval(s.value))

    def stmt_if(self, s: ast.If):
        cond = self.eval(s.cond)
        if cond is POISON:  # neither branch ran: what they assign is poisoned, not unknown
            self.env.vars.update(dict.fromkeys(_assigned(s.then + s.orelse), POISON))
            return
        if not isinstance(cond, bool):
            self.err("E0104", "an `if` condition must be a compile-time bool", s.cond.span,
                     f"this is {describe(cond)}")
            return
        self.block(s.then if cond else s.orelse)

    def stmt_repeat(self, s: ast.Repeat):
        n = self.eval(s.count)
        if n is POISON:
            return
        if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= MAX_REPEAT:
            self.err("E0104", f"`repeat` needs an integer count in 1..{MAX_REPEAT}", s.count.span,
                     f"this is {describe(n)}")
            return
        outer, outer_shared, outer_step = self.scope, self.shared, self.step_params
        base = outer.child(s.var)
        if s.shared:
            self.shared = (*self.shared, base)
        hidden = self.env.vars.get(s.var, _UNSET)  # the loop name is bound only in the loop
        for i in range(n):
            if not self._spend(s.count.span):
                break
            self.scope = Scope(base if s.shared else f"{base}.{i}")
            self.step_params = set() if s.shared else self.step_params
            self.env.vars[s.var] = i
            record = {"block": "repeat", "scope": f"{base}.{i}", "depth": len(self.frames) +
                      self.repeat_depth, "in": [], "out": "", "params": len(self.graph.params),
                      "shared": s.shared, "nodes": len(self.graph)}
            self.graph.meta.setdefault("calls", []).append(record)  # for `archc explain`
            self.repeat_depth += 1
            self.block(s.body)
            self.repeat_depth -= 1
            record["params"] = list(self.graph.params)[record["params"]:]
            record["nodes"] = (record["nodes"], len(self.graph))  # the step's node ids (`viz`)
        self.scope, self.shared, self.step_params = outer, outer_shared, outer_step
        if hidden is _UNSET:
            self.env.vars.pop(s.var, None)
        else:
            self.env.vars[s.var] = hidden

    def _spend(self, span: Span) -> bool:
        self.expansions += 1
        if self.expansions <= MAX_EXPANSIONS and len(self.graph) > MAX_NODES:
            self.expansions = MAX_EXPANSIONS + 1
            self.err("E0108", f"the model has more than {MAX_NODES:,} graph nodes", span,
                     "the budget runs out here", help="reduce the layer counts")
            return False
        if self.expansions == MAX_EXPANSIONS + 1:
            self.err("E0108", f"the model expands more than {MAX_EXPANSIONS:,} blocks and "
                     "repeat steps", span, "the budget runs out here",
                     help="nested repeats multiply: reduce the counts")
        return self.expansions <= MAX_EXPANSIONS

    # ------------------------------------------------------------ expressions
    def eval(self, e: ast.Expr):
        return getattr(self, "expr_" + type(e).__name__.lower())(e)

    def expr_number(self, e: ast.Number):
        return e.value

    def expr_string(self, e: ast.String):
        return e.value

    def expr_listexpr(self, e: ast.ListExpr):
        items = tuple(self.eval(i) for i in e.items)
        return POISON if any(i is POISON for i in items) else items

    def expr_binop(self, e: ast.BinOp):
        return operators.binop(self, e)

    def expr_unaryop(self, e: ast.UnaryOp):
        return operators.unop(self, e)

    def expr_subscript(self, e: ast.Subscript):
        return operators.subscript(self, e)

__all__ = ["Evaluator", "ShapeError"]
