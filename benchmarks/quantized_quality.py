"""The quality cost of weight-only quantization (`archc compile --weights-dtype`), measured on a
model with trained weights, so that perplexity means something (benchmarks/quantized_decode.py
uses random weights: there every variant's perplexity is about the vocabulary size).

Model: a small LLaMA (transformers' LlamaForCausalLM, seed 0): byte-level vocab 256, 4 layers,
hidden 256, GQA 4/2 heads of 64, SwiGLU 688, context 256, untied head (about 3.0M parameters).
Corpus: the sorted `*.py` files of the stdlib packages in CORPUS, read from
`sysconfig.get_paths()["stdlib"]` and joined as bytes; its size and sha256 are printed, since
they depend on the Python version. The first 90% trains the model: AdamW at `--lr` (warm-up,
cosine decay), `--steps` steps of `--batch` random windows, bfloat16 autocast (the weights stay
float32), one torch thread; about 2.5 minutes on one shared EPYC core, to an eval perplexity of
about 5 (the small batch and low rate were the best of a short sweep at that budget). The last
10%, cut into non-overlapping windows of the context length, is the evaluation stream.

The trained model is saved as a Hugging Face checkpoint folder (safetensors), brought in with
`archc.hf.import_hf` (what `archc import-hf` runs) and compiled by `archc.cli.main(["compile",
..., "-O", "2", "--weights-dtype", ...])`, the CLI itself, without `--kv-cache`: one
full-sequence forward per window. Each file runs on onnxruntime's CPU EP with `--threads`
intra-op threads (default 1: the machine is shared). Per variant: file MB, perplexity of the
stream (next-byte NLL, every position of every window but the last), its change against archc
float32 (absolute and %), max and mean |logit - float32 logit|, top-1 agreement with float32 and
top-1 accuracy on the real next byte. torch's own perplexity of the same stream is the
reference: archc float32 must match it within 1e-4 relative (asserted), the check that the
import, the compile and the evaluation are right.

    python benchmarks/quantized_quality.py [--steps 1200] [--batch 2] [--threads 1]
                                           [--eval-windows 0] [--out DIR] [--variants a,b]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

from archc.backends.ort import cpu_session
from archc.cli import main as archc_main
from archc.hf import import_hf

CORPUS = ("asyncio", "email", "http", "json")  # stdlib packages, in this order
CTX = 256
SHAPE = {"vocab_size": 256, "hidden_size": 256, "intermediate_size": 688,
         "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
         "max_position_embeddings": CTX, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
# name -> `archc compile` flags after `--weights-dtype`; the first is the reference
SYM, ACT32 = ["--symmetric"], ["--activations", "float32"]
VARIANTS = {"fp32": ["float32"], "fp16": ["float16"],
            "int8 sym": ["int8", *SYM], "int8 zp": ["int8"],
            "int4 sym": ["int4", *SYM], "int4 zp": ["int4"],
            "int4 sym act32": ["int4", *SYM, *ACT32], "int4 zp act32": ["int4", *ACT32],
            "int4 sym f32emb": ["int4", *SYM, "--float-embeddings"],
            "int4 sym b128": ["int4", *SYM, "--block-size", "128"],
            "int4 zp b128": ["int4", "--block-size", "128"]}
TOLERANCE = 1e-4  # archc float32 perplexity vs torch's, relative


def corpus() -> bytes:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [f for pkg in CORPUS for f in sorted((root / pkg).rglob("*.py"))]
    return b"".join(f.read_bytes() for f in files)


def train(data: np.ndarray, steps: int, batch: int, lr: float):
    """A fresh LlamaForCausalLM trained on random windows of `data` (uint8): warm-up, then
    cosine decay to a tenth of `lr`."""
    import torch
    import transformers as tf

    tf.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**SHAPE))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warm = max(1, steps // 12)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1, (i + 1) / warm) * (
        0.1 + 0.45 * (1 + np.cos(np.pi * min(1, max(0, i - warm) / max(1, steps - warm))))))
    rng = np.random.default_rng(0)
    model.train()
    start = time.perf_counter()
    for step in range(1, steps + 1):
        at = rng.integers(0, len(data) - CTX, batch)
        x = torch.from_numpy(np.stack([data[i:i + CTX] for i in at]).astype(np.int64))
        with torch.autocast("cpu", torch.bfloat16):  # ~1.6x faster on one core
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % max(1, steps // 8) == 0:
            print(f"  step {step:4d}  train loss {loss.item():.3f}  "
                  f"{time.perf_counter() - start:6.1f} s", flush=True)
    return model.eval()


def torch_logits(model, windows: np.ndarray, batch: int = 16) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate([model(input_ids=torch.from_numpy(w),
                                     attention_mask=torch.ones_like(torch.from_numpy(w))
                                     ).logits.float().numpy()
                               for w in np.array_split(windows, -(-len(windows) // batch))])


def ort_logits(path: Path, windows: np.ndarray, threads: int, batch: int = 16) -> np.ndarray:
    sess = cpu_session(str(path), threads)
    names = {i.name for i in sess.get_inputs()}
    out = []
    for w in np.array_split(windows, -(-len(windows) // batch)):
        feeds = {"input_ids": w, "attention_mask": np.ones_like(w)}
        out.append(sess.run(["logits"], {k: v for k, v in feeds.items() if k in names})[0])
    return np.concatenate(out)


def nll(logits: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Next-token negative log-likelihood (float64) at every position but each window's last."""
    x = logits[:, :-1].astype(np.float64)
    top = x.max(-1, keepdims=True)
    lse = np.log(np.exp(x - top).sum(-1)) + top[..., 0]
    return lse - np.take_along_axis(x, windows[:, 1:, None], -1)[..., 0]


