"""Bad specs -> rendered diagnostics, golden-tested; the CLI exits 1 with no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import GOLDEN, ROOT, check_golden

import archc
from archc.diagnostics import ArchcError

BAD = sorted((GOLDEN / "errors").glob("*.arch"))


def _render(path) -> str:
    rel = path.relative_to(ROOT).as_posix()
    try:
        module = archc.parse(path.read_text(), rel)
        archc.lower(module)
    except ArchcError as e:
        return e.render()
    pytest.fail(f"{rel} compiled without an error")


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_rendered_diagnostics(path):
    check_golden(path.with_suffix(".stderr"), _render(path))


def test_all_semantic_errors_are_collected():
    text = _render(GOLDEN / "errors" / "unknown_name_and_option.arch")
    assert text.count("error[") == 4  # head, causl, d_modle, gelu_tan: all of them, not the first


@pytest.mark.parametrize("path", BAD[:3] + BAD[-3:], ids=lambda p: p.stem)
def test_cli_exits_1_without_traceback(path):
    out = subprocess.run([sys.executable, "-m", "archc", "check", str(path)], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and out.stderr.startswith("error[")


def test_missing_file_is_a_diagnostic():
    out = subprocess.run([sys.executable, "-m", "archc", "check", "nope.arch"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1 and "no such file" in out.stderr and "Traceback" not in out.stderr


def test_nothing_in_a_spec_is_executed():
    # Python-looking text is a syntax error, never evaluated.
    src = 'model m {\n  let d = __import__("os").system("echo pwned")\n}\n'
    with pytest.raises(ArchcError) as e:
        archc.lower(archc.parse(src, "evil.arch"))
    assert "evil.arch:2" in str(e.value)
