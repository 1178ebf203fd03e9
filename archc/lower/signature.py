"""Signatures of spec-level calls and the binding of a call's arguments against one.

A layer or function declares its parameters as `Arg(name, kind, default)`. The first
`positional` of them may be given by position; all may be given by keyword. A bare name given
by position that names a `bool` argument sets it (`attention(x, heads, causal)`). `enum` and
`module` arguments take a bare name literally (`act = relu`, `tied = wte`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from archc.diagnostics import did_you_mean
from archc.frontend import ast
from archc.ir.graph import Node

REQUIRED = object()


class Poison:
    """The value of an expression that already produced a diagnostic; it silences follow-ups."""

    def __repr__(self) -> str:
        return "<error>"


POISON = Poison()


@dataclass(frozen=True)
class Rope:
    """A `rope(...)` config; its schedules are in archc/lower/rope.py."""

    theta: float = 10000.0
    fraction: float = 1.0
    dim: int | None = None  # rotary dims per head; overrides fraction
    interleaved: bool = False
    scaling: str = "default"
    factor: float = 1.0
    original_max: int = 0  # the pretraining context (llama3, yarn, longrope)
    max_pos: int = 0  # dynamic: the length up to which frequencies stay as trained
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    mscale: float = 0.0
    mscale_all_dim: float = 0.0
    truncate: bool = True
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()


@dataclass(frozen=True)
class ModuleRef:
    prefix: str  # parameter-name prefix of a named layer (`wte`, `h.0.attn`)
    block: Any = field(default=None, compare=False)  # a block of the same name, to call


@dataclass(frozen=True)
class SymDim:
    """A symbolic dim (`seq`) as a compile-time value: its name, and a tensor whose `axis` has
    that size at run time (so `zeros(batch, seq)` or `x / seq` can read it)."""

    name: str
    ref: Node = field(compare=False)  # equal dims are equal by name, whichever tensor has them
    axis: int = field(compare=False)


@dataclass(frozen=True)
class FuncRef:
    """A primitive function used as a value: `act = silu`, later called as `act(x)`."""

    name: str


@dataclass(frozen=True)
class Word:
    """A bare word passed to a block (`init = xavier`): an option value, checked where used."""

    text: str
    span: Any = field(default=None, compare=False)  # where it was written, for messages


@dataclass(frozen=True)
class Arg:
    name: str
    kind: str  # tensor | int | float | bool | enum | module | rope | value | *value (variadic)
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Signature:
    name: str
    args: tuple[Arg, ...]
    positional: int
    doc: str = ""
    index: dict[str, Arg] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        self.index.update({a.name: a for a in self.args})

    def usage(self) -> str:
        parts = [a.name for a in self.args[: self.positional]]
        parts += [f"{a.name} = …" for a in self.args[self.positional:]]
        return f"{self.name}({', '.join(parts)})"


_KIND_TEXT = {"tensor": "a tensor", "int": "an integer", "float": "a number", "bool":
              "`true` or `false`", "enum": "one of", "module": "the name of a layer given with "
              "`as`", "rope": "`rope(...)`", "value": "a value", "dim": "a dim (an integer or "
              "a symbolic dim such as `seq`)", "list": "a list `[...]`"}


def bind(sig: Signature, call: ast.Call, ev, spans: dict | None = None) -> dict[str, Any] | None:
    """Match `call`'s arguments to `sig`, evaluating each with `ev`; None after any error.
    `spans` (when given) receives where each argument was written, for diagnostics."""
    bound: dict[str, tuple[Any, ast.Node]] = {}
    ok = True
    positional = list(call.args)
    slots = list(sig.args[: sig.positional])
    rest = next((a for a in slots if a.kind.startswith("*")), None)
    if rest is not None:  # variadic: `param(d, out)` or `concat(a, b)`; one list also works
        slots = slots[: slots.index(rest)]
        extra = positional[len(slots):]
        positional = positional[: len(slots)]
        items = _variadic(extra, ev)
        bound[rest.name] = (items, call)
    for expr in positional:
        flag = sig.index.get(expr.id) if isinstance(expr, ast.Name) else None
        if flag is not None and flag.kind == "bool" and expr.id not in ev.env:
            bound[flag.name] = (True, expr)
            continue
        if not slots:
            ev.err("E0103", f"`{sig.name}` takes at most {sig.positional} positional arguments",
                   expr.span, "unexpected argument", help=f"write `{sig.usage()}`")
            ok = False
            continue
        arg = slots.pop(0)
        bound[arg.name] = (_convert(arg, expr, ev), expr)
    for kw in call.kwargs:
        arg = sig.index.get(kw.name)
        if arg is None:
            ev.err("E0102", f"`{sig.name}` has no option `{kw.name}`", kw.span, "unknown option",
                   help=did_you_mean(kw.name, sig.index) or f"write `{sig.usage()}`")
            ok = False
        elif arg.name in bound:
            ev.err("E0103", f"`{arg.name}` is given twice", kw.span, "second value")
            ok = False
        else:
            bound[arg.name] = (_convert(arg, kw.value, ev), kw.value)
    out = {}
    if spans is not None:
        spans.update({name: expr.span for name, (_, expr) in bound.items()})
    for arg in sig.args:
        if arg.name in bound:
            out[arg.name] = bound[arg.name][0]
        elif arg.default is REQUIRED:
            ev.err("E0103", f"`{sig.name}` is missing `{arg.name}`", call.span,
                   f"needs `{arg.name}`", help=f"write `{sig.usage()}`")
            ok = False
        else:
            out[arg.name] = arg.default
    if not ok or any(v is POISON for v in out.values()):
        return None
    return out


def _variadic(exprs, ev) -> Any:
    values = [ev.eval(x) for x in exprs]
    if any(v is POISON for v in values):
        return POISON
    if len(values) == 1 and isinstance(values[0], tuple):
        return values[0]
    return tuple(values)


def _convert(arg: Arg, expr: ast.Expr, ev) -> Any:
    word = None
    if arg.kind == "enum" and isinstance(expr, ast.Name | ast.String) and not (
            isinstance(expr, ast.Name) and expr.id in ev.env and expr.id not in arg.choices):
        word = expr.id if isinstance(expr, ast.Name) else expr.value
    elif arg.kind == "enum":  # a block passing its own option on: `init = init`
        value = ev.eval(expr)
        if value is POISON:
            return value
        word = value.text if isinstance(value, Word) else value if isinstance(value, str) \
            else None
        name = getattr(value, "name", None)  # `init = zeros` passed on: the function `zeros`
        if word is None and isinstance(name, str) and name in arg.choices:
            word = name
        if word is None:
            ev.err("E0104", f"`{arg.name}` must be one of {', '.join(arg.choices)}", expr.span,
                   f"this is {describe(value)}")
            return POISON
    if word is not None:
        if word in arg.choices:
            return word
        ev.err("E0104", f"`{word}` is not a valid `{arg.name}`", expr.span,
               f"expected one of {', '.join(arg.choices)}",
               help=did_you_mean(word, arg.choices))
        return POISON
    if arg.kind == "module" and isinstance(expr, ast.Name) and expr.id not in ev.env:
        return ev.module_ref(expr)
    value = ev.eval(expr)
    if arg.kind == "module" and isinstance(value, Word) and value.span is not None:
        return ev.module_ref(ast.Name(value.span, value.text))  # `tied = wte` passed on
    if value is POISON or arg.kind == "value":
        return value
    if value is None and arg.default is None:
        return None
    if _fits(arg.kind, value):
        return float(value) if arg.kind == "float" else value
    expected = _KIND_TEXT[arg.kind]
    if arg.kind == "enum":
        expected += " " + ", ".join(arg.choices)
    ev.err("E0104", f"`{arg.name}` must be {expected}", expr.span, f"this is {describe(value)}")
    return POISON


def _fits(kind: str, v: Any) -> bool:
    if kind == "tensor":
        return isinstance(v, Node)
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "float":
        return isinstance(v, int | float) and not isinstance(v, bool)
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "rope":
        return isinstance(v, Rope)
    if kind == "module":
        return isinstance(v, ModuleRef)
    if kind == "dim":
        return isinstance(v, SymDim) or (isinstance(v, int) and not isinstance(v, bool))
    if kind == "list":
        return isinstance(v, tuple)
    return False


def describe(v: Any) -> str:
    if isinstance(v, Node):
        return f"a tensor {v.type}"
    if isinstance(v, bool):
        return "a bool"
    if isinstance(v, int | float):
        return f"the number {v}"
    if isinstance(v, Rope):
        return "a rope config"
    if isinstance(v, ModuleRef):
        return f"the layer `{v.prefix}`"
    if isinstance(v, SymDim):
        return f"the symbolic dim `{v.name}`"
    if isinstance(v, Word):
        return f"the word `{v.text}`"
    if isinstance(v, FuncRef):
        return f"the function `{v.name}`"
    if isinstance(v, tuple):
        return f"a list of {len(v)}"
    if isinstance(v, str):
        return f'the string "{v}"'
    return "nothing" if v is None else type(v).__name__
