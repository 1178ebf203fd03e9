from __future__ import annotations

import pytest
from conftest import ROOT, SPECS

import archc
from archc.diagnostics import ArchcError
from archc.frontend import ast


def test_grammar_copy_is_identical():
    canonical = (ROOT / "archc" / "frontend" / "arch.lark").read_text()
    assert (ROOT / "grammar" / "arch.lark").read_text() == canonical


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_specs_parse_with_spans(spec):
    module = archc.parse_file(spec)
    assert len(module.models) == 1
    text = spec.read_text()
    for stmt in module.models[0].body:
        assert text[stmt.span.start:stmt.span.end].strip()  # spans point into the source


def test_expression_precedence_and_flags():
    m = archc.parse("model m { let a = 1 + 2 * 3 ** 2, b = -2 ** 2, c = not 1 < 2 and true }")
    (let,) = m.models[0].body
    a, b, c = (e for _, e, _ in let.bindings)
    assert isinstance(a, ast.BinOp) and a.op == "+" and a.right.op == "*"
    assert a.right.right.op == "**"
    assert isinstance(b, ast.UnaryOp) and b.operand.op == "**"  # -(2**2), as in Python
    assert c.op == "and" and c.left.op == "not"


def test_every_statement_form_parses():
    src = """
    block f(x, n) { return x * n }
    model m {
      let k = 2
      input x: float32[batch, 4]
      repeat 3 shared as s { if s == 0 { x = f(x, k) } else if s == 1 { x = -x } else { x = x } }
      output y = f(x, n = 3) as g
    }"""
    m = archc.parse(src)
    kinds = [type(s).__name__ for s in m.models[0].body]
    assert kinds == ["Let", "Input", "Repeat", "Output"] and m.blocks[0].params == ("x", "n")
    rep = m.models[0].body[2]
    assert rep.shared and rep.var == "s" and isinstance(rep.body[0].orelse[0], ast.If)
    g = archc.compile(m, level=0)
    assert list(g.outputs) == ["y"] and len(g.params) == 0


def test_keywords_are_not_names():
    with pytest.raises(ArchcError, match="unexpected"):
        archc.parse("model m { let repeat = 3 }")
    m = archc.parse("model m { let model_dim = 3, input_size = 2, shared = 1 }")  # prefixes ok
    assert [n for n, _, _ in m.models[0].body[0].bindings] == ["model_dim", "input_size", "shared"]
