"""The `serving` statement: facts a server needs that the graph does not carry (archc/serving.py).
It parses and formats like `let`, its values are compile-time expressions that may use the
model's `let`s, lowering checks them (E0601, at the value's span) and records them in
`graph.meta["serving"]` without changing the IR or the ONNX, it is allowed only directly in a
model body, and the `# serving:` comment it replaces is refused with the statement to write.
The genai round trip through an imported checkpoint is in tests/test_serving.py."""

from __future__ import annotations

import pytest
from conftest import ROOT

import archc
from archc.backends.onnx_export import model_bytes
from archc.diagnostics import ArchcError
from archc.fmt import format_text
from archc.frontend import ast
from archc.ir.printer import print_graph
from archc.lower import lower
from archc.serving import legacy_comments, statement

BODY = "  input x: float32[batch, 4]\n  output y = x * 2\n}\n"


def _spec(*lines: str) -> str:
    return "model m {\n" + "".join(f"  {line}\n" for line in lines) + BODY


def _errors(text: str, path: str = "s.arch") -> str:
    with pytest.raises(ArchcError) as e:
        lower(archc.parse(text, path))
    return str(e.value)


# ---------------------------------------------------------------- syntax and layout
def test_parses_to_a_serving_node_like_a_let():
    m = archc.parse(_spec("let n = 4", "serving eos_token_id = [2, 3], context_length = n"))
    let, serving = m.models[0].body[:2]
    assert isinstance(let, ast.Let) and isinstance(serving, ast.Serving)
    assert [k for k, _, _ in serving.bindings] == ["eos_token_id", "context_length"]
    assert isinstance(serving.bindings[0][1], ast.ListExpr)
    assert isinstance(serving.bindings[1][1], ast.Name)


def test_fmt_lays_it_out_and_round_trips():
    messy = ("model m {   let n=4\n serving bos_token_id=1,eos_token_id=[2 ,32000],"
             "context_length=n*1024   # facts\ninput x: float32[batch, 4]\n output y = x * 2 }\n")
    want = _spec("let n = 4",
                 "serving bos_token_id = 1, eos_token_id = [2, 32000], context_length = n * 1024"
                 "  # facts")
    assert format_text(messy) == want and format_text(want) == want


def test_fmt_breaks_a_long_statement_like_a_let():
    ids = ", ".join(str(128000 + i) for i in range(12))
    out = format_text(_spec(f"serving bos_token_id = 1, eos_token_id = [{ids}], "
                            "context_length = 131072"))
    lines = out.splitlines()
    assert all(len(line) <= 100 for line in lines) and format_text(out) == out
    assert lines[1].startswith("  serving bos_token_id = 1, eos_token_id = [")
    assert archc.parse(out).models[0].body[0].bindings[2][0] == "context_length"


def test_serving_is_a_keyword():
    with pytest.raises(ArchcError, match="unexpected `serving`"):
        archc.parse("model m { let serving = 3 }")
    m = archc.parse("model m { let serving_dim = 3, servings = 2 }")  # prefixes are names
    assert [n for n, _, _ in m.models[0].body[0].bindings] == ["serving_dim", "servings"]


@pytest.mark.parametrize("text", [
    "block f(x) {\n  serving eos_token_id = 2\n  return x\n}\n",
    "model m {\n  if true { serving eos_token_id = 2 }\n" + BODY[2:],
    "model m {\n  repeat 2 as i {\n    serving eos_token_id = 2\n  }\n" + BODY[2:],
    "model m {\n  block g(x) {\n    serving eos_token_id = 2\n    return x\n  }\n" + BODY[2:],
    "serving eos_token_id = 2\n",
])
def test_only_directly_in_a_model_body(text):
    with pytest.raises(ArchcError) as e:
        archc.parse(text, "s.arch")
    err = str(e.value)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "serving" in t)
    col = text.splitlines()[line - 1].index("serving") + 1
    assert "error[E0001]: `serving` is allowed only directly in a `model` body" in err
    assert f"s.arch:{line}:{col}\n" in err and "^^^^^^^ not allowed here" in err


# ---------------------------------------------------------------- lowering
def test_values_are_compile_time_expressions_over_lets():
    g = lower(archc.parse(_spec("let max_positions = 2 * 1024, eos = 7",
                                "serving bos_token_id = 1, eos_token_id = [eos, eos + 1]",
                                "serving pad_token_id = 0, context_length = max_positions")))
    assert g.meta["serving"] == {"bos_token_id": 1, "eos_token_id": [7, 8], "pad_token_id": 0,
                                 "context_length": 2048}
    assert lower(archc.parse(_spec())).meta["serving"] == {}


def test_the_statement_changes_no_ir_and_no_onnx():
    text = (ROOT / "specs" / "llama_tiny.arch").read_text()
    edited = text.replace("model llama_tiny {\n", "model llama_tiny {\n  serving bos_token_id = "
                          "1, eos_token_id = [2, 3], context_length = 4 * 16\n")
    assert edited != text
    graphs = []
    for spec in (text, edited):
        plain = lower(archc.parse(spec))
        full = archc.optimize(lower(archc.parse(spec)), 2)
        onnx = model_bytes(archc.export_onnx(full, archc.init_params(full, seed=1)))
        graphs.append((print_graph(plain), print_graph(full), onnx))
    assert graphs[0] == graphs[1]


