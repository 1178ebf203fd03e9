"""Hostile command lines: bad arguments are usage errors (exit 2) with a message, sizes are
checked against the ARCHC_MAX_BYTES budget before anything is allocated, spec files are read
safely, and an unexpected exception is an internal-error diagnostic, never a traceback."""

from __future__ import annotations

import pytest
from conftest import ROOT

import archc
from archc.cli import main

LLAMA = str(ROOT / "specs" / "llama_tiny.arch")


@pytest.mark.parametrize(("argv", "message"), [
    (["run", LLAMA, "--batch", "-1", "--out", "o.npz"], "--batch: must be at least 1, got -1"),
    (["run", LLAMA, "--seq", "0", "--out", "o.npz"], "--seq: must be at least 1, got 0"),
    (["run", LLAMA, "--seq", "x", "--out", "o.npz"], "--seq: `x` is not an integer"),
    (["run", LLAMA, "--seed", "-3", "--out", "o.npz"], "--seed: must be at least 0"),
    (["run", LLAMA, "--incremental", "0", "--out", "o.npz"], "--incremental: must be at least"),
    (["generate", LLAMA, "--ids", "1", "--steps", "-1"], "--steps: must be at least 0"),
    (["generate", LLAMA, "--ids", "1", "--start", "-1"], "--start: must be at least 0"),
])
def test_bad_numbers_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def _big_spec(tmp_path, vocab: int) -> str:
    text = (ROOT / "specs" / "llama_tiny.arch").read_text().replace("vocab = 1024",
                                                                   f"vocab = {vocab}")
    (tmp_path / "big.arch").write_text(text)
    return str(tmp_path / "big.arch")


def test_huge_parameters_are_refused_before_allocating(tmp_path, capsys):
    spec = _big_spec(tmp_path, 10**12)
    assert main(["stats", spec]) == 0  # counting needs no memory
    capsys.readouterr()
    assert main(["run", spec, "--seq", "2", "--out", str(tmp_path / "o.npz")]) == 1
    err = capsys.readouterr().err
    assert "error[E0331]: the run's largest value, float32[1, 2, 1000000000000]" in err
    assert "TiB, over the limit of 16 GiB" in err and "set ARCHC_MAX_BYTES to raise" in err
    assert main(["compile", spec, "-o", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    # an export draws one tensor at a time: the largest one is what must fit
    assert "error[E0331]: the random init of parameter `" in err and "1,863 TiB" in err
    with pytest.raises(archc.ArchcError, match="E0331"):
        archc.init_params(archc.compile(spec, level=0))


def test_huge_activations_and_random_inputs_are_refused(tmp_path, capsys):
    out = str(tmp_path / "o.npz")
    assert main(["run", LLAMA, "--seq", "1000000", "--out", out]) == 1
    err = capsys.readouterr().err
    assert "the run's largest value, float32[1, 8, 1000000, 1000000]" in err
    assert main(["run", LLAMA, "--batch", str(10**12), "--out", out]) == 1
    assert "random inputs of batch 1000000000000" in capsys.readouterr().err


def test_the_budget_is_an_env_var(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "o.npz")
    monkeypatch.setenv("ARCHC_MAX_BYTES", "1M")
    assert main(["run", LLAMA, "--seq", "2", "--out", out]) == 1
    assert "over the limit of 1 MiB" in capsys.readouterr().err
    monkeypatch.setenv("ARCHC_MAX_BYTES", "64G")
    assert main(["run", LLAMA, "--seq", "2", "--out", out]) == 0
    monkeypatch.setenv("ARCHC_MAX_BYTES", "lots")
    assert main(["run", LLAMA, "--seq", "2", "--out", out]) == 1
    assert "`ARCHC_MAX_BYTES=lots` is not a size" in capsys.readouterr().err


def test_spec_files_are_read_safely(tmp_path, capsys):
    bad = tmp_path / "bad.arch"
    bad.write_bytes(b"model m {\n  let d = 4\xff\n}\n")
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "error[E0006]: `" in err and "is not UTF-8 text: byte 0xff" in err
    assert f"--> {bad}:2:12" in err and "Traceback" not in err
    assert main(["check", str(tmp_path)]) == 1
    assert "it is a directory, not a spec file" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "missing.arch")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_an_unexpected_exception_is_an_internal_error_not_a_traceback(monkeypatch, capsys):
    import archc.cli

    def boom(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(archc.cli, "cmd_check", boom)
    monkeypatch.delenv("ARCHC_DEBUG", raising=False)
    assert main(["check", LLAMA]) == 70
    err = capsys.readouterr().err
    assert err.startswith("error[E0900]: internal error: RuntimeError: a bug")
    assert "Traceback" not in err and "ARCHC_DEBUG=1" in err
    monkeypatch.setenv("ARCHC_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(["check", LLAMA])


def test_out_of_memory_is_a_diagnostic(monkeypatch, capsys):
    import archc.cli

    def oom(args):
        raise MemoryError()

    monkeypatch.setattr(archc.cli, "cmd_check", oom)
    assert main(["check", LLAMA]) == 1
    assert "error[E0332]: out of memory" in capsys.readouterr().err
