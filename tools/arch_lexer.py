"""A Pygments lexer for `.arch` specs (Pygments is a test dependency, not a runtime one).

    pygmentize -l tools/arch_lexer.py:ArchLexer -x specs/gpt2_small.arch
    pygmentize -l tools/arch_lexer.py:ArchLexer -x -f html \
        -O full -o gpt2.html specs/gpt2_small.arch

Token kinds: the grammar's keywords (archc/frontend/arch.lark) are `Keyword` (`model` and
`block` are `Keyword.Declaration`, followed by the model or block name as `Name.Class`);
`shared` in `repeat n shared as i` is `Keyword.Pseudo`; `true`, `false` and `none` are
`Keyword.Constant`; a name before `(` is `Name.Function`; an input's or state's dtype is
`Keyword.Type` and the dims in its brackets `Name.Variable`. The lexer follows the grammar's
terminals, so a spec that parses has no `Error` token (tests/test_highlight.py checks this on
every bundled spec, library file and documentation example).
"""

from __future__ import annotations

from pygments.lexer import RegexLexer, bygroups, include, words
from pygments.token import (
    Comment,
    Keyword,
    Name,
    Number,
    Operator,
    Punctuation,
    String,
    Whitespace,
)

# The keyword terminals of archc/frontend/arch.lark; tests/test_highlight.py keeps them equal.
KEYWORDS = ("model", "block", "let", "input", "output", "repeat", "as", "if", "else", "return",
            "import", "state", "next", "serving", "and", "or", "not")
CONSTANTS = ("true", "false", "none")
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_NUMBER = r"[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?|\.[0-9]+([eE][+-]?[0-9]+)?"

__all__ = ["ArchLexer"]


class ArchLexer(RegexLexer):
    name = "Arch"
    aliases = ("arch",)
    filenames = ("*.arch",)
    mimetypes = ("text/x-arch",)

    tokens = {  # noqa: RUF012 (Pygments reads this class attribute)
        "common": [
            (r"[ \t\f\r\n]+", Whitespace),
            (r"#[^\n]*", Comment.Single),
            (r'"[^"\n]*"', String.Double),
        ],
        "root": [
            include("common"),
            (rf"\b(model|block)(\s+)({_NAME})", bygroups(Keyword.Declaration, Whitespace,
                                                         Name.Class)),
            (rf"\b(input|state)(\s+)({_NAME})(\s*)(:)(\s*)({_NAME})(\s*)(\[)",
             bygroups(Keyword, Whitespace, Name.Variable, Whitespace, Punctuation, Whitespace,
                      Keyword.Type, Whitespace, Punctuation), "dims"),
            (words(KEYWORDS, prefix=r"\b", suffix=r"\b"), Keyword),
            (words(CONSTANTS, prefix=r"\b", suffix=r"\b"), Keyword.Constant),
            (r"\bshared(?=\s+as\b)", Keyword.Pseudo),
            (rf"{_NAME}(?=\s*\()", Name.Function),
            (_NAME, Name),
            (_NUMBER, Number),
            (r"\.\.\.|\*\*|//|==|!=|<=|>=|[-+*/%@<>=]", Operator),
            (r"[{}()\[\],:]", Punctuation),
        ],
        "dims": [
            include("common"),
            (_NAME, Name.Variable),
            (_NUMBER, Number),
            (r",", Punctuation),
            (r"\]", Punctuation, "#pop"),
        ],
    }
