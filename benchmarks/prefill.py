"""Prefill latency of a LLaMA-shaped model on onnxruntime's CPU EP: -O1 against -O2.

The model (SPEC below): about 55M parameters, 8 layers, hidden 512, GQA 8 query / 2 kv heads
of 64, SwiGLU 1408, vocab 32000, random weights; batch 1, float32. With `--no-mask` the spec has
no padding mask, so attention's mask is only the causal one (the fused kernel then needs no
bias). -O2 runs twice: self-attention lowered to com.microsoft GroupQueryAttention (archc's
default) and to ONNX Attention (opset 23), so the choice in archc/ops/fused.py is measured here
too. Every build is checked against -O1 on the same input first. Sessions are timed in turn
(interleaved) and each figure is the best of `--reps`; ratios are to -O1 in this run.
`--numpy T` also times the NumPy backend at -O1 and -O2 on T tokens.

    python benchmarks/prefill.py [--threads 2] [--seqs 128,512,2048] [--reps 5] [--no-mask]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort

import archc
from archc.backends.onnx_export import export_onnx, model_bytes
from archc.ops import fused

SPEC = """
model llama_bench {{
  let vocab = 32000, d = 512, heads = 8, kv = 2, ff = 1408, layers = 8, eps = 1e-6
  input input_ids: int64[batch, seq]
  {mask_input}
  x = embed(input_ids, vocab, d) as embed_tokens
  repeat layers as layers {{
    x = x + attention(rms_norm(x, eps) as input_norm, heads, kv_heads = kv, causal,
                      {mask_arg} rope = rope(theta = 10000), bias = false) as self_attn
    x = x + swiglu(rms_norm(x, eps) as post_attention_norm, ff) as mlp
  }}
  output logits = lm_head(rms_norm(x, eps) as norm, vocab)
}}
"""


def spec(mask: bool) -> str:
    return SPEC.format(mask_input="input attention_mask: int64[batch, seq]" if mask else "",
                       mask_arg="mask = attention_mask," if mask else "")


def _session(blob: bytes, threads: int):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])


def builds(mask: bool) -> tuple[dict[str, bytes], tuple]:
    o1 = archc.compile(archc.parse(spec(mask), "llama_bench.arch"), level=1)
    o2 = archc.compile(archc.parse(spec(mask), "llama_bench.arch"), level=2)
    weights = archc.init_params(o1, 0)
    out = {"-O1": model_bytes(export_onnx(o1, weights, check=False))}
    for target, label in (("gqa", "-O2 GroupQueryAttention"), ("onnx", "-O2 ONNX Attention")):
        fused.SELF_ATTENTION = target
        try:
            out[label] = model_bytes(export_onnx(o2, weights, check=False))
        finally:
            fused.SELF_ATTENTION = "gqa"
    print("fired at -O2:", ", ".join(f"{k} x{v}" for k, v in
                                     sorted(o2.meta["fusions"].fired.items())))
    return out, (o1, o2, weights)


def _feeds(t: int, mask: bool) -> dict[str, np.ndarray]:
    feeds = {"input_ids": np.random.default_rng(t).integers(0, 32000, (1, t))}
    if mask:
        feeds["attention_mask"] = np.ones((1, t), np.int64)
    return feeds


def _time_numpy(graphs, t: int, mask: bool, reps: int) -> None:
    o1, o2, weights = graphs
    feeds = _feeds(t, mask)
    best = {"-O1": np.inf, "-O2": np.inf}
    for _ in range(reps):
        for name, g in (("-O1", o1), ("-O2", o2)):
            start = time.perf_counter()
            archc.run(g, feeds, weights)
            best[name] = min(best[name], time.perf_counter() - start)
    print(f"NumPy backend, T={t}: -O1 {best['-O1'] * 1e3:.1f} ms, -O2 {best['-O2'] * 1e3:.1f} ms "
          f"(x{best['-O1'] / best['-O2']:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seqs", default="128,512,2048")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-mask", dest="mask", action="store_false")
    ap.add_argument("--numpy", type=int, default=0, metavar="T")
    args = ap.parse_args()
    print(f"onnxruntime {ort.__version__}, CPU EP, {args.threads} threads, batch 1, float32, "
          f"{'causal + padding mask' if args.mask else 'causal mask only'}")
    blobs, graphs = builds(args.mask)
    sessions = {name: _session(blob, args.threads) for name, blob in blobs.items()}
    print(f"\n{'T':>6}  " + "  ".join(f"{name:>26}" for name in sessions))
    for t in map(int, args.seqs.split(",")):
        feeds = _feeds(t, args.mask)
        ref = None
        for name, sess in sessions.items():  # warm up, and check every build against -O1
            y = sess.run(None, feeds)[0]
            ref = y if ref is None else ref
            diff = float(np.abs(y - ref).max())
            assert diff < 1e-3, f"{name} differs from -O1 by {diff} at T={t}"
        best = dict.fromkeys(sessions, np.inf)
        for _ in range(args.reps):
            for name, sess in sessions.items():
                start = time.perf_counter()
                sess.run(None, feeds)
                best[name] = min(best[name], time.perf_counter() - start)
        base = best["-O1"]
        print(f"{t:>6}  " + "  ".join(f"{best[n] * 1e3:9.1f} ms (x{base / best[n]:4.2f})"
                                      .rjust(26) for n in sessions))
    if args.numpy:
        _time_numpy(graphs, args.numpy, args.mask, max(2, args.reps // 2))


if __name__ == "__main__":
    main()
