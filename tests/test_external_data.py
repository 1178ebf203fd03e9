"""Models over 2 GB: weights in `FILE.onnx.data` (ONNX external data), streamed one tensor at
a time, never two copies in memory; the pair written atomically; onnxruntime runs it and
matches a direct NumPy formula."""

from __future__ import annotations

import errno
import os
import tracemalloc

import numpy as np
import onnxruntime as ort
from conftest import ROOT

import archc
from archc import files
from archc.cli import main
from archc.weights import init_params

LLAMA = str(ROOT / "specs" / "llama_tiny.arch")
# 40 projections of 4096 x 4096 floats (64 MiB each): 2.5 GiB, over protobuf's 2 GiB. Layers
# 0, 13, 26, 39 are random; the rest are zeros, cheap to draw (a wrong offset into the data
# file would still move the numbers: the random layers sit at both ends of the layout).
BIG = """model big {
  let d = 4096, vocab = 64
  input input_ids: int64[batch, seq]
  x = embed(input_ids, vocab, d) as embed
  repeat 40 as layer {
    if layer % 13 == 0 {
      x = x + linear(x, d, bias = false) as proj
    } else {
      x = x + linear(x, d, bias = false, init = "zeros") as proj
    }
  }
  output y = x
}
"""


def _session(path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts)


def test_a_model_over_2gb_streams_its_weights_to_external_data(tmp_path, capsys):
    spec = tmp_path / "big.arch"
    spec.write_text(BIG)
    out = tmp_path / "big.onnx"
    tracemalloc.start()
    try:
        assert main(["compile", str(spec), "-o", str(out)]) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "weights in" in capsys.readouterr().out
    data = tmp_path / "big.onnx.data"
    try:
        total = 40 * 4096 * 4096 * 4 + 64 * 4096 * 4
        assert data.stat().st_size >= total > 2**31
        assert out.stat().st_size < 64 * 1024  # the graph alone
        # one 64 MiB tensor drawn in float64 (128 MiB) and cast (64 MiB) at a time; the whole
        # set would be 2.5 GiB
        assert peak < 400 * 2**20, f"peak {peak / 2**20:.0f} MiB"
        g = archc.compile(spec, level=0)
        w = init_params(g, 0, lazy=True)
        ids = np.array([[1, 7, 63], [5, 0, 2]])
        x = w["embed.weight"][ids].astype(np.float64)
        for layer in (0, 13, 26, 39):  # the zero layers add nothing
            x = x + x @ w[f"layer.{layer}.proj.weight"]
        got = _session(out).run(["y"], {"input_ids": ids})[0]
        np.testing.assert_allclose(got, x, rtol=1e-5, atol=1e-4)
    finally:
        for p in (out, data):
            p.unlink(missing_ok=True)


def test_small_external_data_layout_runs_and_is_deterministic(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ARCHC_EXTERNAL_DATA_BYTES", "1000")
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        assert main(["compile", LLAMA, "-o", str(folder / "m.onnx")]) == 0
    assert sorted(p.name for p in a.iterdir()) == ["m.onnx", "m.onnx.data"]  # no stage left
    for name in ("m.onnx", "m.onnx.data"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    g = archc.compile(LLAMA)
    ids = np.array([[3, 1, 4, 1, 5]])
    want = archc.run(g, {"input_ids": ids})["logits"]
    got = _session(a / "m.onnx").run(["logits"], {"input_ids": ids})[0]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_failed_external_export_keeps_the_old_pair(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ARCHC_EXTERNAL_DATA_BYTES", "1000")
    out = tmp_path / "m.onnx"
    assert main(["compile", LLAMA, "-o", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    calls = []

    def fsync(fd):  # the disk fills while the new pair is moved into place
        calls.append(fd)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", fsync)
    assert main(["compile", LLAMA, "-o", str(out), "--seed", "5"]) == 1
    assert "no space left on device" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
