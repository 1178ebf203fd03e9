"""Lowering: walk a model's statements and build the IR graph.

Compile-time values (numbers, bools, layer names, rope configs) are computed here; tensors are
IR nodes. `repeat` unrolls, `if` picks a branch by a compile-time condition, a `block` call
expands its body in a fresh scope. Nothing in a spec is executed as code: the evaluator knows
only the AST's node types and the layer table.

Parameter names follow the layer nesting: `repeat 12 as h` gives `h.0`, `h.1`, ...;
`repeat 6 shared as h` gives `h` for every iteration (one set of weights); a layer is named by
`as NAME` or after itself (`attention`, then `attention_1`, ... within one scope).
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from archc.diagnostics import Collector, Span, did_you_mean
from archc.frontend import ast
from archc.ir.graph import Graph, Node
from archc.ir.types import DTYPES, ShapeError
from archc.lower import attention as _attention  # noqa: F401  (registers the layer)
from archc.lower.builder import LayerBuilder, LayerFailed
from archc.lower.layers import LAYERS, NUMERIC
from archc.lower.signature import POISON, ModuleRef, bind, describe

MAX_REPEAT = 4096
MAX_DEPTH = 32

_NUM_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
            "//": operator.floordiv, "%": operator.mod, "**": operator.pow, "==": operator.eq,
            "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
            ">=": operator.ge}
_TENSOR_OPS = {"+": "add", "-": "sub", "*": "mul", "/": "div", "**": "pow", "==": "equal",
               "!=": "not_equal"}


class Env:
    """Lexical scopes: a block sees the names of the scope it was defined in."""

    def __init__(self, parent: Env | None = None):
        self.vars: dict = {}
        self.parent = parent

    def __contains__(self, name: str) -> bool:
        return name in self.vars or (self.parent is not None and name in self.parent)

    def get(self, name: str):
        env = self
        while env is not None:
            if name in env.vars:
                return env.vars[name]
            env = env.parent
        raise KeyError(name)

    def names(self) -> set[str]:
        return set(self.vars) | (self.parent.names() if self.parent else set())


@dataclass
class Scope:
    prefix: str
    counters: Counter = field(default_factory=Counter)
    named: set[str] = field(default_factory=set)

    def child(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name


@dataclass
class BlockValue:
    node: ast.BlockDef
    env: Env


class _Return(Exception):
    def __init__(self, value):
        self.value = value


class Evaluator:
    def __init__(self, module: ast.Module, diags: Collector, cache: bool = False):
        self.cache = cache
        self.module = module
        self.diags = diags
        self.env = Env()
        self.env.vars.update({"true": True, "false": False, "pi": math.pi})
        self.graph: Graph | None = None
        self.scope = Scope("")
        self.shared: tuple[str, ...] = ()
        self.modules: dict[str, str] = {}
        self.uses: Counter = Counter()
        self.depth = 0
        for blk in module.blocks:
            self.env.vars[blk.name] = BlockValue(blk, self.env)

    def err(self, code: str, message: str, span: Span, label: str = "", help: str | None = None):
        self.diags.error(code, message, span, label, help=help)

    # ------------------------------------------------------------ statements
    def model(self, m: ast.Model) -> Graph:
        self.graph = Graph(m.name)
        self.graph.meta["cache"] = self.cache
        declared = {s.name for s in m.body if isinstance(s, ast.Input)}
        # With a cache, the decoder's mask covers past + new tokens; an encoder's does not.
        self.cache_masks = ("decoder_attention_mask",) if "decoder_input_ids" in declared \
            else ("attention_mask",)
        self.env = Env(self.env)
        self.block(m.body)
        presents = [k for k in self.graph.outputs if k.startswith("present.")]
        for k in presents:  # the spec's outputs first, then the cache
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

    def stmt_assign(self, s: ast.Assign):
        self.env.vars[s.target] = self.eval(s.value)

    def stmt_blockdef(self, s: ast.BlockDef):
        self.env.vars[s.name] = BlockValue(s, self.env)

    def stmt_input(self, s: ast.Input):
        if s.dtype not in DTYPES:
            self.err("E0104", f"unknown dtype `{s.dtype}`", s.dtype_span, "not a dtype",
                     help=did_you_mean(s.dtype, DTYPES) or f"use one of {', '.join(DTYPES)}")
            return
        from archc.ir.types import TensorType

        dims: list = []
        for d, span in s.dims:
            if isinstance(d, str) and d in self.env and isinstance(self.env.get(d), int):
                d = self.env.get(d)
            if not isinstance(d, int | str) or isinstance(d, float):
                self.err("E0104", "a dim must be a name or an integer", span, "here")
                return
            dims.append(d)
        if self.cache and s.name in self.cache_masks and len(dims) == 2 and \
                isinstance(dims[1], str):
            dims[1] = f"past+{dims[1]}"  # with a cache the mask covers past and new tokens
        self.env.vars[s.name] = self.graph.add_input(s.name, TensorType(s.dtype, tuple(dims)),
                                                     s.span)

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
        raise _Return(self.eval(s.value))

    def stmt_if(self, s: ast.If):
        cond = self.eval(s.cond)
        if cond is POISON:
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
        outer, outer_shared = self.scope, self.shared
        base = outer.child(s.var)
        if s.shared:
            self.shared = (*self.shared, base)
        for i in range(n):
            self.scope = Scope(base if s.shared else f"{base}.{i}")
            self.env.vars[s.var] = i
            self.block(s.body)
        self.scope, self.shared = outer, outer_shared

    # ------------------------------------------------------------ expressions
    def eval(self, e: ast.Expr):
        return getattr(self, "expr_" + type(e).__name__.lower())(e)

    def expr_number(self, e: ast.Number):
        return e.value

    def expr_string(self, e: ast.String):
        self.err("E0104", "strings are not values in .arch", e.span, "here",
                 help="option values such as `act = relu` are written without quotes")
        return POISON

    def expr_name(self, e: ast.Name):
        if e.id in self.env:
            return self.env.get(e.id)
        hint = did_you_mean(e.id, self.env.names())
        self.err("E0100", f"unknown name `{e.id}`", e.span, "not defined", help=hint)
        return POISON

    def expr_unaryop(self, e: ast.UnaryOp):
        v = self.eval(e.operand)
        if v is POISON:
            return v
        if e.op == "not" and isinstance(v, bool):
            return not v
        if e.op == "-" and isinstance(v, int | float) and not isinstance(v, bool):
            return -v
        if e.op == "-" and isinstance(v, Node):
            return self._emit(e.span, "neg", v)
        self.err("E0104", f"cannot apply `{e.op}` to {describe(v)}", e.span, "here")
        return POISON

    def expr_binop(self, e: ast.BinOp):
        a, b = self.eval(e.left), self.eval(e.right)
        if a is POISON or b is POISON:
            return POISON
        if e.op in ("and", "or") and isinstance(a, bool) and isinstance(b, bool):
            return (a and b) if e.op == "and" else (a or b)
        if _is_num(a) and _is_num(b) and e.op in _NUM_OPS:
            try:
                return _NUM_OPS[e.op](a, b)
            except (ZeroDivisionError, OverflowError) as err:
                self.err("E0104", f"cannot compute `{e.op}`: {err}", e.span, "here")
                return POISON
        if e.op in _TENSOR_OPS and isinstance(a, Node | int | float) and \
                isinstance(b, Node | int | float) and (isinstance(a, Node) or isinstance(b, Node)):
            like = a if isinstance(a, Node) else b  # `ids != 1` compares in the ids' dtype
            a, b = (self._as_tensor(v, e.span, like) for v in (a, b))
            return self._emit(e.span, _TENSOR_OPS[e.op], a, b)
        self.err("E0104", f"cannot apply `{e.op}` to {describe(a)} and {describe(b)}", e.span,
                 "here")
        return POISON

    def _as_tensor(self, v, span: Span, like: Node | None = None) -> Node:
        dtype = np.int64 if like is not None and like.type.dtype == "int64" else np.float32
        return v if isinstance(v, Node) else self.graph.add_const(
            np.asarray(v, dtype), scope=self.scope.prefix)

    def _emit(self, span: Span, op: str, *inputs: Node) -> Node:
        b = LayerBuilder(self.graph, self.diags, self.scope.prefix, span, self.shared, self.uses)
        try:
            return b.op(op, *inputs)
        except LayerFailed:
            return POISON

    def expr_call(self, e: ast.Call):
        fn = self.env.get(e.func) if e.func in self.env else None
        if isinstance(fn, BlockValue):
            return self.call_block(fn, e)
        layer = LAYERS.get(e.func)
        if layer is None:
            known = set(LAYERS) | {n for n in self.env.names()
                                   if isinstance(self.env.get(n), BlockValue)}
            self.err("E0101", f"unknown layer or function `{e.func}`", e.func_span,
                     "not a layer, function or block", help=did_you_mean(e.func, known))
            return POISON
        if e.func in NUMERIC and len(e.args) == 1 and not e.kwargs:  # sqrt(d) or sqrt(x)
            v = self.eval(e.args[0])
            if v is POISON or _is_num(v):
                return v if v is POISON else float(NUMERIC[e.func](v))
            if isinstance(v, Node):
                return self._emit(e.span, e.func, v)
            self.err("E0104", f"`{e.func}` needs a number or a tensor", e.args[0].span,
                     f"this is {describe(v)}")
            return POISON
        spans: dict = {}
        args = bind(layer.sig, e, self, spans)
        if args is None:
            return POISON
        prefix = self._name_layer(e, e.func) if layer.owns else self.scope.prefix
        if prefix is None:
            return POISON
        b = LayerBuilder(self.graph, self.diags, prefix, e.span, self.shared, self.uses, spans)
        try:
            return layer.lower(b, **args)
        except LayerFailed:
            return POISON

    def _name_layer(self, e: ast.Call, default: str) -> str | None:
        if e.alias is not None:
            if e.alias in self.scope.named:
                self.err("E0105", f"the name `{e.alias}` is used twice in this scope", e.span,
                         "second use", help="layers in one scope need distinct names")
                return None
            self.scope.named.add(e.alias)
            name = e.alias
        else:
            k = self.scope.counters[default]
            self.scope.counters[default] += 1
            name = default if k == 0 else f"{default}_{k}"
        full = self.scope.child(name)
        self.modules[name] = full
        self.modules[full] = full
        return full

    def module_ref(self, e: ast.Name):
        if e.id in self.modules:
            return ModuleRef(self.modules[e.id])
        self.err("E0106", f"no layer named `{e.id}`", e.span, "not a named layer",
                 help=did_you_mean(e.id, self.modules) or "name a layer with `... as NAME`")
        return POISON

    def call_block(self, blk: BlockValue, e: ast.Call):
        params = blk.node.params
        if len(e.args) > len(params):
            self.err("E0103", f"block `{blk.node.name}` takes {len(params)} arguments, "
                     f"got {len(e.args)}", e.span, "too many arguments")
            return POISON
        env = Env(blk.env)
        values = dict(zip(params, (self.eval(a) for a in e.args)))
        for kw in e.kwargs:
            if kw.name not in params:
                self.err("E0102", f"block `{blk.node.name}` has no parameter `{kw.name}`",
                         kw.span, "unknown", help=did_you_mean(kw.name, params))
                return POISON
            values[kw.name] = self.eval(kw.value)
        missing = [p for p in params if p not in values]
        if missing:
            self.err("E0103", f"block `{blk.node.name}` is missing `{missing[0]}`", e.span,
                     "missing argument")
            return POISON
        if self.depth >= MAX_DEPTH:
            self.err("E0108", f"blocks nest deeper than {MAX_DEPTH} (recursion?)", e.span, "here")
            return POISON
        env.vars.update(values)
        outer_env, outer_scope = self.env, self.scope
        prefix = self._name_layer(e, blk.node.name)
        if prefix is None:
            return POISON
        self.env, self.scope, self.depth = env, Scope(prefix), self.depth + 1
        try:
            self.block(blk.node.body)
            result = None
        except _Return as r:
            result = r.value
        finally:
            self.env, self.scope, self.depth = outer_env, outer_scope, self.depth - 1
        if result is None:
            self.err("E0104", f"block `{blk.node.name}` returns nothing", e.span,
                     "used as a value here", help="end the block with `return x`")
            return POISON
        return result


def _is_num(v) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) or isinstance(v, bool)


__all__ = ["Evaluator", "ShapeError"]
