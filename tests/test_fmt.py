"""`archc fmt`: the bundled specs are in the canonical layout; formatting is idempotent, keeps
every comment, and changes neither the AST (spans aside) nor the lowered IR, on the bundled
files and on hostile layouts; the command's --check, --diff and in-place modes."""

from __future__ import annotations

import re
from itertools import pairwise

import pytest
from conftest import ROOT, SPECS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import archc
from archc.cli import main
from archc.diagnostics import ArchcError
from archc.fmt import LIMIT, format_text
from archc.frontend.parser import parser
from archc.ir.printer import print_graph
from archc.lower import lower

STDLIB = sorted((ROOT / "archc" / "stdlib").glob("*.arch"))


def _read(path) -> str:
    return path.read_text(encoding="utf-8")


def _ir(text: str, path) -> list[str]:
    module = archc.parse(text, str(path))  # the real path: imports are relative to it
    return [print_graph(lower(module, m.name)) for m in module.models]


def _gaps(text: str):
    """The tokens, and the text between each token and the next."""
    toks = list(parser().lex(text))
    return toks, [text[a.end_pos:b.start_pos] for a, b in pairwise(toks)]


def _rebuild(text: str, toks, gaps: list[str]) -> str:
    out = [text[:toks[0].start_pos]]
    for tok, gap in zip(toks, [*gaps, ""], strict=True):
        out += [str(tok), gap]
    return "".join(out) + text[toks[-1].end_pos:]


def _ast(text: str) -> str:
    """The AST's repr with spans and source left out: independent of `archc.fmt._shape`."""
    module = archc.parse(text, "spec.arch")
    return re.sub(r"(func_|dtype_)?span=Span\([^)]*\),? ?|Span\([^)]*\)", "",
                  repr((module.blocks, module.models, module.imports)))


def _one_line(text: str) -> str:
    """The same program with no comments, on one line."""
    return " ".join(str(t) for t in parser().lex(text)) + "\n"


def _joinable(a, b) -> bool:
    return [str(t) for t in parser().lex(f"{a}{b}")] == [str(a), str(b)]


# ---------------------------------------------------------------- the bundled files
def test_bundled_specs_and_the_library_are_formatted(capsys):
    assert main(["fmt", "--check", *map(str, SPECS), *map(str, STDLIB)]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("path", STDLIB, ids=[p.stem for p in STDLIB])
def test_stdlib_formats_idempotently_to_the_same_program(path):
    text = _read(path)
    # formatting the library again changes nothing, and the program is the same as written
    once = format_text(text, str(path))
    assert format_text(once, str(path)) == once
    assert _ast(once) == _ast(text)
    assert re.findall(r"#[^\n]*", text) == [c.rstrip() for c in re.findall(r"#[^\n]*", once)]


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_one_line_layout_gives_the_same_program_and_ir(path):
    text = _read(path)
    flat = format_text(_one_line(text))
    assert format_text(flat) == flat
    assert _ast(flat) == _ast(text)
    assert _ir(flat, path) == _ir(text, path)


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_lines_fit_unless_a_string_or_comment_is_too_long(path):
    for line in _read(path).splitlines():
        assert len(line) <= LIMIT or '"' in line or "#" in line, line


# ---------------------------------------------------------------- hostile layouts
@pytest.mark.parametrize("path", [SPECS[0], STDLIB[0], *SPECS[-3:]], ids=lambda p: p.stem)
def test_a_comment_in_every_gap_is_kept(path):
    text = _read(path)
    toks, gaps = _gaps(text)
    noisy = _rebuild(text, toks, [f"{g} # c{i}\n" for i, g in enumerate(gaps)])
    out = format_text(noisy)
    assert format_text(out) == out
    assert _ast(out) == _ast(text)
    assert re.findall(r"# c\d+", out) == [f"# c{i}" for i in range(len(gaps))]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SPECS), st.randoms(use_true_random=False), st.booleans())
def test_whitespace_perturbations_format_to_the_same_text(path, rnd, crlf):
    """Spaces and tabs between tokens, more blank lines where there was one, CRLF: the
    canonical text does not change."""
    text = _read(path)
    toks, gaps = _gaps(text)
    noisy = []
    for a, b, gap in zip(toks, toks[1:], gaps, strict=False):
        if "\n" not in gap:
            choices = [" ", "\t", "  \t "] + ([""] if _joinable(a, b) else [])
            gap = rnd.choice(choices)
        elif gap.count("\n") > 1 and "#" not in gap:
            gap = "\n" * rnd.randint(2, 5) + "\t" * rnd.randint(0, 2)
        else:
            gap = re.sub(r"(?m)^[ ]+", lambda m: rnd.choice(["", "\t", "      "]), gap)
        noisy.append(gap)
    noisy_text = _rebuild(text, toks, noisy)
    if crlf:
        noisy_text = noisy_text.replace("\n", "\r\n")
    assert format_text(noisy_text) == text


