"""Hostile flags and API calls on the newer surfaces: `compile`'s destination and quantization
flags, `generate --steps`, outputs that are devices or FIFOs, and `archc.Runner` /
`archc.Session` given the wrong feeds. Each refusal is a diagnostic (or a ValueError/TypeError
that says what to pass), never a NumPy or onnxruntime traceback, and leaves earlier outputs as
they were."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from conftest import TINY

import archc
from archc.cli import main
from archc.diagnostics import ArchcError
from archc.files import write_file

IDS = np.array([[1, 2, 3]], np.int64)


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("flags") / "tiny.arch"
    path.write_text(TINY)
    return str(path)


@pytest.fixture(scope="module")
def cached():
    module = archc.parse(TINY, "tiny.arch")
    g = archc.lower(module, cache=True)
    return g, archc.init_params(archc.lower(module), 0)


# ---------------------------------------------------------------- compile's flags
@pytest.mark.parametrize("extra, message", [
    (["--genai", "G", "-o", "m.onnx"], "`-o` and `--genai` cannot be given together"),
    (["--genai", "G", "--triton", "T"], "`--genai` and `--triton` cannot be given together"),
    (["-o", "m.onnx", "--triton", "T"], "`-o` and `--triton` cannot be given together"),
    (["--genai", ""], "needs `-o FILE.onnx` (or `--genai DIR` or `--triton DIR`), not an empty"),
    (["-o", "m.onnx", "--block-size", "64"], "`--block-size` applies only to `--weights-dtype "
     "int8` or `int4`, not float32"),
    (["-o", "m.onnx", "--weights-dtype", "float16", "--symmetric"], "`--symmetric` applies only"),
    (["-o", "m.onnx", "--activations", "int8"], "`--activations` applies only"),
    (["-o", "m.onnx", "--dtype", "float16", "--float-embeddings"], "`--float-embeddings`"),
    (["--triton", "T", "--explain"], "`--explain` applies only to `-o FILE.onnx`"),
])
def test_flags_compile_would_ignore_are_refused(spec, tmp_path, capsys, monkeypatch, extra,
                                                message):
    """Before: the second destination, or the quantization option, was dropped silently."""
    old = tmp_path / "m.onnx"
    old.write_bytes(b"earlier output")
    monkeypatch.chdir(tmp_path)
    assert main(["compile", spec, *extra]) == 1
    err = capsys.readouterr().err
    assert "error[E0400]" in err and message in err and "Traceback" not in err
    assert old.read_bytes() == b"earlier output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_quantization_flags_still_work_with_a_quantized_dtype(spec, tmp_path):
    out = tmp_path / "q.onnx"
    assert main(["compile", spec, "-o", str(out), "--weights-dtype", "int8", "--block-size",
                 "64", "--symmetric", "--activations", "float32", "--float-embeddings"]) == 0
    assert out.stat().st_size > 0


# ---------------------------------------------------------------- generate
@pytest.mark.parametrize("steps, what", [(10**9, "the run's largest value"),
                                         (5 * 10**9, "the ids of `--ids` and `--steps`")])
def test_huge_steps_are_refused_before_allocating(spec, capsys, steps, what):
    """Before: `--steps 1000000000` allocated the grown ids (8 GB, then a copy) and was killed
    by the OOM killer (exit -9)."""
    assert main(["generate", spec, "--ids", "1,2", "--steps", str(steps)]) == 1
    err = capsys.readouterr().err
    assert "error[E0331]" in err and what in err and "ARCHC_MAX_BYTES" in err


# ---------------------------------------------------------------- devices and FIFOs
def test_a_fifo_target_is_written_through_not_replaced(tmp_path):
    """Before: the rename put a regular file where the FIFO was (as root, `--out /dev/null`
    replaced /dev/null itself). A writer function (NumPy's zip writer seeks) works too."""
    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a writer's open then won't block
    got = []

    def drain():
        data = b""
        while not data.endswith(b"END"):
            try:
                data += os.read(reader, 1 << 16)
            except BlockingIOError:
                threading.Event().wait(0.01)
        got.append(data)

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    write_file(fifo, lambda p: p.write_bytes(b"zip writers seek" + b"END"))
    t.join(10)
    os.close(reader)
    assert got == [b"zip writers seekEND"]
    assert not fifo.is_file() and fifo.exists()  # still the FIFO
    assert not [p for p in tmp_path.iterdir() if p.name != "out"]  # no temporary left


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_an_endless_file_is_refused_not_read_until_memory_runs_out(spec, tmp_path, capsys):
    """Before: `archc check /dev/zero` and `run --inputs /dev/zero` read until the OOM killer
    ended them (exit 137)."""
    assert main(["check", "/dev/zero"]) == 1
    assert "cannot read `/dev/zero`: it is over 64 MiB, too large for a spec file" in \
        capsys.readouterr().err
    assert main(["run", spec, "--inputs", "/dev/zero", "--out", str(tmp_path / "o.npz")]) == 1
    assert "error[E0317]: cannot read `/dev/zero`: not a regular file" in capsys.readouterr().err


# ---------------------------------------------------------------- Runner and Session feeds
def test_runner_refuses_feeds_that_are_not_a_dict_or_a_graph_that_is_not_one(cached):
    g, w = archc.compile(TINY), cached[1]
    r = archc.Runner(g, w)
    for feeds, kind in ((None, "NoneType"), ([IDS], "list")):
        with pytest.raises(ArchcError, match=f"the inputs are a {kind}, not a dict"):
            r(feeds)
    with pytest.raises(TypeError, match="Runner takes a Graph"):
        archc.Runner("tiny.arch", w)
    with pytest.raises(TypeError, match="weights are a dict"):
        archc.Runner(g, [w])
    with pytest.raises(ArchcError, match=r"weight `ln_f.bias` has shape \[2\]"):
        archc.Runner(g, {**w, "ln_f.bias": [0.0, 1.0]})  # a list: was AttributeError


def test_a_misspelled_input_is_refused_not_replaced_by_its_default(cached, spec, tmp_path,
                                                                   capsys):
    """Before: `attention_maks` was ignored and the mask defaulted to ones, silently."""
    r = archc.Runner(archc.compile(TINY), cached[1])
    with pytest.raises(ArchcError, match=r"input `attention_maks` is not a graph input, and "
                       r"`attention_mask` is missing") as e:
        r({"input_ids": IDS, "attention_maks": np.array([[0, 1, 1]])})
    assert "did you mean `attention_mask`?" in str(e.value)
    r({"input_ids": IDS, "labels": IDS})  # an unrelated extra array is still ignored
    np.savez(tmp_path / "in.npz", input_ids=IDS, attention_maks=np.array([[0, 1, 1]]))
    out = tmp_path / "out.npz"
    assert main(["run", spec, "--inputs", str(tmp_path / "in.npz"), "--out", str(out)]) == 1
    assert "E0303" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_session_refuses_steps_that_do_not_fit_it(cached, backend):
    """Before: KeyError, NumPy's concatenate errors, an InterpreterError or onnxruntime's
    broadcast failure; a mask of 0.5 was truncated to 0."""
    g, w = cached
    with pytest.raises(ValueError, match="`step` before `prefill`"):
        archc.Session(g, w, backend).step(IDS)
    s = archc.Session(g, w, backend)
    s.prefill(IDS)
    for ids, mask, code, text in (
            ([[4], [5]], None, "E0314", "has batch 2; the session's batch is 1"),
            ([[4]], np.ones((1, 3)), "E0314", "`attention_mask` has shape [1, 3], `input_ids`"),
            ([[4]], np.ones((2, 1)), "E0314", "has shape [2, 1]"),
            ([4], None, "E0313", "has rank 1 [1]; a session takes [batch, new tokens]"),
            (4, None, "E0313", "has rank 0"),
            ([[4]], [[0.5]], "E0312", "`attention_mask` has fractional")):
        with pytest.raises(ArchcError) as e:
            s.step(np.asarray(ids), mask)
        assert f"error[{code}]" in str(e.value) and text in str(e.value)
    assert s.step(np.array([[4]])).shape == (1, 1, 50)  # the failed steps moved nothing
    assert s.mask.shape == (1, 4) and s.mask.dtype == np.int64
    with pytest.raises(ArchcError, match="E0313"):
        archc.Session(g, w, backend).prefill(None)
    with pytest.raises(ValueError, match="`steps` must be an integer >= 0, got -1"):
        archc.kvcache.generate(g, w, IDS, -1, backend)


def test_a_spec_without_parameters_compiles_and_runs(tmp_path):
    """`compile` checked the random init's budget with max() over no parameters (E0900)."""
    spec = tmp_path / "p.arch"
    spec.write_text("model m {\n  input x: float32[batch, 4]\n  output y = gelu(x) * 2\n}\n")
    assert main(["compile", str(spec), "-o", str(tmp_path / "p.onnx")]) == 0
    assert main(["run", str(spec), "--backend", "onnxruntime", "--batch", "2",
                 "--out", str(tmp_path / "p.npz")]) == 0
    assert np.load(tmp_path / "p.npz")["y"].shape == (2, 4)
