"""Attention memory in long prefill: how much a single attention call adds to the process's
peak RSS, per kernel archc can lower `sdpa` to, at growing T (issue 13: "attention memory O(T)
per layer in long prefill").

One causal self-attention of the benchmark LLaMA's shape (8 query heads, 2 kv heads of 64,
batch 1), float32, onnxruntime CPU, 2 threads, each kernel at each T in a fresh process (peak
RSS only grows): the growth of ru_maxrss over one run after the session is built and its
inputs exist. For scale, the T x T probabilities of 8 heads are 8 T^2 4 bytes.

- `gqa`: com.microsoft GroupQueryAttention, what archc's fast path runs (a right-padded or
  unpadded batch; sliding windows through local_window_size);
- `onnx`: ONNX Attention (opset 23) with is_causal, archc's exact path without a bias;
- `mha`: com.microsoft MultiHeadAttention (unidirectional), for reference.

    python benchmarks/attention_memory.py [--seqs 1024,2048,4096] [--kinds gqa,onnx,mha]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

H, KV, D = 8, 2, 64


def measure(kind: str, s: int) -> tuple[float, float]:
    """(peak RSS growth in MiB, seconds) of one call, in this process."""
    import resource
    import time

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
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.log_severity_level = 2, 3
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"sl": np.array([s - 1], np.int32), "tot": np.array(s, np.int32)}
    for i in sess.get_inputs():
        if i.name not in feeds:
            feeds[i.name] = rng.standard_normal(i.shape).astype(np.float32)
    feeds = {i.name: feeds[i.name] for i in sess.get_inputs()}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    sess.run(None, feeds)
    took = time.perf_counter() - t
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", default="1024,2048,4096")
    ap.add_argument("--kinds", default="gqa,onnx,mha")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # KIND T, in the child
    args = ap.parse_args()
    if args.one:
        mib, took = measure(args.one[0], int(args.one[1]))
        print(f"{mib:.1f} {took:.4f}")
        return
    seqs = [int(x) for x in args.seqs.split(",")]
    print(f"causal self-attention, {H} heads / {KV} kv heads of {D}, batch 1, float32, "
          "onnxruntime CPU, 2 threads; peak RSS growth of one call, MiB (ms)")
    print(f"{'kernel':8s}" + "".join(f"{f'T={s}':>22s}" for s in seqs))
    for kind in args.kinds.split(","):
        row = []
        for s in seqs:
            out = subprocess.run([sys.executable, __file__, "--one", kind, str(s)],
                                 capture_output=True, text=True, check=True).stdout.split()
            row.append(f"{float(out[0]):8.0f} ({float(out[1]) * 1e3:6.0f} ms)")
        print(f"{kind:8s}" + "".join(f"{x:>22s}" for x in row))
    print(f"{'8 T^2 4B':8s}" + "".join(f"{H * s * s * 4 / 2**20:>22.0f}" for s in seqs))


if __name__ == "__main__":
    main()