def test_long_calls_break_at_arguments():
    args = ", ".join(f"arg_{i} = {i}" for i in range(40))
    text = f"model m {{ input x: float32[b, t, 8]\n output y = f(x, g(x, {args}), {args}) }}\n"
    out = format_text(text)
    assert format_text(out) == out and _ast(out) == _ast(text)
    lines = out.splitlines()
    assert all(len(line) <= LIMIT for line in lines) and len(lines) > 6
    assert lines[3].startswith(" " * len("  output y = f(x, g(")), lines[3]  # visual indent


def test_layout_rules():
    text = ("block  f(x,y=1){\n\n\n  a=x[ : , -1 : ]*-y   # why\n  if a>0 {return a}\n"
            "  if a > 0 {\n    return -a\n  }\n  b = - (a ** 2) // 3 % 2 @ x\n"
            "  return b\n\n}\nmodel m{input ids :int64[ b , s ]\n"
            "output o=f( ids ) as f1}\n")
    assert format_text(text) == (
        "block f(x, y = 1) {\n"
        "  a = x[:, -1:] * -y  # why\n"
        "  if a > 0 { return a }\n"  # written on one line: kept on one line
        "  if a > 0 {\n    return -a\n  }\n"  # written over lines: kept over lines
        "  b = -(a ** 2) // 3 % 2 @ x\n"
        "  return b\n"
        "}\n"
        "\n"
        "model m {\n"
        "  input ids: int64[b, s]\n"
        "  output o = f(ids) as f1\n"
        "}\n")


SERVING = ("model m {\n  let n = 4\n  serving bos_token_id = 1, eos_token_id = [2, 3],"
           " context_length = n * 1024  # facts\n\n  input x: float32[b, 4]\n"
           "  output y = x\n}\n")


def test_serving_statement_layout():
    """`serving` is laid out like `let`: one statement per line, spaces around `=` and after
    commas, a long one broken after a comma and aligned inside the open bracket, comments kept."""
    messy = ("model m{let n=4\n serving bos_token_id=1 ,eos_token_id=[ 2,3 ],"
             "context_length=n*1024# facts\n\n\n input x :float32[b,4] output y=x}")
    assert format_text(messy) == SERVING and format_text(SERVING) == SERVING
    ids = ", ".join(str(100_000 + i) for i in range(14))
    out = format_text(f"model m {{ serving eos_token_id = [{ids}], context_length = 8 "
                      "input x: float32[b, 4] output y = x }")
    lines = out.splitlines()
    assert lines[1].startswith("  serving eos_token_id = [") and lines[2].startswith(" " * 26 + "1")
    assert all(len(line) <= LIMIT for line in lines) and format_text(out) == out


def test_a_comment_in_every_gap_of_a_serving_statement_is_kept():
    toks, gaps = _gaps(SERVING)
    noisy = _rebuild(SERVING, toks, [f"{g} # c{i}\n" for i, g in enumerate(gaps)])
    out = format_text(noisy)
    assert format_text(out) == out and _ast(out) == _ast(SERVING)
    assert re.findall(r"# c\d+", out) == [f"# c{i}" for i in range(len(gaps))]


def test_one_line_if_that_does_not_fit_is_laid_out_over_lines():
    long = "x" * 90
    text = f"block f(x) {{\n  if x {{ y = {long} }} else {{ y = x }}\n  return y\n}}\n"
    assert format_text(text) == (f"block f(x) {{\n  if x {{\n    y = {long}\n  }} else {{\n"
                                 f"    y = x\n  }}\n  return y\n}}\n")


def test_trailing_comments_of_consecutive_lines_share_a_column():
    text = ("block f(x) {\n  a = x # one\n  bb = x * 2     # two\n\n  c = a # alone\n"
            "  return c + bb\n}\n")
    assert format_text(text) == ("block f(x) {\n  a = x       # one\n  bb = x * 2  # two\n\n"
                                 "  c = a  # alone\n  return c + bb\n}\n")


