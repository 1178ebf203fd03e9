"""Attention memory in long prefill: how much a single attention call adds to the process's
peak RSS, per kernel archc can lower `sdpa` to, at growing T (issue 13: "attention memory O(T)
per layer in long prefill").

One causal self-attention of the benchmark LLaMA's shape (8 query heads, 2 kv heads of 64,
batch 1), float32, onnxruntime CPU, 2 threads, each kernel at each T in a fresh process: the
resident set's peak during one run over what it was after the session was built and its
inputs made (sampled every 0.5 ms). For scale, the T x T probabilities of 8 heads are
8 T^2 4 bytes.

- `gqa`: com.microsoft GroupQueryAttention, what archc's fast path runs (a right-padded or
  unpadded batch; sliding windows through local_window_size);
- `onnx`: ONNX Attention (opset 23) with is_causal, archc's exact path without a bias;
- `mha`: com.microsoft MultiHeadAttention (unidirectional), for reference;
- `model`: the whole benchmark LLaMA (benchmarks/quantized_decode.py: 8 layers, hidden 512,
  8/2 heads of 64, vocab 32000) at `-O2`, one prefill 1 x T with an all-ones mask: every
  layer takes the fast path, and the [1, 1, T, T] bias only the exact branches read is not
  built (archc/backends/onnx_gate.py);
- `model_ungated`: the same export with that bias in the main graph, built on every run (as
  before the gate). The [T, 32000] logits (125 MiB at T = 1024) are in both.

    python benchmarks/attention_memory.py [--seqs 1024,2048,4096] [--kinds gqa,onnx,mha]
    python benchmarks/attention_memory.py --kinds model,model_ungated --seqs 2048,4096,8192
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

H, KV, D = 8, 2, 64


def _model(gated: bool) -> bytes:
    """The -O2 ONNX of the benchmark LLaMA (seeded weights), with or without the exact-values
    gate. Made in the parent and read from a file by the child: exporting raises the peak RSS
    by more than a run does."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from quantized_decode import SPEC  # the benchmark LLaMA, one text

    import archc
    from archc.backends import onnx_export

    g = archc.optimize(archc.lower(archc.parse(SPEC, "llama_bench.arch")), 2)
    gate = onnx_export.gate_else_only
    if not gated:
        onnx_export.gate_else_only = lambda nodes, *_: nodes
    try:
        return onnx_export.model_bytes(onnx_export.export_onnx(g, archc.init_params(g, seed=0)))
    finally:
        onnx_export.gate_else_only = gate


def measure(kind: str, s: int, model_file: str | None = None) -> tuple[float, float]:
    """(peak RSS growth in MiB, seconds) of one call, in this process."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.log_severity_level = 2, 3
    if kind.startswith("model"):
        sess = ort.InferenceSession(model_file, opts, providers=["CPUExecutionProvider"])
        feeds = {"input_ids": np.random.default_rng(0).integers(0, 32000, (1, s)),
                 "attention_mask": np.ones((1, s), np.int64)}
    else:
        sess, feeds = _one_call(kind, s, opts)
    return _peak_growth(lambda: sess.run(None, feeds))


def _peak_growth(call) -> tuple[float, float]:
    """(MiB, seconds): the resident set's peak during `call()` over what it was before, sampled
    every 0.5 ms from /proc/self/statm (ru_maxrss would count building the session, whose
    peak is over the run's for a whole model)."""
    import os
    import threading
    import time

    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page
    before, peak, done = rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.0005)
    watcher = threading.Thread(target=sample)
    watcher.start()
    t = time.perf_counter()
    call()
    took = time.perf_counter() - t
    done.set()
    watcher.join()
    return (max(peak[0], rss()) - before) / 2**20, took


def _one_call(kind: str, s: int, opts):
    """A session of one attention node of `kind` at length `s`, and its random feeds."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def info(name, shape, dtype=TensorProto.FLOAT):
        return helper.make_tensor_value_info(name, dtype, shape)
    if kind == "gqa":
        node = helper.make_node("GroupQueryAttention", ["q", "k", "v", "", "", "sl", "tot"],
                                ["o", "pk", "pv"], domain="com.microsoft", num_heads=H,
                                kv_num_heads=KV)
        ins = [info("q", [1, s, H * D]), info("k", [1, s, KV * D]), info("v", [1, s, KV * D]),
               info("sl", [1], TensorProto.INT32), info("tot", [], TensorProto.INT32)]
    elif kind == "onnx":
        node = helper.make_node("Attention", ["q", "k", "v"], ["o"], is_causal=1)
        ins = [info("q", [1, H, s, D]), info("k", [1, KV, s, D]), info("v", [1, KV, s, D])]
    else:  # mha: no grouped heads, so k and v have all 8
        node = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"],
                                domain="com.microsoft", num_heads=H, unidirectional=1)
        ins = [info(n, [1, s, H * D]) for n in "qkv"]
    outs = [info(o, None) for o in node.output]
    model = helper.make_model(helper.make_graph([node], "g", ins, outs), opset_imports=[
        helper.make_opsetid("", 23), helper.make_opsetid("com.microsoft", 1)])
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"sl": np.array([s - 1], np.int32), "tot": np.array(s, np.int32)}
    for i in sess.get_inputs():
        if i.name not in feeds:
            feeds[i.name] = rng.standard_normal(i.shape).astype(np.float32)
    return sess, {i.name: feeds[i.name] for i in sess.get_inputs()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", default="1024,2048,4096")
    ap.add_argument("--kinds", default="gqa,onnx,mha")
    ap.add_argument("--one", nargs="+", help=argparse.SUPPRESS)  # KIND T [FILE], in the child
    args = ap.parse_args()
    if args.one:
        mib, took = measure(args.one[0], int(args.one[1]), *args.one[2:])
        print(f"{mib:.1f} {took:.4f}")
        return
    seqs, kinds = [int(x) for x in args.seqs.split(",")], args.kinds.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for kind in kinds:
            if kind.startswith("model"):
                files[kind] = [str(Path(tmp) / f"{kind}.onnx")]
                Path(files[kind][0]).write_bytes(_model(kind == "model"))
        _table(seqs, kinds, files)


def _table(seqs: list[int], kinds: list[str], files: dict[str, list[str]]) -> None:
    print(f"causal self-attention, {H} heads / {KV} kv heads of {D}, batch 1, float32, "
          "onnxruntime CPU, 2 threads; peak RSS growth of one call, MiB (ms); model: the "
          "whole 8-layer model of that shape")
    print(f"{'kernel':14s}" + "".join(f"{f'T={s}':>22s}" for s in seqs))
    for kind in kinds:
        row = []
        for s in seqs:
            out = subprocess.run([sys.executable, __file__, "--one", kind, str(s),
                                  *files.get(kind, ())],
                                 capture_output=True, text=True, check=True).stdout.split()
            row.append(f"{float(out[0]):8.0f} ({float(out[1]) * 1e3:6.0f} ms)")
        print(f"{kind:14s}" + "".join(f"{x:>22s}" for x in row))
    print(f"{'8 T^2 4B':14s}" + "".join(f"{H * s * s * 4 / 2**20:>22.0f}" for s in seqs))


if __name__ == "__main__":
    main()
