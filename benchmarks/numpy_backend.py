"""archc's NumPy backend against the hand-written NumPy forward (benchmarks/numpy_forward.py),
the question of issue 13: is the interpreter within 15% of code written by hand?

The llama and gpt2 models are built exactly as in benchmarks/suite.py (its functions, imported):
random weights from transformers with a fixed seed, brought in with `archc import-hf`, -O2.
Cases: a prefill of `--seq` tokens (`archc.run`) and one decode step after `--past` cached
tokens (`Session.step`, the cache put back each time). The two sides are timed interleaved
(archc, hand, archc, hand, ...) and the best of `--reps` is kept for each, so a burst of load
on a shared machine hits both; the load average is printed before and after. Both sides'
weights are copied onto 64-byte boundaries first: a GEMV over a matrix 16 bytes off a cache
line is 5-10% slower, and NumPy's allocations land 0, 16, 32 or 48 bytes off by chance, which
moved the ratio by +-5% from one run to the next (`--as-loaded` keeps them as loaded).

    python benchmarks/numpy_backend.py [--threads 2] [--models llama,gpt2] [--seq 128]
                                       [--past 128] [--reps 20] [--decode-reps 200]
                                       [--clock wall|cpu] [--as-loaded]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import suite  # noqa: E402, I001  (first: it sets the BLAS threads from --threads before numpy)

import numpy as np  # noqa: E402

import archc  # noqa: E402
from archc.backends.numpy_interp import aligned_copy  # noqa: E402
from archc.hf import import_hf  # noqa: E402
from archc.kvcache import Session  # noqa: E402
from archc.lower import lower  # noqa: E402

ref = suite.ref


def interleaved(fns: dict, reps: int, clock=time.perf_counter) -> dict[str, float]:
    """Best time of each function, the functions run in turn `reps` times."""
    best = dict.fromkeys(fns, np.inf)
    for fn in fns.values():
        fn()  # warm
    for _ in range(reps):
        for name, fn in fns.items():
            start = clock()
            fn()
            best[name] = min(best[name], clock() - start)
    return best


def build(kind: str, folder: Path):
    """(torch model, full -O2 graph, cache -O2 graph, archc weights, hand-NumPy weights)."""
    model = suite.make_checkpoint(kind, folder / "hf")
    import_hf(folder / "hf", folder / "archc")
    module = archc.parse_file(folder / "archc" / "model.arch")
    full = archc.optimize(lower(module), 2)
    cached = archc.optimize(lower(module, cache=True), 2)
    weights = archc.load_weights(full, str(folder / "archc" / "model.safetensors"))
    return model, full, cached, weights, ref.prepare(kind, model)


def cases(kind: str, folder: Path, seq: int, past: int, align: bool) -> dict[str, dict]:
    _, full, cached, weights, w = build(kind, folder)
    if align:  # both sides' matrices on cache lines: neither wins by where malloc put them
        weights = {k: aligned_copy(v) for k, v in weights.items()}
        w = {k: aligned_copy(v) if isinstance(v, np.ndarray) else v for k, v in w.items()}
    ids = np.random.default_rng(seq).integers(0, 30000, (1, seq))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    steps = np.random.default_rng(past + 1).integers(0, 30000, (1, past + 1))
    prompt, nxt = steps[:, :past], steps[:, past:]
    out = {f"prefill 1x{seq}": {
        "archc": lambda: archc.run(full, feeds, weights)["logits"],
        "hand": lambda: ref.forward(kind, w, ids)}}
    out[f"decode 1 after {past}"] = {
        "archc": suite._stepper(Session(cached, weights, "numpy"), prompt, nxt),
        "hand": ref.stepper(kind, w, prompt, nxt)}
    for name, fns in out.items():  # the two sides compute the same logits
        a, b = fns["archc"](), fns["hand"]()
        diff = float(np.abs(a[:, -1] - b[:, -1]).max())
        assert diff < 2e-3, f"{kind} {name}: max |diff| {diff:.3g} archc vs hand NumPy"
    return out


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="llama,gpt2")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--past", type=int, default=128)
    ap.add_argument("--reps", type=int, default=20, help="prefill repetitions")
    ap.add_argument("--decode-reps", type=int, default=200, help="decode repetitions (a step "
                    "takes milliseconds: more tries to find a quiet moment on a shared machine)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: the "
                    "process's CPU time, which a loaded machine disturbs less than wall time "
                    "(with --threads 1 it is the time of the one thread doing the work)")
    ap.add_argument("--as-loaded", action="store_true", help="keep the weights where the "
                    "loaders put them (by default both sides' are copied onto 64-byte boundaries)")
    args = ap.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    import torch

    torch.set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()}  ({os.cpu_count()} cores, "
          f"{args.threads} threads, {args.clock} clock)")
    print("| model | case | archc NumPy | hand NumPy | archc / hand |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.models.split(","):
            for name, fns in cases(kind, Path(tmp) / kind, args.seq, args.past,
                                   not args.as_loaded).items():
                t = interleaved(fns, args.decode_reps if "decode" in name else args.reps, clock)
                print(f"| {kind} | {name} | {t['archc'] * 1e3:.2f} ms | {t['hand'] * 1e3:.2f} ms"
                      f" | {t['archc'] / t['hand']:.3f} |", flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
