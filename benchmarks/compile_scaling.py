"""Compile time (parse -> optimized IR -> ONNX graph without weights) against depth, at -O1
and at -O2 (every fusion rule on).

Prints one row per depth and the ratios to the 2-layer time, measured in this run. Target: the
80-layer spec in under 1 s with all rules on, time linear in layers (ratio close to layers / 2).

    python benchmarks/compile_scaling.py
"""

from __future__ import annotations

import time

import archc

SPEC = """
model decoder_{n} {{
  let vocab = 32000, d = 4096, heads = 32, kv = 8, ff = 11008
  input input_ids: int64[batch, seq]
  input attention_mask: int64[batch, seq]
  x = embed(input_ids, vocab, d) as embed_tokens
  repeat {n} as layers {{
    x = x + attention(rms_norm(x) as input_norm, heads, kv_heads = kv, causal,
                      mask = attention_mask, rope = rope(theta = 10000), bias = false) as attn
    x = x + swiglu(rms_norm(x) as post_norm, ff) as mlp
  }}
  output logits = lm_head(rms_norm(x) as norm, vocab)
}}
"""


def compile_once(n: int, level: int) -> tuple[float, int]:
    start = time.perf_counter()
    graph = archc.compile(archc.parse(SPEC.format(n=n), f"decoder_{n}.arch"), level=level)
    model = archc.export_onnx(graph, weights=None, check=False)
    return time.perf_counter() - start, len(model.graph.node)


def main() -> None:
    compile_once(2, 2)  # warm the parser cache and imports
    for level in (1, 2):
        rows = []
        for n in (2, 8, 32, 80):
            best = min(compile_once(n, level) for _ in range(3))
            rows.append((n, *best))
        base = rows[0][1]
        print(f"-O{level}\n{'layers':>6} {'seconds':>9} {'onnx nodes':>11} {'time ratio':>11} "
              f"{'layer ratio':>12}")
        for n, t, nodes in rows:
            print(f"{n:>6} {t:>9.3f} {nodes:>11} {t / base:>11.2f} {n / 2:>12.1f}")
        per_layer = (rows[-1][1] - rows[0][1]) / (rows[-1][0] - rows[0][0])
        print(f"marginal cost {per_layer * 1000:.2f} ms/layer; 80 layers: {rows[-1][1]:.3f} s "
              f"({'meets' if rows[-1][1] < 1.0 else 'misses'} the 1 s target)\n")


if __name__ == "__main__":
    main()
