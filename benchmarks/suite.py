"""The speed table of issue 13, measured in one run: archc against the machine's rooflines,
torch eager, a hand-written NumPy forward and the peer exporters.

Models (random weights made by transformers with a fixed seed, saved as a checkpoint folder and
brought in with `archc import-hf`, so every build runs the same weights):
- llama: 55M parameters, 8 layers, hidden 512, GQA 8/2 heads of 64, SwiGLU 1408, vocab 32000;
- gpt2:  8 layers, hidden 512, 8 heads, vocab 32000;
- bert:  8 layers, hidden 512, 8 heads, FFN 2048, vocab 30522 (an encoder: forward only).
Batch 1, float32, `--threads` threads everywhere (onnxruntime intra-op, torch, BLAS).

Rows: prefill of T tokens (encoder: a forward of T) and, for decoders, one decode step after
`--past` cached tokens (archc -O2/-O0: the exported graph's step, fed as a `Session` feeds it,
timed as the peers' graphs are; archc NumPy: a `Session` step). Columns: archc -O2 and -O0
on onnxruntime, torch eager, archc's NumPy backend, the hand-written NumPy forward below
(picoGPT-style: weights pre-transposed, nothing else) and, for llama, the same checkpoint
exported by onnxruntime-genai's model builder and by mobius (`--peers-python` names a Python
with them: they need torch and onnx-ir, so they live in a separate venv, see README). Every
build's logits are checked against torch's first. Each column runs its repetitions in one
block: taking turns call by call was tried, and the idle onnxruntime thread pools then spin
against each other on 2 cores (prefill 1x128 at 80 instead of 51 ms).

Rooflines, measured in the same run: sgemm GFLOP/s (a 2048^3 matmul) and read bandwidth (a GEMV
over a 256 MiB matrix). A prefill figure is also given as a percentage of the GEMM roofline
(the graph's exact FLOPs from `archc.stats`), a decode figure as a percentage of the bandwidth
roofline (the weight bytes a step reads: every matrix, one embedding row).

    python benchmarks/suite.py [--threads 2] [--seqs 128,512,2048] [--past 128] [--reps 5]
                               [--models llama,gpt2,bert] [--peers-python PATH]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _threads() -> int:
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return 2


for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy
    os.environ[var] = str(_threads())

import numpy as np  # noqa: E402

import archc  # noqa: E402
from archc.backends.onnx_export import export_onnx, model_bytes  # noqa: E402
from archc.backends.ort import cpu_session  # noqa: E402
from archc.hf import import_hf  # noqa: E402
from archc.kvcache import Session  # noqa: E402
from archc.lower import lower  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import numpy_forward as ref  # noqa: E402


def best_of(fn, reps: int) -> float:
    fn()  # warm
    best = np.inf
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def rooflines(reps: int) -> tuple[float, float]:
    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    gflops = 2 * 2048**3 / best_of(lambda: a @ a, reps) / 1e9
    w = np.random.default_rng(1).standard_normal((8192, 8192), dtype=np.float32)
    x = np.ones(8192, np.float32)
    gbs = w.nbytes / best_of(lambda: w @ x, reps) / 1e9
    return gflops, gbs


# ------------------------------------------------------------------------- the checkpoints
def make_checkpoint(kind: str, folder: Path):
    import torch
    import transformers as tf

    torch.manual_seed(0)
    if kind == "llama":
        cfg = tf.LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1408,
                             num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                             max_position_embeddings=4096, rms_norm_eps=1e-6,
                             tie_word_embeddings=False)
        model = tf.LlamaForCausalLM(cfg)
    elif kind == "gpt2":
        cfg = tf.GPT2Config(vocab_size=32000, n_positions=2048, n_embd=512, n_layer=8, n_head=8)
        model = tf.GPT2LMHeadModel(cfg)
    else:
        cfg = tf.BertConfig(vocab_size=30522, hidden_size=512, num_hidden_layers=8,
                            num_attention_heads=8, intermediate_size=2048,
                            max_position_embeddings=512, hidden_act="gelu_new")
        model = tf.BertModel(cfg, add_pooling_layer=False)
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    if kind == "llama":  # the peer builders want a tokenizer beside the weights
        from tokenizers import Tokenizer, models, pre_tokenizers

        tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(32000)}, unk_token="t0"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="t1", eos_token="t2",
                                   unk_token="t0").save_pretrained(folder)
    return model


def _run(sess, feeds):
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})[0]


class Bench:
    def __init__(self, kind: str, folder: Path, args):
        self.kind, self.args, self.threads = kind, args, args.threads
        self.model = make_checkpoint(kind, folder / "hf")
        import_hf(folder / "hf", folder / "archc")
        module = archc.parse_file(folder / "archc" / "model.arch")
        self.module = module
        self.graphs = {lvl: archc.optimize(lower(module), lvl) for lvl in (0, 2)}
        self.weights = archc.load_weights(self.graphs[0], str(folder / "archc" /
                                                               "model.safetensors"))
        self.sessions = {lvl: cpu_session(model_bytes(export_onnx(g, self.weights, check=False)),
                                       self.threads) for lvl, g in self.graphs.items()}
        self.np_weights = ref.prepare(kind, self.model)
        self.out = "last_hidden_state" if kind == "bert" else "logits"

    def feeds(self, t: int) -> dict:
        ids = np.random.default_rng(t).integers(0, 30000, (1, t))
        return {"input_ids": ids, "attention_mask": np.ones_like(ids),
                "token_type_ids": np.zeros_like(ids)}

    def torch_forward(self, feeds):
        import torch

        with torch.no_grad():
            kw = {k: torch.from_numpy(v) for k, v in feeds.items()
                  if k in ("input_ids", "attention_mask")}
            out = self.model(**kw)
            return (out.last_hidden_state if self.kind == "bert" else out.logits).numpy()

    def prefill(self, t: int, reps: int) -> dict[str, float]:
        feeds = self.feeds(t)
        want = self.torch_forward(feeds)
        runs = {"archc -O2": lambda: _run(self.sessions[2], feeds),
                "archc -O0": lambda: _run(self.sessions[0], feeds),
                "torch eager": lambda: self.torch_forward(feeds),
                "archc NumPy": lambda: archc.run(self.graphs[2], feeds, self.weights)[self.out],
                "hand NumPy": lambda: ref.forward(self.kind, self.np_weights, feeds["input_ids"])}
        if self.kind == "llama":
            for name, sess in self.args.peer_sessions.items():
                runs[name] = lambda sess=sess: _run(sess, {**feeds, **_empty_past(sess, t)})
        if t > 512:  # the unfused T^2 graph and the NumPy forwards: minutes, not a row's question
            for name in ("archc -O0", "archc NumPy", "hand NumPy"):
                runs.pop(name)
        for name, fn in runs.items():
            diff = float(np.abs(fn() - want).max())
            assert diff < 2e-3, f"{self.kind} {name} at T={t}: max |diff| {diff:.3g} vs torch"
        return {name: best_of(fn, reps) for name, fn in runs.items()}

    def decode(self, past: int, reps: int) -> dict[str, float]:
        import torch

        ids = self.feeds(past + 1)["input_ids"]
        prompt, nxt = ids[:, :past], ids[:, past:]
        with torch.no_grad():
            out = self.model(torch.from_numpy(prompt), use_cache=True)
            cache = out.past_key_values
            want = self.model(torch.from_numpy(nxt), past_key_values=cache).logits.numpy()
            cache.crop(-1)

        def torch_step():
            with torch.no_grad():
                y = self.model(torch.from_numpy(nxt), past_key_values=cache).logits
            cache.crop(-1)
            return y.numpy()

        runs = {"torch eager": torch_step}
        for lvl in (2, 0):
            g = archc.optimize(lower(self.module, cache=True), lvl)
            s = Session(g, self.weights, "numpy")
            s.run._ort = cpu_session(model_bytes(export_onnx(g, s.run.weights, check=False)),
                                  self.threads)  # the ORT runner, at --threads
            runs[f"archc -O{lvl}"] = _graph_stepper(s, prompt, nxt)
        s = Session(archc.optimize(lower(self.module, cache=True), 2), self.weights, "numpy")
        runs["archc NumPy"] = _stepper(s, prompt, nxt)
        runs["hand NumPy"] = ref.stepper(self.kind, self.np_weights, prompt, nxt)
        if self.kind == "llama":
            for name, sess in self.args.peer_sessions.items():
                runs[name] = _peer_stepper(sess, prompt, nxt)
        for name, fn in runs.items():
            diff = float(np.abs(fn()[:, -1] - want[:, -1]).max())
            assert diff < 2e-3, f"{self.kind} {name} decode: max |diff| {diff:.3g} vs torch"
        return {name: best_of(fn, reps) for name, fn in runs.items()}


def _stepper(s: Session, prompt, nxt):
    """One decode step after `prompt`, repeatable: the session's cache is put back each time."""
    s.prefill(prompt)
    past, mask = dict(s.past), s.mask

    def step():
        out = s.step(nxt)
        s.past, s.mask = dict(past), mask
        return out

    return step


