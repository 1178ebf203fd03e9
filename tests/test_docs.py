"""docs/language.md stays true to the code: it names every primitive, intrinsic, library block
and language error code, and every ```arch example that defines a model parses and lowers.
Fragments in the reference are fenced as ```text, so this test skips them."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT

import archc
from archc.lower import lower, stdlib
from archc.lower.layers import LAYERS

DOC = ROOT / "docs" / "language.md"
# the reference, plus the catalogue pages it links (docs/catalogue/*.md)
TEXT = "\n".join(p.read_text(encoding="utf-8") for p in
                 [DOC, *sorted((ROOT / "docs" / "catalogue").glob("*.md"))])
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
MODEL = re.compile(r"^\s*model\s+\w+\s*\{", re.M)

# Inline code spans outside the fenced blocks: `attention(x, heads, ...)`.
SPANS = re.findall(r"`([^`\n]+)`", FENCE.sub("", TEXT))
LIBRARY_BLOCKS = sorted({b.name for m in stdlib() for b in m.blocks})
EXAMPLES = [(i, body) for i, (tag, body) in enumerate(FENCE.findall(TEXT))
            if tag == "arch" and MODEL.search(body)]


def _documented(name: str) -> bool:
    call = re.compile(rf"(?<![\w.]){re.escape(name)}\(")
    return any(call.search(span) for span in SPANS)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_every_primitive_is_documented(name):
    assert _documented(name), f"docs/language.md has no code span `{name}(...)`"


@pytest.mark.parametrize("name", LIBRARY_BLOCKS)
def test_every_library_block_is_documented(name):
    # Library block names are global: one name, one block.
    assert sum(b.name == name for m in stdlib() for b in m.blocks) == 1, f"`{name}` twice"
    assert _documented(name), f"docs/language.md has no code span `{name}(...)`"


def test_every_language_error_code_is_documented():
    sources = [p for d in ("lower", "frontend") for p in (ROOT / "archc" / d).glob("*.py")]
    codes = {c for p in sources
             for c in re.findall(r'"(E0\d{3})"', p.read_text(encoding="utf-8"))}
    assert codes, "no error codes found: has the layout changed?"
    missing = sorted(c for c in codes if f"| {c} |" not in TEXT)
    assert not missing, f"docs/language.md §6 does not list {missing}"


def test_the_examples_are_found():
    assert len(EXAMPLES) >= 10, "the ```arch examples were not found: has the fence style changed?"


@pytest.mark.parametrize("index,body", EXAMPLES, ids=[f"block{i}" for i, _ in EXAMPLES])
def test_arch_examples_lower(index, body):
    graph = lower(archc.parse(body, f"docs/language.md#block{index}"))
    assert graph.outputs
