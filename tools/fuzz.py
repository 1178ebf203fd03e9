"""Seeded mutation fuzzing of archc's input boundaries, through the CLI, in-process.

    python tools/fuzz.py --cases 100000 [--seed 0] [--jobs 2] [--targets spec,config,...]
                         [--timeout 10] [--save fuzz-findings/]

Targets, each a seed corpus and a mutator:

- `spec`: the bundled specs and a tiny one, mutated by bytes (flip, insert, delete, duplicate),
  by grammar tokens (`(`, `**`, `repeat 4096 {`, deep nesting, NUL, BOM, huge numbers) and by
  splicing lines between specs; run as `archc check`.
- `config`: the config.json of every Hugging Face fixture, mutated by field (hostile values:
  strings for ints, negatives, NaN, lists, newlines, deep nesting; fields dropped) and by
  bytes; run as `archc import-hf --config-only`, and one case in eight with the weights.
- `safetensors`: the weights of a tiny model, mutated in the header (dtype, shape, offsets,
  names) and in the bytes (flip, truncate, extend); run as `archc run --weights`.
- `npz`: the inputs of the tiny model, mutated by dtype, shape, values (negative, huge,
  NaN, fractions) and names, or as raw bytes; run as `archc run --inputs`, on NumPy and,
  one case in eight, onnxruntime.

A case passes when the CLI exits 0, or 1 with a diagnostic on stderr (argparse's 2 too). A
finding is an internal error (exit 70: an exception archc did not turn into a diagnostic), an
exception that escaped `main`, or a case that ran past `--timeout` seconds (a hang). Findings
are grouped by their first line; with `--save`, each group's first input is written there.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import random
import signal
import sys
import tempfile
import time
import warnings
from collections import Counter
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("spec", "config", "safetensors", "npz")
TINY = """model tiny {
  let vocab = 50, d = 16, heads = 2, layers = 2, eps = 1e-5
  input input_ids: int64[batch, seq]
  input attention_mask: int64[batch, seq]
  x = embed(input_ids, vocab, d) as wte
  x = x + pos_embed(input_ids, 12, d) as wpe
  repeat layers as h {
    x = x + attention(layer_norm(x, eps) as ln_1, heads, causal, mask = attention_mask) as attn
    x = x + mlp(layer_norm(x, eps) as ln_2, 2 * d, act = gelu_tanh) as mlp
  }
  output logits = lm_head(layer_norm(x, eps) as ln_f, vocab, tied = wte)
}
"""
TOKENS = ["(", ")", "{", "}", "[", "]", ",", "=", "**", "*", "-", "+", "//", "%", ".", ":",
          "repeat 4096 {", "repeat 0 {", "10 ** 10 ** 10", "(688)", "-1", "0", "1e309", "nan",
          "9" * 30, "\x00", "\ufeff", "\u202e", "\udcff", "((((((((((", "]" * 50, "let ",
          "model ", "block f(x) { return f(x) + f(x) }", "input input_ids: int64[batch, seq]",
          "as ", "if ", "else ", "true", "\n", "#", '"', "output ", "causal", "tied = wte"]
HOSTILE = [-1, 0, -32, 1, 2**31, 2**64, 10**30, 1.5, -0.0, float("nan"), float("inf"), "32",
           "96, zz = 3", "a\nmodel evil {", "", None, True, False, [], [1, 2], {}, {"a": 1},
           "gelu", "relu", "rope", "default", "linear", "sliding_attention", ["x"] * 3,
           "\u202e", "x" * 300, [[[[[]]]]]]


class Hang(BaseException):  # not an Exception: archc's own handlers must not catch it
    pass


def _alarm(signum, frame):
    raise Hang()


# ---------------------------------------------------------------- mutators
def mutate_bytes(rng: random.Random, data: bytes, rounds: int = 3) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, rounds)):
        op = rng.randrange(6)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(i, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i:i] = bytes([rng.randrange(256)])
        elif op == 2:
            del b[i:i + rng.randint(1, 16)]
        elif op == 3:
            j = rng.randrange(len(b) + 1)
            b[i:i] = b[min(i, j):max(i, j)][:256]
        elif op == 4:
            b[i:i] = rng.choice(TOKENS).encode("utf-8", "surrogateescape")
        else:
            del b[i:]
    return bytes(b)


def mutate_spec(rng: random.Random, corpus: list[str]) -> bytes:
    text = rng.choice(corpus)
    kind = rng.randrange(4)
    if kind == 0:
        return mutate_bytes(rng, text.encode())
    if kind == 1:  # grammar tokens at token boundaries
        words = text.split(" ")
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(TOKENS))
        return " ".join(words).encode("utf-8", "surrogateescape")
    if kind == 2:  # splice lines of two specs
        a, b = text.splitlines(), rng.choice(corpus).splitlines()
        i, j = rng.randrange(len(a) + 1), rng.randrange(len(b) + 1)
        return "\n".join(a[:i] + b[j:j + rng.randint(1, 5)] + a[i:]).encode()
    if rng.randrange(3) == 0:  # deep nesting and runaway expressions in a `let`
        depth = rng.choice([50, 1000, 100_000])
        expr = rng.choice(["(" * depth + "1" + ")" * depth, "-" * depth + "1",
                           " + ".join(["1"] * depth), "2 ** " * 30 + "2", "10 ** 10 ** 10"])
        return text.replace("let ", f"let z = {expr}, ", 1).encode()
    # numbers: replace one with a hostile one
    nums = [w for w in text.replace(",", " ").split() if w.isdigit()]
    if not nums:
        return text.encode()
    hostile = rng.choice(["0", "-1", "-5", "1" + "0" * rng.randint(6, 40), "4096", "3.5"])
    return text.replace(rng.choice(nums), hostile, 1).encode()


def hostile(rng: random.Random):
    return copy.deepcopy(rng.choice(HOSTILE))  # a fresh copy: no shared (or circular) values


def mutate_config(rng: random.Random, config: dict) -> bytes:
    c = copy.deepcopy(config)
    if rng.randrange(6) == 0:
        return mutate_bytes(rng, json.dumps(c, indent=2).encode())
    for _ in range(rng.randint(1, 3)):
        key = rng.choice(sorted(c))
        op = rng.randrange(5)
        if op == 0:
            del c[key]
        elif op == 1 and isinstance(c[key], dict) and c[key]:
            c[key][rng.choice(sorted(c[key]))] = hostile(rng)
        elif op == 2 and rng.randrange(20) == 0:
            c = rng.choice([[c], "config", 5, "[" * 100000 + "]" * 100000])
            break
        else:
            c[key] = hostile(rng)
    if isinstance(c, str) and c.startswith("["):
        return c.encode()
    return json.dumps(c, indent=2).encode()


def mutate_safetensors(rng: random.Random, data: bytes) -> bytes:
    if rng.randrange(2):
        return mutate_bytes(rng, data)
    n = int.from_bytes(data[:8], "little")
    header, rest = json.loads(data[8:8 + n]), data[8 + n:]
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    op = rng.randrange(6)
    if op == 0:
        header[name]["dtype"] = rng.choice(["I8", "U8", "BOOL", "F16", "BF16", "F64", "F8_E4M3",
                                            "I64", "X", 5, None])
    elif op == 1:
        header[name]["shape"] = rng.choice([[], [-1], [0], [2**40], ["a"], [1.5], None,
                                            header[name]["shape"][::-1]])
    elif op == 2:
        header[name]["data_offsets"] = rng.choice([[0, 0], [-4, 0], [0, 2**62], [5], "x",
                                                   [8, 4]])
    elif op == 3:
        header[rng.choice(["x", name + "x", "__metadata__"])] = hostile(rng)
    elif op == 4:
        del header[name]
    else:
        header = hostile(rng)
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + rest


def mutate_npz(rng: random.Random, arrays: dict[str, np.ndarray]) -> bytes:
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _mutate_npz(rng, arrays)


def _mutate_npz(rng: random.Random, arrays: dict[str, np.ndarray]) -> bytes:
    a = dict(arrays)
    for _ in range(rng.randint(1, 2)):
        name = rng.choice(sorted(a) or ["input_ids"])
        x = a.get(name, np.zeros((1, 3), np.int64))
        op = rng.randrange(8)
        if op == 0:
            a[name] = x.astype(rng.choice([np.int32, np.int8, np.uint64, np.float32, np.float16,
                                           np.bool_, np.complex64, "U3"]))
        elif op == 1:
            a[name] = rng.choice([x.reshape(-1), x[None], x.reshape(-1)[:0], x.T,
                                  np.zeros(()), x.reshape(-1)[:, None]])
        elif op == 2:
            v = x.copy().astype(np.int64)
            if v.size:
                v.flat[rng.randrange(v.size)] = rng.choice([-1, -2**63, 2**62, 50, 12, 2, 10**9])
            a[name] = v
        elif op == 3:
            a[name] = np.array([[0.5, np.nan, np.inf]])
        elif op == 4:
            del a[name]
        elif op == 5:
            a[name + rng.choice(["", "_x"])] = np.concatenate([x, x], axis=-1) if x.ndim else x
        elif op == 6:
            a[name] = np.repeat(x, rng.choice([0, 2, 20]), axis=-1) if x.ndim else x
        else:
            a["token_type_ids"] = np.zeros_like(x)
    buf = io.BytesIO()
    np.savez(buf, **a)
    data = buf.getvalue()
    return mutate_bytes(rng, data, 2) if rng.randrange(8) == 0 else data


# ---------------------------------------------------------------- cases
class Fuzzer:
    """One worker's corpora and scratch folder."""

    def __init__(self, workdir: Path):
        import archc

        self.dir = workdir
        self.specs = [TINY] + [p.read_text() for p in sorted((ROOT / "specs").glob("*.arch"))]
        fixtures = ROOT / "tests" / "fixtures" / "hf"
        self.configs = {p.parent.name: json.loads(p.read_text())
                        for p in sorted(fixtures.glob("*/config.json"))}
        self.fixtures = fixtures
        (workdir / "tiny.arch").write_text(TINY)
        g = archc.compile(TINY)
        archc.save_weights(archc.init_params(g, 1), str(workdir / "w.safetensors"))
        self.weights = (workdir / "w.safetensors").read_bytes()
        ids = np.array([[1, 2, 3, 4], [5, 6, 7, 0]], np.int64)
        self.inputs = {"input_ids": ids, "attention_mask": np.array([[1, 1, 1, 1], [1, 1, 1, 0]])}

    def case(self, target: str, rng: random.Random) -> tuple[list[str], dict[str, bytes]]:
        """(argv, files to write first) of one mutated case."""
        d = str(self.dir)
        if target == "spec":
            return ["check", f"{d}/case.arch"], {"case.arch": mutate_spec(rng, self.specs)}
        if target == "config":
            name = rng.choice(sorted(self.configs))
            with_weights = rng.randrange(8) == 0
            files = {"ckpt/config.json": mutate_config(rng, self.configs[name])}
            if with_weights:
                files["ckpt/model.safetensors"] = (self.fixtures / name /
                                                   "model.safetensors").read_bytes()
            argv = ["import-hf", f"{d}/ckpt", "-o", f"{d}/out"]
            return argv + ([] if with_weights else ["--config-only"]), files
        if target == "safetensors":
            return (["run", f"{d}/tiny.arch", "--weights", f"{d}/case.safetensors", "--seq", "3",
                     "--out", f"{d}/out.npz"] + (["--strict"] if rng.randrange(2) else []),
                    {"case.safetensors": mutate_safetensors(rng, self.weights)})
        backend = "onnxruntime" if rng.randrange(8) == 0 else "numpy"
        return (["run", f"{d}/tiny.arch", "--inputs", f"{d}/case.npz", "--out", f"{d}/out.npz",
                 "--backend", backend], {"case.npz": mutate_npz(rng, self.inputs)})

    def run(self, target: str, seed: int, timeout: float) -> tuple[str, str | None, dict]:
        """('ok' | 'internal' | 'escaped' | 'hang', first line of a finding, files)."""
        from archc.cli import main

        rng = random.Random(f"{target}:{seed}")
        try:
            argv, files = self.case(target, rng)
        except Exception as e:  # a bug of this harness: reported, and the run goes on
            return "harness", f"harness {target}: {type(e).__name__}: {e}", {}
        for stale in ("ckpt/model.safetensors",):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / stale).unlink()
        for name, data in files.items():
            (self.dir / name).parent.mkdir(parents=True, exist_ok=True)
            (self.dir / name).write_bytes(data)
        err = io.StringIO()
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code
        except Hang:
            return "hang", f"{target}: ran past {timeout}s", files
        except Exception as e:
            return "escaped", f"{target}: {type(e).__name__}: {str(e)[:120]}", files
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        text = err.getvalue()
        if code == 70:
            line = next((x for x in text.splitlines() if "internal error" in x), text[:120])
            return "internal", f"{target}: {line[:160]}", files
        if code not in (0, 1, 2) or "Traceback" in text or (code != 0 and not text.strip()):
            return "escaped", f"{target}: exit {code}: {text[:120]!r}", files
        return "ok", None, files


