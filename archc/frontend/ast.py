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


Expr = Number | String | Name | BinOp | UnaryOp | Call


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
class Assign(Node):
    target: str
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


Stmt = Let | Input | Assign | Output | Repeat | If | Return | BlockDef


@dataclass(frozen=True)
class Model(Node):
    name: str
    body: tuple[Stmt, ...]


@dataclass(frozen=True)
class Module:
    """One parsed file: its top-level blocks and models, and the text they came from."""

    path: str
    source: str
    blocks: tuple[BlockDef, ...]
    models: tuple[Model, ...]
