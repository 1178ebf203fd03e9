"""Names and calls: how a name resolves, how a call finds its primitive or block, how a block's
arguments bind (defaults, flags, words), and how a block expands in its own scope.

`Calls` is a mixin of the `Evaluator` (archc/lower/evaluate.py), which supplies `eval`, `err`,
`block`, `env`, `scope` and the graph.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from archc.diagnostics import Span, did_you_mean
from archc.frontend import ast
from archc.ir.graph import Node
from archc.lower import operators
from archc.lower.builder import Abort, LayerBuilder, LayerFailed
from archc.lower.layers import LAYERS, NUMERIC
from archc.lower.signature import POISON, FuncRef, ModuleRef, Word, bind, describe

MAX_DEPTH = 32


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
    library: bool = False


@dataclass
class Frame:
    """One block call being expanded: where it was called, and where each argument was."""

    block: str
    call: Span
    arg_spans: dict[str, Span]


class _Return(Exception):
    def __init__(self, value):
        self.value = value



class Calls:
    def expr_name(self, e: ast.Name):
        if e.id in self.env:
            return self.env.get(e.id)
        if e.id in LAYERS:
            return FuncRef(e.id)
        hint = did_you_mean(e.id, self.env.names())
        self.err("E0100", f"unknown name `{e.id}`", e.span, "not defined", help=hint)
        return POISON

    def eval_arg(self, e: ast.Expr, default: ast.Expr | None = None):
        """A block's argument: a bare unknown name is a layer (`tied = wte`), a function
        (`act = silu`), or a word for an option whose default is a word (`init = he`)."""
        if isinstance(e, ast.Name) and e.id in self.modules and (
                e.id not in self.env or isinstance(self.env.get(e.id), BlockValue)):
            # `tied = embed` names the layer; `f = embed` called later still finds the block
            block = self.env.get(e.id) if e.id in self.env else None
            return ModuleRef(self.modules[e.id], block)
        if isinstance(e, ast.Name) and e.id not in self.env:
            if e.id in LAYERS:
                return FuncRef(e.id)
            if isinstance(default, ast.Name) and default.id in LAYERS:  # `act = gelu_tan`
                self.err("E0101", f"unknown function `{e.id}`", e.span, "not a function",
                         help=did_you_mean(e.id, LAYERS))
                return POISON
            if isinstance(default, ast.Name) and default.id not in ("true", "false", "none"):
                return Word(e.id, e.span)
            if did_you_mean(e.id, self.modules) and not did_you_mean(e.id, self.env.names()):
                return self.module_ref(e)
        return self.eval(e)

    def emit(self, span: Span | None, op: str, *inputs: Node, **attrs) -> Node:
        b = LayerBuilder(self.graph, self.diags, self.scope.prefix, span, self.shared, self.uses,
                         ev=self)
        try:
            return b.op(op, *inputs, **attrs)
        except LayerFailed:
            return POISON

    def expr_call(self, e: ast.Call):
        fn = self.env.get(e.func) if e.func in self.env else None
        if isinstance(fn, ModuleRef) and fn.block is not None:
            fn = fn.block
        if isinstance(fn, BlockValue):
            return self.call_block(fn, e)
        if isinstance(fn, Word):
            self.err("E0101", f"`{fn.text}` is not a layer or function", e.func_span,
                     f"`{e.func}` is `{fn.text}` here", help=did_you_mean(fn.text, LAYERS))
            return POISON
        name = fn.name if isinstance(fn, FuncRef) else e.func  # a number named `dim` or
        layer = LAYERS.get(name)  # `dropout` does not hide the function of that name
        if layer is None:
            known = set(LAYERS) | {n for n in self.env.names()
                                   if isinstance(self.env.get(n), BlockValue)}
            self.err("E0101", f"unknown layer or function `{e.func}`", e.func_span,
                     "not a layer, function or block", help=did_you_mean(e.func, known))
            return POISON
        spans: dict = {}
        naming, self.naming = self.naming, None  # `w = param(...)` names this call only
        if name in NUMERIC and len(e.args) == 1 and not e.kwargs:  # sqrt(d) or sqrt(x)
            v = self.eval(e.args[0])
            if v is POISON or (operators.is_num(v) and not isinstance(v, bool)):
                return v if v is POISON else operators.finite(self, NUMERIC[name], v, e.span)
            args = {"x": v} if isinstance(v, Node) else None
            if args is None:
                self.err("E0104", f"`{name}` needs a number or a tensor", e.args[0].span,
                         f"this is {describe(v)}")
        else:
            args = bind(layer.sig, e, self, spans)
        if args is None:
            return POISON
        prefix = self._name_layer(e, name) if layer.owns else self.scope.prefix
        if prefix is None:
            return POISON
        b = LayerBuilder(self.graph, self.diags, prefix, e.span, self.shared, self.uses, spans,
                         ev=self)
        self.naming = e.alias if e.alias and not layer.owns else naming
        try:
            return layer.lower(b, **args)
        except LayerFailed:
            return POISON
        finally:
            self.naming = None

    def _name_layer(self, e: ast.Call, default: str) -> str | None:
        if e.alias == "_":
            return self.scope.prefix
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
        node, params = blk.node, blk.node.params
        values = self._bind_block(blk, e)
        if values is None:
            return POISON
        if len(self.frames) >= MAX_DEPTH:
            self.err("E0108", f"blocks nest deeper than {MAX_DEPTH} (recursion?)", e.span, "here")
            return POISON
        if not self._spend(e.span):
            return POISON
        prefix = self._name_layer(e, node.name)
        if prefix is None:
            return POISON
        env = Env(blk.env)
        env.vars.update(values)
        outer_env, outer_scope = self.env, self.scope
        self.env = env
        self.scope = outer_scope if e.alias == "_" else Scope(prefix)
        spans = {p: a.span for p, a in zip(params, e.args)} | {k.name: k.value.span
                                                              for k in e.kwargs}
        self.frames.append(Frame(node.name, e.span, spans))
        record = {"block": node.name, "scope": self.scope.prefix,
                  "depth": len(self.frames) - 1 + self.repeat_depth,
                  "in": [str(v.type) for v in values.values() if isinstance(v, Node)],
                  "params": len(self.graph.params), "library": blk.library,
                  "args": {k: v for k, v in values.items() if not isinstance(v, Node)}}
        self.graph.meta.setdefault("calls", []).append(record)  # for `archc explain`
        try:
            self.block(node.body)
            result = None
        except _Return as r:
            result = r.value
        except Abort:
            return POISON
        finally:
            self.env, self.scope = outer_env, outer_scope
            self.frames.pop()
            record["params"] = list(self.graph.params)[record["params"]:]
        if isinstance(result, Node):
            record["out"] = str(result.type)
        elif isinstance(result, tuple) and result and all(isinstance(v, Node) for v in result):
            record["out"] = ", ".join(str(v.type) for v in result)  # `y, loss = moe_ffn(...)`
        if result is None:
            self.err("E0104", f"block `{node.name}` returns nothing", e.span,
                     "used as a value here", help="end the block with `return x`")
            return POISON
        return result

    def _bind_block(self, blk: BlockValue, e: ast.Call) -> dict | None:
        node, params = blk.node, blk.node.params
        defaults = dict(node.defaults)
        values: dict = {}
        ok = True
        for expr in e.args:
            flag = expr.id if isinstance(expr, ast.Name) and expr.id not in self.env else None
            if flag in defaults and isinstance(defaults[flag], ast.Name) and \
                    defaults[flag].id in ("true", "false"):  # `attention(x, h, causal)`
                values[flag] = True
                continue
            free = [p for p in params if p not in values]
            if not free:
                self.err("E0103", f"`{node.name}` takes {len(params)} arguments", expr.span,
                         "too many arguments", help=f"write `{_usage(node)}`")
                ok = False
                continue
            values[free[0]] = self.eval_arg(expr, defaults.get(free[0]))
        for kw in e.kwargs:
            if kw.name not in params:
                self.err("E0102", f"`{node.name}` has no option `{kw.name}`", kw.span,
                         "unknown option",
                         help=did_you_mean(kw.name, params) or f"write `{_usage(node)}`")
                ok = False
            elif kw.name in values:
                self.err("E0103", f"`{kw.name}` is given twice", kw.span, "second value")
                ok = False
            else:
                values[kw.name] = self.eval_arg(kw.value, defaults.get(kw.name))
        missing = [p for p in params if p not in values and p not in defaults]
        if missing:
            self.err("E0103", f"`{node.name}` is missing `{missing[0]}`", e.span,
                     f"needs `{missing[0]}`", help=f"write `{_usage(node)}`")
            return None
        if not ok or any(v is POISON for v in values.values()):
            return None
        outer, self.env = self.env, blk.env
        try:
            for p in params:
                if p not in values:
                    values[p] = self.eval_arg(defaults[p], defaults[p])
        finally:
            self.env = outer
        return values



def _usage(node: ast.BlockDef) -> str:
    defaults = dict(node.defaults)
    parts = [p for p in node.params if p not in defaults]
    parts += [f"{p} = …" for p in node.params if p in defaults]
    return f"{node.name}({', '.join(parts)})"