def test_unknown_fact_has_a_did_you_mean():
    err = _errors(_spec("serving eos_token_id = 2, context_lenght = 64"))
    assert "error[E0601]: unknown serving fact `context_lenght`" in err
    assert "s.arch:2:29\n" in err and "^^^^^^^^^^^^^^ not a serving fact" in err
    assert "help: did you mean `context_length`?" in err
    err = _errors(_spec("serving vocab = 64"))
    assert "the facts are bos_token_id, eos_token_id, pad_token_id, context_length" in err


def test_a_fact_given_twice():
    err = _errors(_spec("serving eos_token_id = 2", "let n = 3", "serving eos_token_id = n"))
    assert "error[E0601]: serving fact `eos_token_id` is given twice" in err
    assert "s.arch:4:11\n" in err and "again here" in err
    assert "note: first given at s.arch:2:11" in err


@pytest.mark.parametrize("value, shown, want, col, width", [
    ("-1", "-1", "a token id", 26, 2),
    ("1.5", "1.5", "a token id", 26, 3),
    ("true", "true", "a token id", 26, 4),
    ("[]", "[]", "a token id", 26, 2),
    ("[2, -3, 4]", "[2, -3, 4]", "a token id", 30, 2),  # the bad id of a list
    ('"2"', '"2"', "a token id", 26, 3),
    ("2 ** 31", "2147483648", "a token id", 26, 7),  # genai and Triton read int32
])
def test_a_bad_token_id_is_pointed_at(value, shown, want, col, width):
    err = _errors(_spec(f"serving eos_token_id = {value}"))
    assert f"error[E0601]: serving fact `eos_token_id` is {shown}, not {want} (an integer in " \
        "0..2^31-1) or a non-empty list of them" in err
    assert f"s.arch:2:{col}\n" in err and "  |" + " " * col + "^" * width + " " in err


@pytest.mark.parametrize("value, shown", [("0", "0"), ("n - 8", "-4"), ("[64]", "[64]"),
                                          ("z", "tensor"), ("dim(z, 0)", "batch"),
                                          ("2 ** 100", "1267650600228229401496703205376")])
def test_a_bad_context_length(value, shown):
    err = _errors(_spec("let n = 4", "input z: float32[batch, 4]",
                        f"serving context_length = {value}"))
    assert "error[E0601]: serving fact `context_length` is" in err
    assert "not a positive integer" in err and "s.arch:4:28\n" in err
    assert shown in err


def test_an_unknown_name_in_a_value_is_reported_once():
    err = _errors(_spec("serving eos_token_id = eos"))
    assert "error[E0100]: unknown name `eos`" in err and "E0601" not in err


# ---------------------------------------------------------------- the old comment
def test_the_old_comment_is_refused_with_the_statement_to_write():
    text = '# serving: {"bos_token_id": 1, "context_length": 4096, "eos_token_id": [2, 32000]}\n' \
        + _spec()
    err = _errors(text)
    assert "error[E0601]: the `# serving:` comment is no longer read" in err
    assert "s.arch:1:1\n" in err and "a comment carries no meaning" in err
    assert "help: replace it with `serving bos_token_id = 1, context_length = 4096, " \
        "eos_token_id = [2, 32000]` in the body of `model m`" in err
    fixed = text.replace(text.splitlines()[0], "").replace(
        "model m {\n", "model m {\n  serving bos_token_id = 1, context_length = 4096, "
        "eos_token_id = [2, 32000]\n")
    assert lower(archc.parse(fixed)).meta["serving"]["eos_token_id"] == [2, 32000]


def test_the_old_comment_refused_even_when_malformed_or_indented():
    diags = legacy_comments("s.arch", "model m {\n  # serving: {oops\n}\n", "m")
    assert len(diags) == 1 and diags[0].span.start == len("model m {\n  ")
    assert "a statement such as `serving eos_token_id = 2, context_length = 4096`" in \
        diags[0].help
    assert legacy_comments("s.arch", "# serves: {}\nx = 1  # serving: {}\n", "m") == []
    assert statement({"eos_token_id": {"a": 1}}) is None and statement({}) is None


# ---------------------------------------------------------------- past the context length
DECODER = """model ctx {
  let vocab = 50, d = 16, heads = 2
  input input_ids: int64[batch, seq]
  input attention_mask: int64[batch, seq]
  serving eos_token_id = 2, context_length = 6
  x = embed(input_ids, vocab, d) as wte
  x = x + attention(rms_norm(x) as n1, heads, causal, mask = attention_mask, rope = rope()) as attn
  output logits = lm_head(rms_norm(x) as nf, vocab)
}
"""


@pytest.mark.parametrize("steps, warned", [(3, False), (5, True)])
def test_generating_past_the_context_length_warns_once(steps, warned):
    """A rotary model runs on past `context_length` (as transformers' generate, which warns):
    one warning when the session first holds more tokens than that, none up to it."""
    import warnings

    import numpy as np

    from archc.kvcache import generate
    from archc.weights import ArchcWarning

    graph = lower(archc.parse(DECODER, "ctx.arch"), cache=True)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = generate(graph, archc.init_params(graph), np.array([[1, 2, 3]]), steps)
    assert out.shape == (1, 3 + steps)
    got = [str(w.message) for w in seen if issubclass(w.category, ArchcWarning)]
    assert got == (["warning[E0601]: 7 tokens are past the model's context length (6, from "
                    "its `serving` statement)\n  = help: the model runs on, on positions it "
                    "was not trained for\n"] if warned else [])
