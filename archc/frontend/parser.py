"""Text -> AST. The only module that imports lark; its errors leave here as Diagnostics."""

from __future__ import annotations

import functools
import re

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)

from archc.diagnostics import ArchcError, Diagnostic, Span, did_you_mean
from archc.frontend import ast

# Human names for terminals, used in "expected ..." messages.
_HUMAN = {
    "LBRACE": "`{`", "RBRACE": "`}`", "LPAR": "`(`", "RPAR": "`)`", "LSQB": "`[`", "RSQB": "`]`",
    "COMMA": "`,`", "COLON": "`:`", "EQ": "`=`", "CMP": "a comparison", "PLUS": "`+`",
    "MINUS": "`-`", "STAR": "`*`", "SLASH": "`/`", "DSLASH": "`//`", "PERCENT": "`%`",
    "POW": "`**`", "AT": "`@`", "ELLIPSIS": "`...`",
    "NAME": "a name", "NUMBER": "a number", "STRING": "a string",
    "$END": "end of file",
}


@functools.lru_cache(maxsize=1)
def parser() -> Lark:
    return Lark.open("arch.lark", rel_to=__file__, parser="lalr", propagate_positions=True,
                     maybe_placeholders=True)


MAX_NESTING = 100  # brackets deep; deeper input is refused before lark or the AST recurse
MAX_TOKENS = 100_000  # 50x the largest library file; lark takes ~20 us a token, so ~2 s
_TOKEN = re.compile(r'#[^\n]*|"[^"\n]*"|[A-Za-z_]\w*|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|[^\s\w]')


def parse(text: str, path: str = "<spec>") -> ast.Module:
    text = text.replace("\ufeff", " ", 1) if text.startswith("\ufeff") else text  # a BOM
    _token_budget(text, path)
    opened = _brackets(text)
    if isinstance(opened, Diagnostic):
        raise ArchcError([Diagnostic(opened.code, opened.message, Span(path, opened.span.start,
                         opened.span.end), opened.label, help=opened.help)], {path: text})
    try:
        tree = parser().parse(text)
    except UnexpectedInput as e:
        diag = _syntax_diagnostic(e, text, path)
        if diag.code == "E0002" and opened:  # point at the bracket left open, not at the end
            at = opened[-1]
            diag = Diagnostic("E0002", f"unclosed `{text[at]}`", Span(path, at, at + 1),
                              f"this `{text[at]}` is never closed",
                              help=f"the file ends before its `{_CLOSE[text[at]]}`")
        raise ArchcError([diag], {path: text}) from None
    try:
        items = _ToAst(path).transform(tree).children
    except RecursionError:  # a chain such as `- - - ... 1` or `a + a + ... + a`
        raise ArchcError([Diagnostic("E0003", "the spec nests too deeply to read",
                                     Span(path, 0, 0), help="split long expressions with "
                                     "intermediate names")], {path: text}) from None
    except VisitError as e:
        if isinstance(e.orig_exc, ArchcError):
            raise ArchcError(e.orig_exc.diagnostics, {path: text}) from None
        raise
    blocks = tuple(i for i in items if isinstance(i, ast.BlockDef))
    models = tuple(i for i in items if isinstance(i, ast.Model))
    imports = tuple(i for i in items if isinstance(i, ast.Import))
    return ast.Module(path, text, blocks, models, imports)


_CLOSE = {"(": ")", "[": "]", "{": "}"}


def _token_budget(text: str, path: str) -> None:
    """Refuse, in one regex pass, a spec of more than MAX_TOKENS tokens (comments aside)
    before the parser spends seconds on it; the error points at the first token over."""
    n = 0
    for m in _TOKEN.finditer(text):
        if m.group().startswith("#"):
            continue
        n += 1
        if n > MAX_TOKENS:
            raise ArchcError([Diagnostic(
                "E0003", f"the spec has more than {MAX_TOKENS:,} tokens",
                Span(path, m.start(), m.end()), f"this is token {n:,}",
                help="a spec this long is generated: split it into blocks and `import` "
                "them, or name repeated parts with `repeat`")], {path: text})


def _brackets(text: str) -> list[int] | Diagnostic:
    """Offsets of the brackets still open at the end (comments and strings skipped), or a
    diagnostic when they nest deeper than MAX_NESTING."""
    stack: list[int] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif c == '"':
            j = text.find('"', i + 1)
            i = n if j < 0 else j
        elif c in _CLOSE:
            stack.append(i)
            if len(stack) > MAX_NESTING:
                return Diagnostic("E0003", f"brackets nest deeper than {MAX_NESTING}",
                                  Span("", i, i + 1), "too deep",
                                  help="split the expression with intermediate names")
        elif c in ")]}" and stack and text[stack[-1]] + c in ("()", "[]", "{}"):
            stack.pop()
        i += 1
    return stack