def compile_variant(spec: Path, weights: Path, flags: list[str], out: Path) -> None:
    """`archc compile SPEC --weights W -O 2 -o OUT --weights-dtype ...`, the CLI's own path."""
    argv = ["compile", str(spec), "--weights", str(weights), "-O", "2", "-o", str(out),
            "--weights-dtype", *flags]
    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        rc = archc_main(argv)
    if rc != 0:
        raise SystemExit(f"archc {' '.join(argv)} failed:\n{log.getvalue()}")


def measure(args, folder: Path) -> None:
    import torch

    torch.set_num_threads(1)
    text = corpus()
    data = np.frombuffer(text, np.uint8)
    cut = len(data) * 9 // 10
    tail = data[cut:]
    windows = tail[:len(tail) // CTX * CTX].reshape(-1, CTX).astype(np.int64)
    if args.eval_windows:
        windows = windows[:args.eval_windows]
    print(f"corpus: stdlib {'/'.join(CORPUS)} *.py (Python {sysconfig.get_python_version()}), "
          f"{len(text):,} bytes, sha256 {hashlib.sha256(text).hexdigest()}\n"
          f"train: first {cut:,} bytes; eval: {len(windows)} windows x {CTX} from the last "
          f"{len(tail):,} bytes ({windows.size - len(windows):,} predicted bytes)")
    start = time.perf_counter()
    print(f"training {SHAPE['num_hidden_layers']} layers, hidden {SHAPE['hidden_size']}: "
          f"{args.steps} steps x {args.batch} x {CTX} tokens, 1 torch thread")
    model = train(data[:cut], args.steps, args.batch, args.lr)
    trained = time.perf_counter() - start
    print(f"  {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"trained in {trained:.1f} s")
    model.save_pretrained(folder / "hf", safe_serialization=True)
    with contextlib.redirect_stdout(io.StringIO()):
        import_hf(folder / "hf", folder / "archc")
    ref_torch = torch_logits(model, windows)
    ppl_torch = float(np.exp(nll(ref_torch, windows).mean()))
    print(f"torch float32: eval perplexity {ppl_torch:.5f} (vocab 256)")

    spec, weights = folder / "archc" / "model.arch", folder / "archc" / "model.safetensors"
    rows, ref, ref_nll = {}, None, None
    for name in args.variants.split(","):
        path = folder / f"{name.replace(' ', '_')}.onnx"
        t0 = time.perf_counter()
        compile_variant(spec, weights, VARIANTS[name], path)
        t1 = time.perf_counter()
        logits = ort_logits(path, windows, args.threads)
        t2 = time.perf_counter()
        losses = nll(logits, windows)
        if ref is None:
            ref, ref_nll = logits, losses
            rel = abs(np.exp(losses.mean()) / ppl_torch - 1)
            print(f"archc {name} vs torch: perplexity rel diff {rel:.2e}, max |dlogit| "
                  f"{np.abs(logits - ref_torch).max():.2e}")
            assert rel < TOLERANCE, f"archc {name} perplexity differs from torch's by {rel:.2e}"
        d = np.abs(logits - ref)
        rows[name] = (path.stat().st_size / 1e6, float(np.exp(losses.mean())), float(d.max()),
                      float(d.mean()), float((logits.argmax(-1) == ref.argmax(-1)).mean()),
                      float((logits[:, :-1].argmax(-1) == windows[:, 1:]).mean()),
                      float((losses - ref_nll).mean()), t1 - t0, t2 - t1)
    report(rows, args, time.perf_counter() - start)


def report(rows: dict, args, wall: float) -> None:
    ppl0 = next(iter(rows.values()))[1]
    print(f"\nonnxruntime CPU EP, {args.threads} intra-op thread(s); every figure against "
          f"{next(iter(rows))} (archc -O2, no KV cache); dnll = mean NLL change, nats/byte\n"
          f"{'variant':<16}{'file MB':>8}{'ppl':>9}{'dppl':>9}{'dppl %':>8}{'max|dlogit|':>12}"
          f"{'mean|dlogit|':>13}{'top-1 agr':>10}{'acc':>7}{'dnll':>9}{'compile s':>10}"
          f"{'eval s':>7}")
    for name, (mb, ppl, dmax, dmean, agree, acc, dnll, tc, te) in rows.items():
        print(f"{name:<16}{mb:8.2f}{ppl:9.4f}{ppl - ppl0:+9.4f}{(ppl / ppl0 - 1) * 100:+7.2f}%"
              f"{dmax:12.4f}{dmean:13.5f}{agree:10.4f}{acc:7.4f}{dnll:+9.5f}{tc:10.1f}{te:7.1f}")
    print(f"\nwall time {wall:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument("--eval-windows", type=int, default=0, help="0: the whole held-out tail")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", help="keep the checkpoint, spec and .onnx files in this folder")
    args = ap.parse_args()
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        measure(args, Path(args.out))
    else:
        with tempfile.TemporaryDirectory(prefix="archc-quality-") as tmp:
            measure(args, Path(tmp))


if __name__ == "__main__":
    main()