def _worker(job: tuple[str, int, int, float]) -> tuple[Counter, dict]:
    target, start, count, timeout = job
    os.environ.setdefault("ARCHC_MAX_BYTES", "1G")
    with tempfile.TemporaryDirectory() as tmp:
        f = Fuzzer(Path(tmp))
        tally, findings = Counter(), {}
        for seed in range(start, start + count):
            outcome, line, files = f.run(target, seed, timeout)
            tally[(target, outcome)] += 1
            if line is not None and line not in findings:
                findings[line] = (seed, files)
    return tally, findings


def fuzz(cases: int, seed: int = 0, targets=TARGETS, jobs: int = 1, timeout: float = 10.0,
         chunk: int = 250, progress: bool = False):
    """Run `cases` cases split evenly over `targets`; returns (Counter, findings)."""
    per = max(1, cases // len(targets))
    work = [(t, seed * 10**9 + i, min(chunk, per - i), timeout)
            for t in targets for i in range(0, per, chunk)]
    tally, findings = Counter(), {}
    if jobs == 1:
        results = map(_worker, work)
    else:
        pool = Pool(jobs)
        results = pool.imap_unordered(_worker, work)
    for t, f in results:
        tally.update(t)
        for line, v in f.items():
            findings.setdefault(line, v)
        if progress:
            print(f"  {sum(tally.values())} cases, {len(findings)} findings", file=sys.stderr,
                  flush=True)
    return tally, findings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--save", help="a folder to write each finding's input to")
    args = ap.parse_args()
    start = time.time()
    tally, findings = fuzz(args.cases, args.seed, tuple(args.targets.split(",")), args.jobs,
                           args.timeout, progress=True)
    for (target, outcome), n in sorted(tally.items()):
        print(f"{target:12} {outcome:9} {n}")
    print(f"{sum(tally.values())} cases in {time.time() - start:.0f}s; "
          f"{len(findings)} distinct findings")
    for line, (seed, files) in sorted(findings.items()):
        print(f"  seed {seed}: {line}")
        if args.save:
            folder = Path(args.save) / f"{line.split(':')[0]}-{seed}"
            for name, data in files.items():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(data)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
