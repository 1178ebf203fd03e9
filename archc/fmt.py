"""`archc fmt`: one canonical layout for `.arch` files, the one the bundled specs use.

- two spaces per block level; one statement per line; `} else {` on the closing brace's line;
- one space around binary operators, `=`, `as` and after commas; none inside brackets, before
  a call's or subscript's bracket (`f(x)`, `x[0]`, `int64[batch, seq]`), after a unary minus,
  around a slice's colon (`x[:, -n:]`), or before the colon of `input x: f32[...]`;
- a statement longer than 100 columns is broken after a comma or, inside one argument, before
  a binary `+ - * / @ and or`, filling each line greedily; a bracketed argument that would fit
  on a line of its own is not split. The continuation is aligned one column right of the
  innermost open bracket (the visual indent the specs use), or indented 4 spaces with no
  bracket open (`let a = 1, b = 2, ...`). A line with nowhere to break (a long string) stays;
- at most one blank line in a row, none after `{`, before `}` or at either end of the file,
  and exactly one between top-level blocks and models (consecutive imports stay together);
- an `if` chain whose branches each hold one simple statement stays on one line,
  `if bias { y = y + b }`, when the source wrote it on one line and it fits; otherwise it is
  laid out over lines. This is the one choice kept from the source (black's "magic trailing
  comma" idea): the library uses both forms, and neither reads better everywhere.

Comments stay where they were. An own-line comment stays on its own line before the same
token, at that line's indent; a trailing comment stays after the same token and ends the line
there (inside an expression, the expression continues on the next line). The trailing comments
of consecutive lines share one column, two spaces after the longest code among them; a lone
one sits two spaces after its code (gofmt's and clang-format's rule). The library and the docs
use such columns for shape annotations (`# [B, H, T, hd]`), so columns are kept, though not at
the hand-picked places no rule reproduces. Trailing comments do not count towards the 100
columns: a line is never broken to make room for one.

Why the concrete parse tree and not the AST: the AST drops parentheses, trailing commas and
comments, so printing it back would need the source anyway. The formatter walks the tokens of
lark's parse tree (every terminal of the grammar is named, so the tree keeps them all), finds
the comments in the gaps between tokens (gaps hold only whitespace and comments), and takes
from the tree only where statements start and where `if` chains begin and end. Tokens are
printed verbatim, so the output parses to the same AST; `format_text` re-parses its output and
refuses text whose AST (spans aside) differs. This is the one module besides
`archc.frontend.parser` that reads lark's trees.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from dataclasses import dataclass, fields, is_dataclass
from itertools import groupby

from lark import Token, Tree

from archc.diagnostics import ArchcError, Diagnostic, Span
from archc.files import read_text, write_file
from archc.frontend import parse
from archc.frontend.parser import parser

# columns per line; spaces per block level; continuation indent when no bracket is open
LIMIT, INDENT, HANG = 100, 2, 4

_SIMPLE = {"let_stmt", "input_stmt", "state_stmt", "assign", "output_stmt", "next_stmt",
           "return_stmt", "call_stmt", "serving_stmt"}
_STMTS = _SIMPLE | {"repeat_stmt", "if_stmt", "block_def", "model", "import_stmt"}
_VALUE_END = {"NAME", "NUMBER", "STRING", "RPAR", "RSQB"}
_OPEN, _CLOSE = {"LPAR", "LSQB"}, {"RPAR", "RSQB"}
_COMMENT = re.compile(r"#[^\n]*")


@dataclass
class _Tok:
    type: str
    text: str
    start: int
    end: int
    unary: bool = False  # a MINUS that negates


@dataclass
class _Comment:
    text: str
    trailing: bool  # on the same line as the token before it
    newlines: int  # line breaks between the previous token or comment and this one
    end: int


def format_text(text: str, path: str = "<spec>") -> str:
    """The canonical layout of `.arch` text; a file that does not parse raises its diagnostic."""
    module = parse(text, path)
    if text.startswith("\ufeff"):
        text = " " + text[1:]  # as the parser reads a BOM
    tree = parser().parse(text)
    toks = sorted((_Tok(t.type, str(t), t.start_pos, t.end_pos)
                   for sub in tree.iter_subtrees() for t in sub.children
                   if isinstance(t, Token)), key=lambda t: t.start)
    for prev, tok in zip([None, *toks], toks, strict=False):
        tok.unary = tok.type == "MINUS" and (prev is None or prev.type not in _VALUE_END)
    out = _Printer(text, toks, *_structure(tree)).run()
    if _shape(parse(out, path)) != _shape(module):
        raise ArchcError([Diagnostic(
            "E0007", "`archc fmt` would change the meaning of this file, so it is left "
            "unchanged", Span(path, 0, 0), help="this is a bug in archc fmt; please report it")])
    return out


def _structure(tree: Tree) -> tuple[set[int], dict[int, int], dict[int, str]]:
    """Where statements start; the `if` chains that may stay on one line (start -> end);
    and the top-level items (start -> rule name)."""
    starts: set[int] = set()
    chains: dict[int, int] = {}
    else_ifs: set[int] = set()
    for sub in tree.iter_subtrees():
        if sub.data in _STMTS:
            starts.add(sub.meta.start_pos)
        if sub.data == "if_stmt":
            if _one_liners(sub):
                chains[sub.meta.start_pos] = sub.meta.end_pos
            if isinstance(sub.children[-1], Tree) and sub.children[-1].data == "if_stmt":
                else_ifs.add(sub.children[-1].meta.start_pos)  # `else if` continues a line
    tops = {item.meta.start_pos: item.data for item in tree.children if isinstance(item, Tree)}
    return starts - else_ifs, chains, tops


def _one_liners(node: Tree) -> bool:
    """Every branch of this `if` chain holds exactly one simple statement."""
    while True:
        kids = node.children
        braces = [i for i, c in enumerate(kids) if isinstance(c, Token) and c.type in
                  ("LBRACE", "RBRACE")]
        if not _one_simple(kids[braces[0] + 1:braces[1]]):
            return False
        node = kids[-1]
        if not isinstance(node, Tree):
            return True
        if node.data != "if_stmt":  # else_block
            return _one_simple(node.children)


def _one_simple(children: list) -> bool:
    body = [c for c in children if isinstance(c, Tree)]
    return len(body) == 1 and body[0].data in _SIMPLE


def _space(a: _Tok | None, b: _Tok, bracketed: bool) -> bool:
    """Whether one space separates tokens `a` and `b` on a line."""
    if a is None or b.type in ("RPAR", "RSQB", "COMMA") or a.type in _OPEN:
        return False
    if a.type == "COMMA":
        return True
    if b.type == "COLON":
        return False
    if a.type == "COLON":
        return not bracketed  # `input x: f32[...]` but `x[1:n]`
    if a.unary:
        return False
    if b.type == "LPAR":
        return a.type != "NAME"
    if b.type == "LSQB":
        return a.type not in _VALUE_END
    return True


class _Printer:
    def __init__(self, text: str, toks: list[_Tok], starts: set[int], chains: dict[int, int],
                 tops: dict[int, str]):
        self.text, self.toks, self.starts, self.chains, self.tops = text, toks, starts, chains, tops
        self.lines: list[tuple[str, str | None]] = []  # code, trailing comment
        self.depth = 0
        self.opened = True  # at the start of the file or of a block: no blank line here
        self.flat_until = -1  # inside an `if` chain kept on one line
        self.indent = 0  # of the logical line being gathered

    def run(self) -> str:
        line: list[_Tok | _Comment] = []
        prev_end, prev_top = 0, None
        for i, tok in enumerate(self.toks):
            comments = self._comments(prev_end, tok.start, i > 0)
            if not self._line_start(i):
                line += comments
            else:
                while comments and comments[0].trailing:
                    line.append(comments.pop(0))
                self._flush(line)
                line, blank = [], False
                if tok.start in self.tops and self.depth == 0:
                    kind = self.tops[tok.start]
                    blank = prev_top is not None and not (prev_top == kind == "import_stmt")
                    prev_top = kind
                for c in comments:
                    self._blank(blank or c.newlines > 1)
                    blank = False
                    self.lines.append((" " * (self.depth * INDENT) + c.text, None))
                if tok.type == "RBRACE" and tok.start >= self.flat_until:
                    self.depth -= 1
                else:
                    newlines = self.text.count("\n", comments[-1].end if comments else
                                               prev_end, tok.start)
                    self._blank(blank or newlines > 1)
                self.indent = self.depth * INDENT
                if tok.type == "IF" and tok.start in self.chains:
                    self._try_flat(i)
            line.append(tok)
            if tok.type == "LBRACE" and tok.start >= self.flat_until:
                self.depth += 1
            prev_end = tok.end
        tail = self._comments(prev_end, len(self.text), bool(self.toks))
        while tail and tail[0].trailing:
            line.append(tail.pop(0))
        self._flush(line)
        for c in tail:
            self._blank(c.newlines > 1)
            self.lines.append((c.text, None))
        return "".join(line + "\n" for line in _align(self.lines))

    def _line_start(self, i: int) -> bool:
        tok = self.toks[i]
        if i == 0:
            return True
        if tok.start < self.flat_until:
            return False
        before = self.toks[i - 1]
        return (tok.start in self.starts or tok.type == "RBRACE"
                or (before.type == "LBRACE" and before.start >= self.flat_until))

    def _comments(self, start: int, end: int, after_token: bool) -> list[_Comment]:
        found, at = [], start
        for m in _COMMENT.finditer(self.text, start, end):
            newlines = self.text.count("\n", at, m.start())
            found.append(_Comment(m.group().rstrip(), after_token and newlines == 0 and
                                  at == start, newlines, m.end()))
            at = m.end()
        return found

    def _blank(self, wanted: bool) -> None:
        if wanted and not self.opened:
            self.lines.append(("", None))
        self.opened = False

    def _try_flat(self, i: int) -> None:
        """Keep the `if` chain starting at token i on one line if the source has it on one
        line and it fits."""
        end = self.chains[self.toks[i].start]
        if "\n" in self.text[self.toks[i].start:end]:
            return
        width, prev, depth = self.depth * INDENT, None, 0
        for tok in self.toks[i:]:
            if tok.start >= end:
                break
            width += _space(prev, tok, depth > 0) + len(tok.text)
            depth += (tok.type in _OPEN) - (tok.type in _CLOSE)
            prev = tok
        if width <= LIMIT:
            self.flat_until = end

    def _flush(self, line: list[_Tok | _Comment]) -> None:
        if not line:
            return
        last = next(el for el in reversed(line) if isinstance(el, _Tok))
        self.opened = last.type == "LBRACE" and last.start >= self.flat_until
        self.lines += _fill(line, self.indent)


def _fill(line: list[_Tok | _Comment], indent: int) -> list[tuple[str, str | None]]:
    """Lay out one logical line (see the module docstring): (code, trailing comment) lines."""
    out: list[tuple[str, str | None]] = []
    cur, note = " " * indent, None
    stack: list[int] = []  # the continuation column of each open bracket
    prev, must_break = None, False
    depths, breaks = _breaks(line)
    for k, el in enumerate(line):
        cont = stack[-1] if stack else indent + HANG
        if isinstance(el, _Comment):
            if el.trailing:
                note = el.text
            else:
                if cur.strip():
                    out.append((cur, note))
                cur, note = " " * cont + el.text, None
            must_break = True
            continue
        sp = _space(prev, el, bool(stack))
        if must_break or (breaks[k] and cont < len(cur)
                          and _worth(len(cur) + sp, cont, *_chunk(line, k, depths, breaks),
                                     breaks[k])):
            out.append((cur, note))
            cur, note, sp, must_break = " " * cont, None, False, False
        cur += " " * sp + el.text
        if el.type in _OPEN:
            stack.append(len(cur))
        elif el.type in _CLOSE and stack:
            stack.pop()
        prev = el
    out.append((cur, note))
    return out


# binary operators a line may break before, after a comma has been tried at that depth
_LOOSE = {"PLUS", "MINUS", "STAR", "SLASH", "AT", "AND", "OR"}
_COMMA_BREAK, _OP_BREAK = 1, 2


def _breaks(line: list[_Tok | _Comment]) -> tuple[list[int], list[int]]:
    """The bracket depth before each element, and whether the line may break before it
    (0: no; _COMMA_BREAK: after a comma; _OP_BREAK: before a binary operator)."""
    depths, breaks, depth, prev = [], [], 0, None
    for el in line:
        depths.append(depth)
        if isinstance(el, _Comment):
            breaks.append(0)
            continue
        if prev is not None and prev.type == "COMMA":
            breaks.append(_COMMA_BREAK)
        elif prev is not None and el.type in _LOOSE and not el.unary:
            breaks.append(_OP_BREAK)
        else:
            breaks.append(0)
        depth += (el.type in _OPEN) - (el.type in _CLOSE)
        prev = el
    return depths, breaks


def _worth(col: int, cont: int, width: int, splittable: bool, kind: int) -> bool:
    """Break before a chunk `width` wide that would start at `col`: when it does not fit there
    but fits on a continuation line at `cont`, or when it cannot be split later anyway. Before
    an operator only when that moves it a quarter of the line left: `x = x + f(a, b, ...)`
    breaks inside `f(...)`, not after `x = x`."""
    if col + width <= LIMIT:
        return False
    if kind == _OP_BREAK and splittable and col - cont < LIMIT // 4:
        return False
    return cont + width <= LIMIT or not splittable


def _chunk(line: list[_Tok | _Comment], k: int, depths: list[int],
           breaks: list[int]) -> tuple[int, bool]:
    """The width from element k to the next place to break like it at the same bracket depth
    or outside it (brackets inside are kept whole; an argument after a comma runs to the next
    comma), and whether it could break inside."""
    width, prev, depth, splittable = 0, None, depths[k], False
    for j in range(k, len(line)):
        el = line[j]
        if isinstance(el, _Comment) or (j > k and breaks[j] and (depths[j] < depth or (
                depths[j] == depth and breaks[j] <= breaks[k]))):
            break
        splittable = splittable or (j > k and breaks[j])
        width += (_space(prev, el, depths[j] > 0) if prev else 0) + len(el.text)
        prev = el
    return width, splittable


def _align(lines: list[tuple[str, str | None]]) -> list[str]:
    """Code lines with the trailing comments of consecutive lines in one column."""
    out: list[str] = []
    for noted, run in groupby(lines, key=lambda line: line[1] is not None):
        run = list(run)
        col = max(len(code) for code, _ in run) + 2
        out += [f"{code.ljust(col)}{note}" if noted else code for code, note in run]
    return out


def _shape(node) -> list:
    """The AST as a flat pre-order list with every span and the source text left out, so two
    layouts of one program compare equal. Iterative: deep expressions do not recurse."""
    out, todo = [], [node]
    while todo:
        x = todo.pop()
        if isinstance(x, Span):
            out.append("span")
        elif is_dataclass(x):
            values = [getattr(x, f.name) for f in fields(x) if f.name != "source"]
            out.append((type(x).__name__, len(values)))
            todo.extend(reversed(values))
        elif isinstance(x, tuple | list):
            out.append(("tuple", len(x)))
            todo.extend(reversed(x))
        else:
            out.append((type(x).__name__, x))
    return out


def cmd_fmt(args) -> int:
    """Rewrite each file in its canonical layout, only when that changes it; --check and
    --diff change nothing. Exit 1 when a file does not parse, or with --check when one would
    change."""
    failed = unformatted = False
    for path in args.files:
        try:
            text = read_text(path, "spec file")
            new = format_text(text, str(path))
        except ArchcError as e:
            sys.stderr.write(e.render())
            failed = True
            continue
        unformatted = unformatted or new != text
        if new != text and args.diff:  # a last line with no newline is marked, as diff does
            diff = difflib.unified_diff(text.splitlines(True), new.splitlines(True), path,
                                        f"{path} (formatted)")
            sys.stdout.write("".join(d if d.endswith("\n") else f"{d}\n\\ No newline at end "
                                     "of file\n" for d in diff))
        if new != text and args.check:
            print(f"would reformat {path}")
        elif new != text and not args.diff:
            write_file(os.path.realpath(path), new.encode("utf-8"))  # through a symlink
            print(f"reformatted {path}")
    return 1 if failed or (args.check and unformatted) else 0