def _graph_stepper(s: Session, prompt, nxt):
    """One decode step of the exported graph alone, as the peers are timed: the feeds a
    `Session` step gives onnxruntime, captured once (a Session step adds its input checks and
    the mask's concat, about 0.1 ms)."""
    s.prefill(prompt)
    sess, seen = s.run._ort, {}
    real = sess.run
    sess.run = lambda names, feeds, *a: seen.update(feeds) or real(names, feeds, *a)
    s.step(nxt)
    sess.run = real
    names = [o.name for o in sess.get_outputs()]
    return lambda: sess.run(names, seen)[0]


def _empty_past(sess, t: int) -> dict:
    feeds = {}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values"):
            feeds[i.name] = np.zeros((1, i.shape[1], 0, 64), np.float32)
        elif i.name == "position_ids":
            feeds[i.name] = np.arange(t)[None]
    return feeds


def _peer_stepper(sess, prompt, nxt):
    t = prompt.shape[1]
    feeds = {"input_ids": prompt, "attention_mask": np.ones_like(prompt), **_empty_past(sess, t)}
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(names, {k: v for k, v in feeds.items()
                                           if k in {i.name for i in sess.get_inputs()}})))
    step = {"input_ids": nxt, "attention_mask": np.ones((1, t + 1), np.int64),
            "position_ids": np.array([[t]])}
    for n in names:
        if n.startswith("present"):
            step[n.replace("present", "past_key_values")] = out[n]
    wanted = {i.name for i in sess.get_inputs()}
    step = {k: v for k, v in step.items() if k in wanted}
    return lambda: sess.run(["logits"], step)[0]