def _human(expected: set[str]) -> str:
    closers = expected & {"RPAR", "RBRACE", "RSQB"}
    expected = closers or expected  # at a cut-off, the missing closer is what matters
    names = sorted({_HUMAN.get(t, f"`{t.lower()}`") for t in expected})
    if len(names) > 6:
        names = [*names[:6], "..."]
    return ", ".join(names)


def _syntax_diagnostic(e: UnexpectedInput, text: str, path: str) -> Diagnostic:
    start = e.pos_in_stream if e.pos_in_stream is not None else len(text)
    if isinstance(e, UnexpectedToken) and e.token.type != "$END":
        end = start + max(1, len(str(e.token)))
        expected = _human(e.accepts or e.expected)
        found = f"`{e.token}`"
        if e.token.type == "SERVING" and {"LET", "MODEL"} & set(e.accepts or e.expected):
            return Diagnostic("E0001", "`serving` is allowed only directly in a `model` body",
                              Span(path, start, end), "not allowed here",
                              help="move it to the top level of the model it describes")
        if e.token.type == "EQ" and "COLON" in (e.accepts or e.expected):
            return Diagnostic("E0001", "expected `:` after the input's name",
                              Span(path, start, end), "expected `:` here",
                              help="write `input NAME: DTYPE[dims]`")
        return Diagnostic("E0001", f"unexpected {found}", Span(path, start, end),
                          f"expected {expected}")
    if isinstance(e, UnexpectedCharacters):
        c = text[start]
        shown = f"`{c}`" if c.isprintable() else f"U+{ord(c):04X} (invisible)"
        return Diagnostic("E0001", f"unexpected character {shown}",
                          Span(path, start, start + 1), "not part of the .arch language")
    if isinstance(e, UnexpectedEOF | UnexpectedToken):
        start = len(text.rstrip())
        expected = _human(getattr(e, "expected", None) or e.accepts or set())
        return Diagnostic("E0002", "unexpected end of file", Span(path, max(0, start - 1), start),
                          f"expected {expected} after this", help="is a `}` or `)` missing?")
    return Diagnostic("E0001", str(e).splitlines()[0], Span(path, start, start + 1))


def _span(path: str, meta) -> Span:
    return Span(path, meta.start_pos, meta.end_pos)


def _tok_span(path: str, tok: Token) -> Span:
    return Span(path, tok.start_pos, tok.end_pos)


_KEEP = {"NAME", "NUMBER", "STRING", "CMP", "PLUS", "MINUS", "STAR", "SLASH", "DSLASH", "PERCENT",
         "POW", "AND", "OR", "NOT", "AT"}


def _strip(children):
    """Drop punctuation and keyword tokens; keep values, operators and subtrees."""
    return [c for c in children if not (isinstance(c, Token) and c.type not in _KEEP)]


