"""float32 against float16 compute (`archc compile --dtype float16`) on onnxruntime's CPU EP.

The model is benchmarks/quantized_decode.py's LLaMA shape (about 55M parameters: 8 layers,
hidden 512, GQA 8/2, SwiGLU 1408, vocab 32000), random weights from archc's seeded init, the
`--kv-cache` export at -O2. Timed, batch 1, `--threads` threads: a prefill of `--seq` tokens
on an empty cache, and one decode step on top of those `--seq` tokens of cache. The two sessions
are timed in turn (interleaved) and each figure is the median of `--reps` runs: the machine is
shared, and the ratio from one run is what to read. Quality: the prefill's logits against
float32 (max |dlogit|, cosine, top-1 agreement). x86 CPUs without native float16 arithmetic
convert inside the kernels, so float16 may well be slower there; the file is half the size.

    nice python benchmarks/float16.py [--threads 2] [--seq 128] [--reps 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from archc import api
from archc.backends.onnx_export import export_onnx, model_bytes
from archc.backends.onnx_fp16 import export_float16
from archc.backends.ort import cpu_session
from archc.lower import lower
from archc.weights import init_params

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantized_decode import SPEC  # the benchmark LLaMA, one text


def _feeds(graph, ids: np.ndarray, past: dict | None) -> dict:
    b, t = ids.shape
    p = 0 if past is None else next(iter(past.values())).shape[2]
    empty = {n: np.zeros((b, 2, 0, 64), np.float32) for n in graph.inputs
             if n.startswith("past_key")}
    return {"input_ids": ids, "attention_mask": np.ones((b, p + t), np.int64),
            **(past or empty)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    graph = api.optimize(lower(api.parse(SPEC), None, cache=True), 2)
    weights = init_params(graph, 0)
    files = {"fp32": model_bytes(export_onnx(graph, weights)),
             "fp16": model_bytes(export_float16(graph, weights))}
    sessions = {k: cpu_session(v, args.threads) for k, v in files.items()}
    ids = np.random.default_rng(0).integers(0, 32000, (1, args.seq))
    nxt = np.array([[7]])
    times = {(k, what): [] for k in sessions for what in ("prefill", "decode")}
    outs = {}
    for _ in range(args.reps):
        for k, s in sessions.items():
            names = [o.name for o in s.get_outputs()]
            t0 = time.perf_counter()
            out = dict(zip(names, s.run(names, _feeds(graph, ids, None))))
            t1 = time.perf_counter()
            past = {n.replace("present", "past_key_values"): v for n, v in out.items()
                    if n.startswith("present")}
            s.run(names, _feeds(graph, nxt, past))
            t2 = time.perf_counter()
            times[k, "prefill"].append(t1 - t0)
            times[k, "decode"].append(t2 - t1)
            outs[k] = out["logits"]
    a, b = outs["fp32"].astype(np.float64), outs["fp16"].astype(np.float64)
    cos = float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
    print(f"threads {args.threads}, prefill 1x{args.seq}, decode 1 token after {args.seq}, "
          f"median of {args.reps}")
    print(f"{'':6} {'file MB':>8} {'prefill ms':>11} {'decode ms':>10}")
    for k in sessions:
        med = {w: 1e3 * float(np.median(times[k, w])) for w in ("prefill", "decode")}
        print(f"{k:6} {len(files[k]) / 1e6:8.1f} {med['prefill']:11.2f} {med['decode']:10.2f}")
    ratio = {w: np.median(times["fp16", w]) / np.median(times["fp32", w])
             for w in ("prefill", "decode")}
    print(f"fp16/fp32 time: prefill {ratio['prefill']:.2f}x, decode {ratio['decode']:.2f}x")
    print(f"prefill logits: max |dlogit| {np.abs(a - b).max():.3g} (max |logit| "
          f"{np.abs(a).max():.3g}), cosine {cos:.6f}, top-1 agreement "
          f"{(a.argmax(-1) == b.argmax(-1)).mean():.3f}")


if __name__ == "__main__":
    main()
