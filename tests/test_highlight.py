"""Editor support: the Pygments lexer (tools/arch_lexer.py) and the TextMate grammar
(editors/arch.tmLanguage.json) know exactly the grammar's keywords, and the lexer reads every
bundled spec, library file and documentation example without an `Error` token."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
from conftest import ROOT, SPECS
from pygments.lexers import load_lexer_from_file
from pygments.token import Error, Keyword, Name

from archc.frontend.parser import parser

PATH = ROOT / "tools" / "arch_lexer.py"
_spec = importlib.util.spec_from_file_location("arch_lexer", PATH)
arch_lexer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(arch_lexer)
LEXER = arch_lexer.ArchLexer()
TM = ROOT / "editors" / "arch.tmLanguage.json"
GRAMMAR = (ROOT / "archc" / "frontend" / "arch.lark").read_text(encoding="utf-8")
# keyword terminals: `MODEL: "model"`
KEYWORDS = {word for _, word in re.findall(r'^([A-Z]+): "([a-z]+)"$', GRAMMAR, re.M)}
STDLIB = sorted((ROOT / "archc" / "stdlib").glob("*.arch"))
DOCS = sorted((ROOT / "docs").glob("*.md")) + sorted((ROOT / "docs" / "catalogue").glob("*.md"))
FENCE = re.compile(r"^```arch[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
EXAMPLES = [(f"{p.relative_to(ROOT)}#{i}", body) for p in DOCS
            for i, body in enumerate(FENCE.findall(p.read_text(encoding="utf-8")))]
FILES = [(str(p.relative_to(ROOT)), p.read_text(encoding="utf-8")) for p in SPECS + STDLIB]


def _tokens(text: str) -> list[tuple[int, object, str]]:
    return list(LEXER.get_tokens_unprocessed(text))


def test_the_grammar_keywords_are_found():
    assert {"model", "block", "repeat", "input", "state", "not"} <= KEYWORDS
    assert len(EXAMPLES) >= 20, "the ```arch examples in docs/ were not found"


def test_lexer_keywords_are_the_grammars():
    assert set(arch_lexer.KEYWORDS) == KEYWORDS
    assert len(arch_lexer.KEYWORDS) == len(KEYWORDS)


def test_pygmentize_can_load_the_lexer_from_its_file():
    # what `pygmentize -l tools/arch_lexer.py:ArchLexer -x` does
    lexer = load_lexer_from_file(str(PATH), "ArchLexer")
    assert lexer.name == "Arch" and "*.arch" in lexer.filenames


@pytest.mark.parametrize("name,text", FILES + EXAMPLES, ids=[n for n, _ in FILES + EXAMPLES])
def test_no_error_tokens(name, text):
    bad = [(i, v) for i, t, v in _tokens(text) if t in Error]
    assert not bad, f"{name}: Error tokens at {bad[:5]}"
    assert "".join(v for _, _, v in _tokens(text)) == text


@pytest.mark.parametrize("name,text", FILES + EXAMPLES, ids=[n for n, _ in FILES + EXAMPLES])
def test_keywords_are_keywords(name, text):
    """Every keyword terminal the parser's lexer finds is a Keyword, and every Keyword the
    highlighter shows (constants and `shared` aside) is one of them."""
    lexed = {t.start_pos: str(t) for t in parser().lex(text) if t.type.lower() == str(t)}
    shown = {i: v for i, t, v in _tokens(text)
             if t in Keyword and t not in Keyword.Constant and t not in Keyword.Pseudo
             and t not in Keyword.Type}
    assert shown == lexed


def test_names_and_dims():
    toks = {v: t for _, t, v in _tokens("model m {\n  input ids: int64[batch, 8]\n"
                                        "  x = embed(ids, 4, 2) as e\n}\n")}
    assert toks["m"] in Name.Class and toks["int64"] in Keyword.Type
    assert toks["batch"] in Name.Variable and toks["embed"] in Name.Function
    assert toks["e"] in Name and toks["e"] not in Keyword
    shared = {v: t for _, t, v in _tokens("repeat 2 shared as shared_i { y = x }")}
    assert shared["shared"] in Keyword.Pseudo and shared["shared_i"] not in Keyword


# ---------------------------------------------------------------- the TextMate grammar
def _tm() -> dict:
    return json.loads(TM.read_text(encoding="utf-8"))


def test_textmate_grammar_is_valid_json_with_compilable_patterns():
    grammar = _tm()
    assert grammar["scopeName"] == "source.arch" and grammar["fileTypes"] == ["arch"]
    repo = grammar["repository"]
    for include in grammar["patterns"]:
        assert include["include"].lstrip("#") in repo, include

    def walk(rule):
        for key in ("match", "begin", "end"):
            if key in rule:
                re.compile(rule[key])  # Oniguruma reads these simple patterns the same way
        for inner in rule.get("patterns", []):
            walk(inner)
    for rule in repo.values():
        walk(rule)


def test_textmate_keywords_are_the_grammars():
    match = _tm()["repository"]["keyword"]["match"]
    inner = re.fullmatch(r"\\b\((.*)\)\\b", match)
    assert inner, match
    assert set(inner.group(1).split("|")) == KEYWORDS
    pattern = re.compile(match)
    assert pattern.fullmatch("repeat") and not pattern.search("input_ids")