@v_args(meta=True)
class _ToAst(Transformer):
    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def _s(self, meta) -> Span:
        return _span(self.path, meta)

    def start(self, meta, children):
        return Tree("start", [c for c in children if c is not None])

    def model(self, meta, c):
        c = _strip(c)
        return ast.Model(self._s(meta), str(c[0]), tuple(c[1:]))

    def block_def(self, meta, c):
        c = _strip(c)
        params = c[1] or []
        defaults = tuple((n, d) for n, d in params if d is not None)
        return ast.BlockDef(self._s(meta), str(c[0]), tuple(n for n, _ in params), tuple(c[2:]),
                            defaults)

    def params(self, meta, c):
        return [p for p in c if p is not None and not isinstance(p, Token)]

    def param(self, meta, c):
        return (str(c[0]), c[2])

    def import_stmt(self, meta, c):
        return ast.Import(self._s(meta), str(c[1])[1:-1])

    def state_stmt(self, meta, c):
        name, dtype, dims = _strip(c)
        return ast.State(self._s(meta), str(name), str(dtype), _tok_span(self.path, dtype), dims)

    def call_stmt(self, meta, c):
        return ast.CallStmt(self._s(meta), c[0])

    def next_stmt(self, meta, c):
        c = _strip(c)
        return ast.Next(self._s(meta), str(c[0]), c[1])

    def names(self, meta, c):
        return [str(t) for t in _strip(c)]

    def let_stmt(self, meta, c):
        return ast.Let(self._s(meta), tuple(_strip(c)))

    def serving_stmt(self, meta, c):
        return ast.Serving(self._s(meta), tuple(_strip(c)))

    def binding(self, meta, c):
        c = _strip(c)
        return (str(c[0]), c[1], _tok_span(self.path, c[0]))

    def input_stmt(self, meta, c):
        name, dtype, dims = _strip(c)
        return ast.Input(self._s(meta), str(name), str(dtype), _tok_span(self.path, dtype), dims)

    def dims(self, meta, c):
        return tuple(_strip(c))

    def dim_name(self, meta, c):
        return (str(c[0]), self._s(meta))

    def dim_int(self, meta, c):
        text = str(c[0])
        return (int(text) if text.isdigit() else text, self._s(meta))

    def assign(self, meta, c):
        c = _strip(c)
        return ast.Assign(self._s(meta), tuple(c[0]), c[1])

    def output_stmt(self, meta, c):
        c = _strip(c)
        return ast.Output(self._s(meta), str(c[0]), c[1])

    def repeat_stmt(self, meta, c):
        # children: REPEAT count SHARED? AS NAME LBRACE stmts RBRACE (with placeholder for SHARED)
        count, shared = c[1], c[2]
        if shared is not None and str(shared) != "shared":
            raise ArchcError([Diagnostic(
                "E0001", f"unexpected `{shared}`", _tok_span(self.path, shared),
                "expected `shared` or `as`", help=did_you_mean(str(shared), ["shared"]))])
        body = tuple(x for x in c[6:-1] if not isinstance(x, Token) and x is not None)
        return ast.Repeat(self._s(meta), count, shared is not None, str(c[4]), body)

    def if_stmt(self, meta, c):
        cond = c[1]
        rest = c[2:]
        orelse = ()
        if rest and rest[-1] is not None and not isinstance(rest[-1], Token):
            last = rest[-1]
            if isinstance(last, tuple):  # else_block
                orelse = last
            elif isinstance(last, ast.If):
                orelse = (last,)
        # the then-body sits between LBRACE and RBRACE
        lb = next(i for i, x in enumerate(rest) if isinstance(x, Token) and x.type == "LBRACE")
        rb = next(i for i, x in enumerate(rest) if isinstance(x, Token) and x.type == "RBRACE")
        return ast.If(self._s(meta), cond, tuple(rest[lb + 1:rb]), orelse)

    def else_block(self, meta, c):
        return tuple(x for x in c if not isinstance(x, Token))

    def return_stmt(self, meta, c):
        return ast.Return(self._s(meta), _strip(c)[0])

    def number(self, meta, c):
        text = str(c[0])
        value = int(text) if text.isdigit() else float(text)
        return ast.Number(self._s(meta), value)

    def name(self, meta, c):
        return ast.Name(self._s(meta), str(c[0]))

    def string(self, meta, c):
        return ast.String(self._s(meta), str(c[0])[1:-1])

    def paren(self, meta, c):
        return c[1]

    def list(self, meta, c):
        return ast.ListExpr(self._s(meta), tuple(c[1] or ()))

    def exprs(self, meta, c):
        return [x for x in c if x is not None and not isinstance(x, Token)]

    def subscript(self, meta, c):
        return ast.Subscript(self._s(meta), c[0], tuple(c[2]))

    def subscripts(self, meta, c):
        return [x for x in c if not isinstance(x, Token)]

    def index(self, meta, c):
        return c[0]

    def slice(self, meta, c):
        return ast.Slice(self._s(meta), c[0], c[2])

    def ellipsis(self, meta, c):
        return ast.Ellipsis_(self._s(meta))

    def binop(self, meta, c):
        left, op, right = c
        return ast.BinOp(self._s(meta), str(op), left, right)

    def unop(self, meta, c):
        op, operand = c
        return ast.UnaryOp(self._s(meta), str(op), operand)

    def call(self, meta, c):
        func, args, alias = c[0], c[2], c[-1]
        args = args or []
        pos = tuple(a for a in args if not isinstance(a, ast.Kwarg))
        kws = tuple(a for a in args if isinstance(a, ast.Kwarg))
        return ast.Call(self._s(meta), str(func), _tok_span(self.path, func), pos, kws,
                        str(alias) if alias is not None else None)

    def args(self, meta, c):
        return [x for x in c if not isinstance(x, Token) and x is not None]

    def kwarg(self, meta, c):
        c = _strip(c)
        return ast.Kwarg(self._s(meta), str(c[0]), c[1])