def peers(folder: Path, python: str | None, threads: int) -> dict:
    if not python:
        return {}
    built = {}
    jobs = {"onnxruntime-genai builder": [python, "-m", "onnxruntime_genai.models.builder",
                                          "-i", str(folder), "-o", str(folder / "genai"), "-p",
                                          "fp32", "-e", "cpu", "-c", str(folder / "cache")],
            "mobius": [python, "-m", "mobius", "build", "--config", str(folder), "--dtype", "f32",
                       "--optimize=group_query_attention,skip_norm", str(folder / "mobius")]}
    for name, cmd in jobs.items():
        r = subprocess.run(cmd, capture_output=True, text=True)
        path = Path(cmd[-1] if name == "mobius" else folder / "genai") / "model.onnx"
        if r.returncode or not path.exists():
            print(f"{name}: build failed ({r.stderr.strip().splitlines()[-1:]})")
            continue
        built[name] = cpu_session(str(path), threads)
    return built


def stats(graph, t: int) -> tuple[float, float]:
    """(exact forward FLOPs at T tokens, weight bytes one decode step reads: every parameter
    but the embedding tables, of which a step reads one row; a tied head reads the table)."""
    from archc.stats import full_stats

    s = full_stats(graph, t, 1, 0)
    b = s["breakdown"]
    unread = b["position and token-type embeddings"] + (
        b["token embedding"] if b["untied output head"] else 0)
    return s["flops_per_token"]["total"] * t, (s["parameters"] - unread) * 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seqs", default="128,512,2048")
    ap.add_argument("--past", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--models", default="llama,gpt2,bert")
    ap.add_argument("--peers-python", help="a Python with onnxruntime-genai's builder and "
                    "mobius installed (their own venv)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    gflops, gbs = rooflines(args.reps)
    print(f"rooflines ({args.threads} threads): sgemm {gflops:.1f} GFLOP/s, GEMV read "
          f"{gbs:.1f} GB/s\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.models.split(","):
            folder = Path(tmp) / kind
            b = Bench(kind, folder, argparse.Namespace(**vars(args), peer_sessions={}))
            if kind == "llama":
                b.args.peer_sessions = peers(folder / "hf", args.peers_python, args.threads)
            seqs = [int(s) for s in args.seqs.split(",")]
            for t in seqs if kind == "llama" else seqs[:1]:
                flops, _ = stats(b.graphs[0], t)
                rows.append((kind, f"prefill 1x{t}" if kind != "bert" else f"forward 1x{t}",
                             b.prefill(t, args.reps), flops / gflops / 1e9, "GEMM"))
            if kind != "bert" and args.past:
                _, nbytes = stats(b.graphs[0], args.past)
                rows.append((kind, f"decode 1 after {args.past}", b.decode(args.past, args.reps),
                             nbytes / gbs / 1e9, "bandwidth"))
    cols = ["archc -O2", "archc -O0", "torch eager", "archc NumPy", "hand NumPy",
            "onnxruntime-genai builder", "mobius"]
    cols = [c for c in cols if any(c in r[2] for r in rows)]
    print("| model | case | " + " | ".join(cols) + " | archc -O2 % of roofline |")
    print("|---|---|" + "---|" * len(cols) + "---|")
    for kind, case, times, bound, which in rows:
        cells = [f"{times[c] * 1e3:.1f} ms" if c in times else "—" for c in cols]
        print(f"| {kind} | {case} | " + " | ".join(cells) +
              f" | {100 * bound / times['archc -O2']:.0f}% of {which} |")


if __name__ == "__main__":
    main()
