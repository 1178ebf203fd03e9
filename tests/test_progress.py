"""Progress bars show on a terminal and nowhere else: a pipe, a CI log or ARCHC_PROGRESS=0
get nothing."""

from __future__ import annotations

import io
import sys

import pytest
from conftest import ROOT

from archc.cli import main

LLAMA = str(ROOT / "specs" / "llama_tiny.arch")
LLAMA_HF = ROOT / "tests" / "fixtures" / "hf" / "llama"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal(monkeypatch):
    """A terminal as stderr. pytest's capture sets sys.stderr again after fixtures run, so
    the test calls `terminal()` in its body to put this one in place."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("ARCHC_PROGRESS", raising=False)
    err = Terminal()
    return lambda: (monkeypatch.setattr(sys, "stderr", err), err)[1]


def _generate() -> int:
    return main(["generate", LLAMA, "--ids", "1,2,3", "--steps", "5"])


def test_generation_shows_a_bar_on_a_terminal(terminal):
    err = terminal()
    assert _generate() == 0
    assert "generating:   0%" in err.getvalue() and "0/5" in err.getvalue()


def test_pipes_ci_and_the_switch_stay_quiet(monkeypatch, capsys):
    monkeypatch.delenv("CI", raising=False)
    assert _generate() == 0  # capsys: stderr is not a terminal
    assert capsys.readouterr().err == ""
    for var, value in (("CI", "true"), ("ARCHC_PROGRESS", "0")):
        with monkeypatch.context() as m:
            m.setenv(var, value)
            err = Terminal()
            m.setattr(sys, "stderr", err)
            assert _generate() == 0
            assert err.getvalue() == ""


def test_checkpoint_conversion_and_external_export_show_bytes(terminal, tmp_path, monkeypatch):
    err = terminal()
    assert main(["import-hf", str(LLAMA_HF), "-o", str(tmp_path / "m")]) == 0
    assert "converting weights" in err.getvalue()
    monkeypatch.setenv("ARCHC_EXTERNAL_DATA_BYTES", "1000")
    assert main(["compile", LLAMA, "-o", str(tmp_path / "m.onnx")]) == 0
    assert "writing m.onnx.data" in err.getvalue()
