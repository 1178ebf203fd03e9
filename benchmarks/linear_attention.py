"""Cost and peak memory of one causal attention step as the sequence grows, on the NumPy backend.

Four ways to attend over q, k, v [1, H, T, D]:

- plain, chunked, flash: the NumPy kernels of the fused `sdpa` op (archc/ops/fused.py), which
  compute the same numbers (checked here within 1e-5 before anything is timed). plain holds
  every score at once, O(T^2); chunked a block of queries against every key, O(T * block);
  flash a block of queries against a block of keys with an online softmax.
- linear: the Linear Transformer's causal form (`feature_map_attend` of elu + 1 features in
  archc/stdlib/sparse_attention.arch) run as a graph by the interpreter: prefix sums of
  phi(k) v^T, O(T * D^2) memory and time.

Cost is CPU time (`time.process_time`) with one BLAS thread (set OPENBLAS_NUM_THREADS to
change it), the best of `--reps` runs: on a shared machine, wall time would also count the
waits for other processes. Peak memory
is what the step allocates beyond its inputs: tracemalloc's peak (NumPy reports its buffers
to it) over one more run. Ratios are to the smallest T of this run; linear growth multiplies
both by the T ratio, quadratic by its square.

    python benchmarks/linear_attention.py            # T = 1k .. 16k: about a minute, 1.6 GB
    python benchmarks/linear_attention.py --seqs 1024,2048,4096 --heads 2 --dim 32 --reps 3
"""

from __future__ import annotations

import os

# One BLAS thread unless told otherwise: the cost compared is work per core, and a BLAS thread
# pool spinning on small tiles on a busy machine would be measured instead.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import numpy as np  # noqa: E402

import archc  # noqa: E402
from archc.backends.numpy_interp import run_graph  # noqa: E402
from archc.ops.fused import attention_kernel_as, sdpa  # noqa: E402

KINDS = ("plain", "chunked", "flash", "linear")


def linear_graph(heads: int, dim: int):
    """The causal Linear Transformer core on given q, k, v (no projections)."""
    shape = f"float32[1, {heads}, seq, {dim}]"
    return archc.compile(archc.parse(
        f"model core {{ input q: {shape} input k: {shape} input v: {shape}\n"
        "  output y = feature_map_attend(elu(q) + 1.0, elu(k) + 1.0, v, causal = true) }"))


def step(kind: str, q, k, v, graph):
    if kind == "linear":
        return run_graph(graph, {"q": q, "k": k, "v": v}, {})["y"]
    with attention_kernel_as(kind):
        return sdpa(q, k, v, scale=1 / math.sqrt(q.shape[-1]), causal=True)


def measure(kind, q, k, v, graph, reps):
    best = math.inf
    for _ in range(reps):
        start = time.process_time()
        step(kind, q, k, v, graph)
        best = min(best, time.process_time() - start)
    tracemalloc.start()
    step(kind, q, k, v, graph)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return best, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", default="1024,2048,4096,8192,16384")
    ap.add_argument("--heads", type=int, default=1)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    seqs = [int(s) for s in args.seqs.split(",")]
    graph = linear_graph(args.heads, args.dim)
    rng = np.random.default_rng(0)

    def qkv(t):
        return [rng.standard_normal((1, args.heads, t, args.dim)).astype(np.float32)
                for _ in range(3)]

    ref = step("plain", *(small := qkv(min(seqs))), graph)
    for kind in ("chunked", "flash"):
        err = float(np.abs(step(kind, *small, graph) - ref).max())
        assert err <= 1e-5, f"{kind} differs from plain by {err}"
    step("linear", *small, graph)  # warm up the interpreter too

    rows = {}
    for t in seqs:
        q, k, v = qkv(t)
        rows[t] = {kind: measure(kind, q, k, v, graph, args.reps)
                   for kind in KINDS}
        print(f"T={t:>6}  " + "  ".join(f"{kind} {s * 1e3:8.1f} cpu ms {p / 2**20:8.1f} MiB"
                                        for kind, (s, p) in rows[t].items()), flush=True)
    t0 = seqs[0]
    print(f"\nratios to T={t0} (one causal attention step, B=1, H={args.heads}, "
          f"D={args.dim}; linear growth = T ratio, quadratic = its square)")
    print(f"{'T':>6} {'T ratio':>8} {'T^2':>6}  " + "  ".join(
        f"{kind + ' time':>12} {kind + ' mem':>11}" for kind in KINDS))
    for t in seqs:
        cells = []
        for kind in KINDS:
            (s, p), (s0, p0) = rows[t][kind], rows[t0][kind]
            cells.append(f"{s / s0:12.1f} {p / p0:11.1f}")
        print(f"{t:>6} {t / t0:8.0f} {(t / t0) ** 2:6.0f}  " + "  ".join(cells))
    if len(seqs) > 1:
        span = math.log(seqs[-1] / t0)
        print("growth exponent (1 = linear, 2 = quadratic): " + ", ".join(
            f"{kind} time {math.log(rows[seqs[-1]][kind][0] / rows[t0][kind][0]) / span:.2f} "
            f"mem {math.log(rows[seqs[-1]][kind][1] / rows[t0][kind][1]) / span:.2f}"
            for kind in KINDS))


if __name__ == "__main__":
    main()
