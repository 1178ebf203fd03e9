"""Decode with quantized experts: a top-2-of-8 MoE decoder's `--kv-cache` export, float32
against int4 (`archc compile -O2 --weights-dtype int4`, whose `moe_experts_nbits` runs one
MatMulNBits per expert on its routed tokens).

The model (SPEC below): 4 layers, hidden 512, 8 heads over 2 KV heads, `moe` FFNs of 8 SwiGLU
experts of 1024 with top-2 routing (the experts are 88% of the weights), vocab 4096, random
weights from archc's seeded init; batch 1. One decode step (1 new token) on top of `--past`
tokens of cache that the same session filled by a prefill, on onnxruntime's CPU EP with
`--threads` threads; sessions timed in turn (interleaved), each figure the median of `--reps`
steps and the best; file size from the serialized model; quality as max |dlogit| and top-1
agreement of a full-sequence run against float32. Variants: int4 symmetric with int8
activations (archc's default accuracy_level 4) and with float32 activations (acc0). With
random weights the routers' top-2 choices are near ties, so any weight change flips some
routes: noise of 1e-3 relative on the float32 weights alone gives max |dlogit| 1.7 (max |logit|
2.0) and top-1 0.78. Read the quality columns as a smoke test; tests/test_quantize_experts.py
checks the quantized numbers exactly (against the float32 model over the dequantized weights).

    nice python benchmarks/moe_quantized.py [--threads 2] [--past 128] [--reps 30]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

import archc
from archc.backends.onnx_export import export_onnx, model_bytes
from archc.backends.ort import cpu_session
from archc.lower import lower
from archc.quantize import quantize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantized_decode import decode_feeds, step_times  # one prefill helper, one timer

SPEC = """
model moe_decode {
  let vocab = 4096, d = 512, heads = 8, kv = 2, experts = 8, top_k = 2, ff = 1024, layers = 4
  input input_ids: int64[batch, seq]
  input attention_mask: int64[batch, seq]
  x = embed(input_ids, vocab, d) as embed_tokens
  repeat layers as layers {
    x = x + attention(rms_norm(x) as attn_norm, heads, kv_heads = kv, causal,
                      mask = attention_mask, rope = rope(), bias = false) as attn
    x = x + moe(rms_norm(x) as ffn_norm, experts, top_k, ff) as moe
  }
  output logits = lm_head(rms_norm(x) as norm, vocab)
}
"""
VARIANTS = {"fp32": None, "int4 sym": {"accuracy_level": 4},
            "int4 sym acc0": {"accuracy_level": 0}}


def export(cache: bool, variant: str, weights) -> bytes:
    graph = archc.api.optimize(lower(archc.parse(SPEC, "moe_decode.arch"), None, cache=cache), 2)
    assert graph.meta["fusions"].fired["moe_experts"] == 4
    stored = {k: weights[k] for k in graph.params}
    if VARIANTS[variant] is not None:
        graph, stored = quantize(graph, stored, "int4", 32, True, **VARIANTS[variant])
        assert sum(n.op == "moe_experts_nbits" for n in graph.nodes()) == 4
    return model_bytes(export_onnx(graph, stored, check=False))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--past", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    graph = archc.compile(archc.parse(SPEC, "moe_decode.arch"), level=2)
    weights = archc.init_params(graph, 0)
    experts = sum(w.size for k, w in weights.items() if ".experts." in k)
    total = sum(w.size for w in weights.values())
    print(f"onnxruntime {ort.__version__}, CPU EP, {args.threads} threads, batch 1, "
          f"{total / 1e6:.1f}M parameters ({experts / total:.0%} in experts), block 32")
    ids = np.random.default_rng(1).integers(0, 4096, (1, args.tokens))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    rows, ref = {}, None
    for name in VARIANTS:  # size and quality: one full-sequence run each
        blob = export(False, name, weights)
        logits = cpu_session(blob, args.threads).run(["logits"], feeds)[0]
        ref = logits if ref is None else ref
        rows[name] = (len(blob) / 1e6, float(np.abs(logits - ref).max()),
                      float((logits.argmax(-1) == ref.argmax(-1)).mean()))
    sessions = {name: cpu_session(export(True, name, weights), args.threads) for name in VARIANTS}
    step = {name: decode_feeds(s, args.past, np.random.default_rng(2), 4096)
            for name, s in sessions.items()}
    times = step_times(sessions, step, args.reps)
    base = times["fp32"]
    print(f"\ndecode step with {args.past} tokens of past; quality on {args.tokens} tokens vs "
          f"fp32 (max |logit| {np.abs(ref).max():.2f})\n{'variant':<15}{'file MB':>8}"
          f"{'median ms':>10}{'x':>7}{'best ms':>9}{'x':>7}{'max|dlogit|':>12}{'top-1':>7}")
    for name, (mb, diff, top1) in rows.items():
        t = times[name]
        print(f"{name:<15}{mb:8.1f}{t[0] * 1e3:10.2f}{base[0] / t[0]:6.2f}x{t[1] * 1e3:9.2f}"
              f"{base[1] / t[1]:6.2f}x{diff:12.4f}{top1:7.3f}")


if __name__ == "__main__":
    main()
