"""The typed AST of an `.arch` file: frozen dataclasses, each with the `span` it came from."""

from __future__ import annotations

from dataclasses import dataclass

from archc.diagnostics import Span


@dataclass(frozen=True)
class Node:
    span: Span


# ---------------------------------------------------------------- expressions
@dataclass(frozen=True)
class Number(Node):
    value: int | float


@dataclass(frozen=True)
class String(Node):
    value: str


@dataclass(frozen=True)
class Name(Node):
    id: str


@dataclass(frozen=True)
class BinOp(Node):
    op: str  # + - * / // % ** == != < <= > >= and or
    left: Expr
    right: Expr


@dataclass(frozen=True)
class UnaryOp(Node):
    op: str  # - not
    operand: Expr


@dataclass(frozen=True)
class Kwarg(Node):
    name: str
    value: Expr


@dataclass(frozen=True)
class Call(Node):
    func: str
    func_span: Span
    args: tuple[Expr, ...]
    kwargs: tuple[Kwarg, ...]
    alias: str | None  # `call(...) as alias` names the layer's parameters


@dataclass(frozen=True)
class ListExpr(Node):
    items: tuple[Expr, ...]  # `[batch, seq, -1]`: shapes, permutations, tensors to concat


@dataclass(frozen=True)
class Slice(Node):
    start: Expr | None
    stop: Expr | None


@dataclass(frozen=True)
class Ellipsis_(Node):
    pass


@dataclass(frozen=True)
class Subscript(Node):
    value: Expr
    index: tuple[Expr | Slice | Ellipsis_, ...]  # `x[:, -n:]`, `x[..., 0]`


Expr = Number | String | Name | BinOp | UnaryOp | Call | ListExpr | Subscript


# ---------------------------------------------------------------- statements
@dataclass(frozen=True)
class Let(Node):
    bindings: tuple[tuple[str, Expr, Span], ...]


@dataclass(frozen=True)
class Input(Node):
    name: str
    dtype: str
    dtype_span: Span
    dims: tuple[tuple[str | int, Span], ...]


@dataclass(frozen=True)
class State(Node):
    """`state NAME: DTYPE[dims]`: read like an input; its next value is set with `next`."""

    name: str
    dtype: str
    dtype_span: Span
    dims: tuple[tuple[str | int, Span], ...]


@dataclass(frozen=True)
class Assign(Node):
    targets: tuple[str, ...]  # `a, b = chunk(x, 2)` unpacks a tuple
    value: Expr


@dataclass(frozen=True)
class Next(Node):
    """`next NAME = expr`: the value of state NAME for the next call."""

    name: str
    value: Expr


@dataclass(frozen=True)
class Output(Node):
    name: str
    value: Expr


@dataclass(frozen=True)
class Repeat(Node):
    count: Expr
    shared: bool
    var: str
    body: tuple[Stmt, ...]


@dataclass(frozen=True)
class If(Node):
    cond: Expr
    then: tuple[Stmt, ...]
    orelse: tuple[Stmt, ...]


@dataclass(frozen=True)
class Return(Node):
    value: Expr


@dataclass(frozen=True)
class BlockDef(Node):
    name: str
    params: tuple[str, ...]
    body: tuple[Stmt, ...]
    defaults: tuple[tuple[str, Expr], ...] = ()  # `block linear(x, out, bias = true)`


@dataclass(frozen=True)
class CallStmt(Node):
    """A call on its own line, kept for its checks (`require(...)`); its value is dropped."""

    call: Call


@dataclass(frozen=True)
class Serving(Node):
    """`serving eos_token_id = [2, 32000], context_length = n`: facts a server needs that the
    graph does not carry (archc/serving.py). Only directly in a model body; changes no IR."""

    bindings: tuple[tuple[str, Expr, Span], ...]  # like `let`: (fact, value, fact's span)


@dataclass(frozen=True)
class Import(Node):
    path: str  # relative to the importing file


Stmt = Let | Input | State | Assign | Output | Next | Repeat | If | Return | BlockDef | CallStmt


@dataclass(frozen=True)
class Model(Node):
    name: str
    body: tuple[Stmt | Serving, ...]


@dataclass(frozen=True)
class Module:
    """One parsed file: its top-level blocks and models, and the text they came from."""

    path: str
    source: str
    blocks: tuple[BlockDef, ...]
    models: tuple[Model, ...]
    imports: tuple[Import, ...] = ()
