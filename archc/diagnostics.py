"""Diagnostics: data first, rendered text second.

A `Diagnostic` names a `Span` of the spec (file, byte offsets) and says what is wrong there. Every
stage that finds a problem in user input (parser, lowering, weights) builds diagnostics, collects
as many as it can, and raises one `ArchcError`. `render` lays them out the way rustc does:

    error[E0101]: unknown layer `atention`
      --> specs/bad.arch:7:13
       |
     7 |   x = x + atention(x, heads)
       |           ^^^^^^^^ not a layer or function
       |
       = help: did you mean `attention`?

Message rules (from rustc's guide): lowercase, no trailing period, identifiers in backticks, the
fix only in `help`, the smallest span that shows the problem.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

MAX_SHOWN = 120  # characters of a source line shown in a diagnostic


@dataclass(frozen=True)
class Span:
    file: str
    start: int  # byte offset of the first character
    end: int  # byte offset one past the last character

    def line_col(self, source: str) -> tuple[int, int]:
        line = source.count("\n", 0, self.start) + 1
        col = self.start - (source.rfind("\n", 0, self.start) + 1) + 1
        return line, col


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str
    span: Span | None = None
    label: str = ""
    notes: tuple[str, ...] = ()
    help: str | None = None
    severity: str = "error"


class ArchcError(Exception):
    """One or more diagnostics about user input. `str(err)` is the rendered text."""

    def __init__(self, diagnostics: Iterable[Diagnostic], sources: dict[str, str] | None = None):
        self.diagnostics = tuple(diagnostics)
        self.sources = dict(sources or {})
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(render(d, self.sources.get(d.span.file) if d.span else None)
                         for d in self.diagnostics)


def render(diag: Diagnostic, source: str | None = None) -> str:
    out = [f"{diag.severity}[{diag.code}]: {diag.message}"]
    if diag.span is not None and source is not None:
        line, col = diag.span.line_col(source)
        lines = source.splitlines()
        text = lines[line - 1] if 0 < line <= len(lines) else ""  # a span at the very end
        shown = col  # the caret's column in the shown text
        if len(text) > MAX_SHOWN:  # a window around the span of a very long line
            cut = max(0, col - 1 - MAX_SHOWN // 2)
            text = ("…" if cut else "") + text[cut:cut + MAX_SHOWN] + "…"
            shown = col - cut + (1 if cut else 0)
        gutter = " " * len(str(line))
        width = max(1, min(diag.span.end - diag.span.start, len(text) - shown + 1))
        out += [
            f"{gutter}--> {diag.span.file}:{line}:{col}",
            f"{gutter} |",
            f"{line} | {text}",
            f"{gutter} | {' ' * (shown - 1)}{'^' * width} {diag.label}".rstrip(),
        ]
        if diag.notes or diag.help:
            out.append(f"{gutter} |")
    elif diag.span is not None:
        out.append(f"  --> {diag.span.file}")
    pad = " " * (len(str(diag.span.line_col(source)[0])) if diag.span and source else 1)
    out += [f"{pad} = note: {n}" for n in diag.notes]
    if diag.help:
        out.append(f"{pad} = help: {diag.help}")
    return "\n".join(out) + "\n"


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """click's wording: one close match is named, several are listed."""
    matches = difflib.get_close_matches(word, sorted(set(candidates)), n=3, cutoff=0.6)
    if not matches:
        return None
    if len(matches) == 1:
        return f"did you mean `{matches[0]}`?"
    return "did you mean one of " + ", ".join(f"`{m}`" for m in matches) + "?"


@dataclass
class Collector:
    """Gathers diagnostics during a stage; `raise_if_any` ends the stage with one ArchcError."""

    sources: dict[str, str] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    # maps a span to the one to show, plus notes (library errors point at the user's call)
    locate: Callable[[Span | None], tuple[Span | None, tuple[str, ...]]] | None = None

    def error(self, code: str, message: str, span: Span | None = None, label: str = "",
              notes: tuple[str, ...] = (), help: str | None = None) -> None:
        if self.locate is not None:
            span, more = self.locate(span)
            notes = (*notes, *more)
        diag = Diagnostic(code, message, span, label, notes, help)
        key = (code, message, span)  # a repeated layer reports its problem once
        if all((d.code, d.message, d.span) != key for d in self.diagnostics):
            self.diagnostics.append(diag)

    def raise_if_any(self) -> None:
        if self.diagnostics:
            raise ArchcError(self.diagnostics, self.sources)
