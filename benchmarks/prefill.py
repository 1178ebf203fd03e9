"""Prefill latency of a LLaMA-shaped model on onnxruntime's CPU EP: -O1 against -O2.

The model (SPEC below): about 55M parameters, 8 layers, hidden 512, GQA 8 query / 2 kv heads
of 64, SwiGLU 1408, vocab 32000, random weights; batch 1, float32. With `--no-mask` the spec has
no padding mask, so attention's mask is only the causal one (the fused kernel then needs no
bias). -O2 runs three times: self-attention lowered to com.microsoft GroupQueryAttention (archc's
default: with the mask, behind the If of the fast path, which the all-ones mask takes), to the
exact path alone (GQA with the [B, 1, T, T] bias; sdpa_past.FAST_PATHS = False) and to ONNX
Attention (opset 23), so the choices in archc/ops/fused.py and sdpa_past.py are measured here
too. Every build is checked against -O1 on the same input first. Sessions are timed in turn
(interleaved) and each figure is the best of `--reps`; ratios are to -O1 in this run.
`--numpy T` also times the NumPy backend at -O1 and -O2 on T tokens.

Decode (`--past 128`, a list; 0 skips it): one new token after P cached ones, through the KV-cache
graph (`lower(..., cache=True)`): -O1; -O2 without the `sdpa_past` rules (cached attention then
lowers to ONNX Attention over concat(past, new) with a mask bias, as before issue 13); -O2 as
compiled (the all-ones mask takes the fast path: GroupQueryAttention with past, no bias); and
-O2 with `sdpa_past` lowered each way without the fast path (archc/ops/sdpa_past.py
CACHED_ATTENTION, FAST_PATHS = False): ONNX Attention over concat(past, new) (the default's
exact branch), ONNX Attention with past_key/past_value -> present_key/
present_value, and GroupQueryAttention with past. Each figure is the best of `--reps` means
over 20 steps; every build is checked against -O1 first.

`--rotary` times the two RotaryEmbedding kernels `rotary` could lower to, on x [1, 8, T, 64]:
ONNX's (opset 23: X, cos [B, T, R/2], sin) and com.microsoft's (input, position_ids, cos_cache
[T, R/2], sin_cache), full and half rotary, rotate-half and interleaved (archc/ops/rotary.py).

    python benchmarks/prefill.py [--threads 2] [--seqs 128,512,2048] [--reps 5] [--no-mask]
                                 [--past 128] [--rotary]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort

import archc
from archc.backends.onnx_export import export_onnx, model_bytes
from archc.backends.ort import cpu_session
from archc.ops import fused, sdpa_past

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


def builds(mask: bool) -> tuple[dict[str, bytes], tuple]:
    o1 = archc.compile(archc.parse(spec(mask), "llama_bench.arch"), level=1)
    o2 = archc.compile(archc.parse(spec(mask), "llama_bench.arch"), level=2)
    weights = archc.init_params(o1, 0)
    out = {"-O1": model_bytes(export_onnx(o1, weights, check=False))}
    for target, fast, label in (("gqa", True, "-O2 GroupQueryAttention"),
                                ("gqa", False, "-O2 GQA, exact path"),
                                ("onnx", False, "-O2 ONNX Attention")):
        fused.SELF_ATTENTION, sdpa_past.FAST_PATHS = target, fast
        try:
            out[label] = model_bytes(export_onnx(o2, weights, check=False))
        finally:
            fused.SELF_ATTENTION, sdpa_past.FAST_PATHS = "gqa", True
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


def decode_builds(mask: bool) -> dict[str, bytes]:
    from archc.lower import lower
    from archc.passes import fusions
    from archc.passes.fusions.attention import SdpaPast
    from archc.passes.rewrite import RuleSet

    module = archc.parse(spec(mask), "llama_bench.arch")
    o1 = archc.optimize(lower(module, cache=True), 1)
    weights = archc.init_params(o1, 0)
    saved = fusions.RULESETS
    fusions.RULESETS = tuple(RuleSet(r.name, tuple(x for x in r if not isinstance(x, SdpaPast)))
                             for r in saved)
    try:
        before = archc.optimize(lower(module, cache=True), 2)
    finally:
        fusions.RULESETS = saved
    o2 = archc.optimize(lower(module, cache=True), 2)
    print("fired at -O2 with a cache:", ", ".join(f"{k} x{v}" for k, v in
                                                  sorted(o2.meta["fusions"].fired.items())))
    out = {name: model_bytes(export_onnx(g, weights, check=False)) for name, g in
           (("-O1", o1), ("-O2 no sdpa_past", before))}
    default = sdpa_past.CACHED_ATTENTION
    for target, fast, label in (("concat", True, "-O2 fast path"),
                                ("concat", False, "-O2 Attention, concat"),
                                ("onnx", False, "-O2 Attention, past"),
                                ("gqa", False, "-O2 GQA, past")):
        sdpa_past.CACHED_ATTENTION, sdpa_past.FAST_PATHS = target, fast
        try:
            out[label] = model_bytes(export_onnx(o2, weights, check=False))
        finally:
            sdpa_past.CACHED_ATTENTION, sdpa_past.FAST_PATHS = default, True
    return out


def time_decode(past: list[int], mask: bool, threads: int, reps: int) -> None:
    sessions = {n: cpu_session(b, threads) for n, b in decode_builds(mask).items()}
    print(f"\ndecode: 1 token after P cached ones\n{'P':>6}  "
          + "  ".join(f"{name:>26}" for name in sessions))
    for p in past:
        rng = np.random.default_rng(p)
        feeds = {"input_ids": rng.integers(0, 32000, (1, 1))}
        if mask:
            feeds["attention_mask"] = np.ones((1, p + 1), np.int64)
        for i in range(8):
            for kind in ("key", "value"):
                feeds[f"past_key_values.{i}.{kind}"] = rng.standard_normal(
                    (1, 2, p, 64)).astype(np.float32)
        ref = None
        for name, sess in sessions.items():
            y = sess.run(["logits"], feeds)[0]
            ref = y if ref is None else ref
            diff = float(np.abs(y - ref).max())
            assert diff < 1e-3, f"{name} differs from -O1 by {diff} at P={p}"
        best = dict.fromkeys(sessions, np.inf)
        for _ in range(reps):
            for name, sess in sessions.items():
                start = time.perf_counter()
                for _ in range(20):
                    sess.run(None, feeds)
                best[name] = min(best[name], (time.perf_counter() - start) / 20)
        base = best["-O1"]
        print(f"{p:>6}  " + "  ".join(f"{best[n] * 1e3:9.2f} ms (x{base / best[n]:4.2f})"
                                      .rjust(26) for n in sessions))


def _rotary_model(kind: str, r: int, interleaved: int) -> bytes:
    from onnx import TensorProto, helper

    attrs = {"interleaved": interleaved, **({"rotary_embedding_dim": r} if r < 64 else {})}
    names = ["x", "cos", "sin"] if kind == "onnx" else ["x", "pos", "cos", "sin"]
    if kind == "onnx":
        node = helper.make_node("RotaryEmbedding", names, ["y"], **attrs)
    else:
        node = helper.make_node("RotaryEmbedding", ["x", "pos", "cos", "sin"], ["y"],
                                domain="com.microsoft", **attrs, **({"num_heads": 8} if r < 64
                                                                    else {}))
    ins = [helper.make_tensor_value_info(n, TensorProto.INT64 if n == "pos" else
                                         TensorProto.FLOAT, None) for n in names]
    graph = helper.make_graph([node], "rotary", ins, [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    opsets = [helper.make_opsetid("", 23), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=11).SerializeToString()


def time_rotary(threads: int, reps: int) -> None:
    print("\nRotaryEmbedding on x [1, 8, T, 64], best of mean over 50 runs (us)")
    print(f"{'T':>6} {'R':>3} {'interleaved':>11} {'ONNX':>8} {'contrib':>8}")
    for t, r, inter in [(t, r, i) for t in (1, 512) for r in (64, 32) for i in (0, 1)]:
        rng = np.random.default_rng(t)
        x = rng.standard_normal((1, 8, t, 64)).astype(np.float32)
        ang = (np.arange(t)[:, None] * rng.random(r // 2)).astype(np.float32)
        cos, sin = np.cos(ang), np.sin(ang)
        feeds = {"onnx": {"x": x, "cos": cos[None], "sin": sin[None]},
                 "ms": {"x": x, "pos": np.arange(t)[None], "cos": cos, "sin": sin}}
        sessions = {k: cpu_session(_rotary_model(k, r, inter), threads) for k in feeds}
        outs = [sessions[k].run(None, feeds[k])[0] for k in feeds]
        assert np.abs(outs[0] - outs[1]).max() < 1e-5
        best = dict.fromkeys(feeds, np.inf)
        for _ in range(3 * reps):
            for k, sess in sessions.items():
                start = time.perf_counter()
                for _ in range(50):
                    sess.run(None, feeds[k])
                best[k] = min(best[k], (time.perf_counter() - start) / 50)
        print(f"{t:>6} {r:>3} {inter:>11} {best['onnx'] * 1e6:8.1f} {best['ms'] * 1e6:8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seqs", default="128,512,2048")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-mask", dest="mask", action="store_false")
    ap.add_argument("--numpy", type=int, default=0, metavar="T")
    ap.add_argument("--past", default="128", help="decode after these cache lengths (0: none)")
    ap.add_argument("--rotary", action="store_true", help="time the RotaryEmbedding kernels")
    args = ap.parse_args()
    print(f"onnxruntime {ort.__version__}, CPU EP, {args.threads} threads, batch 1, float32, "
          f"{'causal + padding mask' if args.mask else 'causal mask only'}")
    blobs, graphs = builds(args.mask)
    sessions = {name: cpu_session(blob, args.threads) for name, blob in blobs.items()}
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
    past = [int(p) for p in args.past.split(",") if int(p)]
    if past:
        time_decode(past, args.mask, args.threads, args.reps)
    if args.rotary:
        time_rotary(args.threads, args.reps)


if __name__ == "__main__":
    main()
