"""Atomic outputs: a failed write leaves the previous outputs byte-identical (and no temporary
files), a set of files (encoder + decoder, spec + weights) is replaced whole or not at all,
symlinks are replaced rather than written through, and modes are kept."""

from __future__ import annotations

import errno
import os
import stat

import numpy as np
import pytest
from conftest import ROOT

from archc import files
from archc.cli import main

LLAMA = str(ROOT / "specs" / "llama_tiny.arch")
T5 = ROOT / "tests" / "fixtures" / "hf" / "t5"
LLAMA_HF = ROOT / "tests" / "fixtures" / "hf" / "llama"


def _full_disk(monkeypatch, after: int = 0):
    """Make the (after+1)-th fsync of archc.files fail as a full disk would."""
    calls = []

    def fsync(fd):
        calls.append(fd)
        if len(calls) > after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", fsync)


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_compile_on_a_full_disk_keeps_the_old_model(tmp_path, monkeypatch, capsys):
    out = tmp_path / "m.onnx"
    assert main(["compile", LLAMA, "-o", str(out)]) == 0
    before = _snapshot(tmp_path)
    _full_disk(monkeypatch)
    assert main(["compile", LLAMA, "-o", str(out), "--seed", "3"]) == 1
    err = capsys.readouterr().err
    assert f"cannot write `{out}`: no space left on device" in err
    assert _snapshot(tmp_path) == before  # byte-identical, no temporary left behind


def test_run_out_on_a_full_disk_keeps_the_old_outputs(tmp_path, monkeypatch, capsys):
    out = tmp_path / "o.npz"
    assert main(["run", LLAMA, "--seq", "3", "--out", str(out)]) == 0
    before = _snapshot(tmp_path)
    _full_disk(monkeypatch)
    assert main(["run", LLAMA, "--seq", "4", "--out", str(out)]) == 1
    assert "cannot write" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before


def test_kv_cache_pair_is_replaced_together_or_not_at_all(tmp_path, monkeypatch, capsys):
    assert main(["import-hf", str(T5), "-o", str(tmp_path / "t5")]) == 0
    spec, weights = str(tmp_path / "t5" / "model.arch"), str(tmp_path / "t5" /
                                                              "model.safetensors")
    out = tmp_path / "onnx"
    out.mkdir()
    argv = ["compile", spec, "--weights", weights, "--kv-cache", "-o", str(out / "t5.onnx")]
    assert main(argv) == 0
    before = _snapshot(out)
    assert set(before) == {"t5.encoder.onnx", "t5.decoder_with_past.onnx"}
    _full_disk(monkeypatch, after=1)  # the encoder is written, the decoder is not
    assert main([*argv[:-2], "-O", "2", "-o", str(out / "t5.onnx")]) == 1
    assert "cannot write" in capsys.readouterr().err
    assert _snapshot(out) == before
    monkeypatch.undo()

    import archc.backends.onnx_save as ex

    real, calls = ex.export_onnx, []

    def export_twice(*a, **k):  # the decoder's export raises after the encoder's succeeded
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.EIO, "simulated exporter failure")
        return real(*a, **k)

    monkeypatch.setattr(ex, "export_onnx", export_twice)
    assert main(argv) == 1
    assert _snapshot(out) == before
    assert len(calls) == 2


def test_failed_import_leaves_the_old_spec_and_weights(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert main(["import-hf", str(LLAMA_HF), "-o", str(out)]) == 0
    before = _snapshot(out)
    import safetensors.numpy

    def half_written(tensors, path):  # writes part of the file, then the disk is full
        with open(path, "wb") as f:
            f.write(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(safetensors.numpy, "save_file", half_written)
    assert main(["import-hf", str(T5), "-o", str(out)]) == 1
    assert "cannot write" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_import_writes_through_no_symlink(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (out / "model.arch").symlink_to(victim)
    assert main(["import-hf", str(LLAMA_HF), "-o", str(out)]) == 0
    assert victim.read_text() == "precious"
    assert not (out / "model.arch").is_symlink()
    assert (out / "model.arch").read_text().startswith("# LlamaForCausalLM")


def test_modes_are_kept_and_new_files_follow_the_umask(tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    out.chmod(0o640)
    assert main(["compile", LLAMA, "-o", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    umask = os.umask(0o022)
    try:
        files.write_file(tmp_path / "new.bin", b"x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "new.bin").stat().st_mode) == 0o644


@pytest.mark.parametrize("target", ["nodir/x.onnx", "adir"])
def test_unwritable_targets_say_cannot_write(tmp_path, capsys, target):
    (tmp_path / "adir").mkdir()
    assert main(["compile", LLAMA, "-o", str(tmp_path / target)]) == 1
    err = capsys.readouterr().err
    assert f"cannot write `{tmp_path / target}`" in err and "cannot read" not in err
    assert ("no such directory" in err) if "nodir" in target else ("is a directory" in err)


def test_read_only_folder(tmp_path, capsys, monkeypatch):
    # A read-only folder refuses the temporary file. Root may write there anyway, so the
    # refusal is simulated where archc creates the file: the same error the kernel gives.
    out = tmp_path / "ro"
    out.mkdir()
    (out / "o.npz").write_bytes(b"old")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(out))

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    assert main(["run", LLAMA, "--seq", "2", "--out", str(out / "o.npz")]) == 1
    assert "cannot write" in capsys.readouterr().err
    assert (out / "o.npz").read_bytes() == b"old"
    assert [p.name for p in out.iterdir()] == ["o.npz"]


def test_a_writer_that_raises_leaves_nothing(tmp_path):
    (tmp_path / "a").write_bytes(b"A")

    def boom(path):
        path.write_bytes(b"partial")
        raise ValueError("exporter bug")

    with pytest.raises(ValueError):
        files.write_files({tmp_path / "a": b"new A", tmp_path / "b": boom})
    assert _snapshot(tmp_path) == {"a": b"A"}
    np.testing.assert_equal(sorted(p.name for p in tmp_path.iterdir()), ["a"])