def test_comments_and_empty_files():
    assert format_text("") == ""
    assert format_text("  \n\n# only a comment   \n\n\n# and another\n") == (
        "# only a comment\n\n# and another\n")
    assert format_text("\ufeffmodel m { input x: f32[a] output y = x }") == (
        "model m {\n  input x: f32[a]\n  output y = x\n}\n")


# ---------------------------------------------------------------- the command
MESSY = "model m{input x:float32[b,t,4]\noutput y=x+1}\n"
CLEAN = "model m {\n  input x: float32[b, t, 4]\n  output y = x + 1\n}\n"


def test_rewrites_in_place_only_when_changed(tmp_path, capsys):
    messy, clean = tmp_path / "messy.arch", tmp_path / "clean.arch"
    messy.write_text(MESSY)
    clean.write_text(CLEAN)
    before = clean.stat().st_mtime_ns
    assert main(["fmt", str(messy), str(clean)]) == 0
    assert messy.read_text() == CLEAN
    assert clean.stat().st_mtime_ns == before
    assert capsys.readouterr().out == f"reformatted {messy}\n"
    assert main(["fmt", str(messy)]) == 0
    assert capsys.readouterr().out == ""


def test_check_names_the_unformatted_files(tmp_path, capsys):
    messy, clean = tmp_path / "messy.arch", tmp_path / "clean.arch"
    messy.write_text(MESSY)
    clean.write_text(CLEAN)
    assert main(["fmt", "--check", str(messy), str(clean)]) == 1
    assert capsys.readouterr().out == f"would reformat {messy}\n"
    assert messy.read_text() == MESSY
    assert main(["fmt", "--check", str(clean)]) == 0


def test_diff_prints_a_unified_diff_and_changes_nothing(tmp_path, capsys):
    messy = tmp_path / "messy.arch"
    messy.write_text(MESSY)
    assert main(["fmt", "--diff", str(messy)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"--- {messy}\n+++ {messy} (formatted)\n@@")
    assert "-output y=x+1}\n" in out and "+  output y = x + 1\n" in out
    assert messy.read_text() == MESSY
    assert main(["fmt", "--diff", "--check", str(messy)]) == 1
    capsys.readouterr()
    messy.write_text(MESSY.rstrip("\n"))  # the diff marks a last line with no newline
    assert main(["fmt", "--diff", str(messy)]) == 0
    assert "-output y=x+1}\n\\ No newline at end of file\n+model m {\n" in capsys.readouterr().out


def test_a_file_that_does_not_parse_is_refused_and_left_alone(tmp_path, capsys):
    bad, messy = tmp_path / "bad.arch", tmp_path / "messy.arch"
    bad.write_bytes(b"model m {\r\n  input x float32[b]\r\n}\r\n")
    messy.write_text(MESSY)
    assert main(["fmt", str(bad), str(messy)]) == 1
    err = capsys.readouterr().err
    assert "error[E0001]: unexpected `float32`" in err
    assert f"--> {bad}:2:11" in err and "Traceback" not in err
    assert bad.read_bytes() == b"model m {\r\n  input x float32[b]\r\n}\r\n"
    assert messy.read_text() == CLEAN  # the other files are still formatted
    with pytest.raises(ArchcError):
        format_text("model m { x = }")
    assert main(["fmt", str(tmp_path / "missing.arch")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_a_symlink_is_written_through(tmp_path):
    target, link = tmp_path / "real.arch", tmp_path / "link.arch"
    target.write_text(MESSY)
    link.symlink_to(target)
    assert main(["fmt", str(link)]) == 0
    assert link.is_symlink() and target.read_text() == CLEAN


def test_output_that_would_change_the_program_is_refused(tmp_path, monkeypatch, capsys):
    # the safety net behind every run: the output must parse to the input's AST
    import archc.fmt

    monkeypatch.setattr(archc.fmt._Printer, "run", lambda self: CLEAN.replace("+ 1", "+ 2"))
    messy = tmp_path / "messy.arch"
    messy.write_text(MESSY)
    assert main(["fmt", str(messy)]) == 1
    assert "error[E0007]: `archc fmt` would change the meaning" in capsys.readouterr().err
    assert messy.read_text() == MESSY


def test_the_docs_examples_are_formatted():
    """Every ```arch block in the README and docs is in the canonical layout."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    blocks = [(p, b) for p in docs for b in re.findall(r"```arch\n(.*?)```", _read(p), re.S)]
    assert len(blocks) > 20
    for path, block in blocks:
        assert format_text(block, str(path)) == block, f"{path}:\n{block}"
