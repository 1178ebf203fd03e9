"""Sparse experts: a top-2-of-8 MoE decoder, dense -O1 against sparse -O2 (issue 13).

The model (SPEC below): 4 layers, hidden 512, 8 heads, `moe` FFNs of 8 SwiGLU experts of
1408 with top-2 routing, vocab 4096, random weights; batch 1, float32. -O1 runs every expert
on every token (the dense form the `moe` block lowers to); "-O1 +experts" applies only the
`experts` rule set (archc/passes/fusions/experts.py) to it, which isolates the saving; -O2 is
the full pipeline (attention and norm fusions too). Every build is checked against -O1 first.
onnxruntime sessions are timed in turn (interleaved), each figure is the best of `--reps`, and
the ratios are to -O1 in this run. The NumPy backend is timed on `--numpy-seqs` (its dense
form is a broadcast matmul [B,T,1,1,d] @ [E,d,h], which NumPy runs as one small product per
token and expert, so it is slow: keep T small there).

`--layer T` also times one MoE layer on onnxruntime both ways it could be lowered: archc's
per-expert NonZero/Gather/MatMul/ScatterND chain and onnxruntime's com.microsoft `MoE` kernel
(CPU: interleaved SwiGLU only, its own softmax + top-k routing), on the same routed tokens,
and the chain again with every gate non-zero (every expert on every token as one GEMM each:
the dense work done with the sparse form's kernels, so that ratio is the saving in work alone).

    python benchmarks/moe_sparse.py [--threads 2] [--seqs 128,512] [--reps 3]
                                    [--numpy-seqs 128] [--layer 512]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import archc
from archc.backends.onnx_export import export_onnx, model_bytes
from archc.backends.ort import cpu_session
from archc.ir.graph import Graph
from archc.ir.types import TensorType
from archc.lower import lower
from archc.ops import OPS
from archc.passes.fusions.experts import EXPERTS
from archc.passes.infer_shapes import infer_node
from archc.passes.rewrite import apply_rules

E, K, D, FF, VOCAB = 8, 2, 512, 1408, 4096
SPEC = f"""
model moe_bench {{
  let vocab = {VOCAB}, d = {D}, heads = 8, experts = {E}, top_k = {K}, ff = {FF}, layers = 4
  input input_ids: int64[batch, seq]
  x = embed(input_ids, vocab, d) as embed_tokens
  repeat layers as layers {{
    x = x + attention(rms_norm(x) as attn_norm, heads, causal, rope = rope(),
                      bias = false) as attn
    x = x + moe(rms_norm(x) as ffn_norm, experts, top_k, ff) as moe
  }}
  output logits = lm_head(rms_norm(x) as norm, vocab)
}}
"""


def graphs() -> dict[str, Graph]:
    module = archc.parse(SPEC, "moe_bench.arch")
    o1 = archc.optimize(lower(module), 1)
    iso = archc.optimize(lower(module), 1)
    fired = apply_rules(iso, [EXPERTS])
    iso = archc.optimize(iso, 1)
    o2 = archc.optimize(lower(module), 2)
    print(f"-O1 +experts fired: {dict(fired)}; -O2 fired: "
          + ", ".join(f"{k} x{v}" for k, v in sorted(o2.meta["fusions"].fired.items())))
    return {"-O1 (dense)": o1, "-O1 +experts": iso, "-O2 (sparse)": o2}


def _best(fns: dict, reps: int) -> dict[str, float]:
    best = dict.fromkeys(fns, np.inf)
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _row(label, best: dict[str, float], width: int = 26) -> str:
    base = next(iter(best.values()))
    return f"{label:>8}  " + "  ".join(f"{t * 1e3:9.1f} ms (x{base / t:5.2f})".rjust(width)
                                       for t in best.values())


def time_models(gs: dict[str, Graph], weights, seqs, numpy_seqs, threads: int, reps: int):
    sessions = {n: cpu_session(model_bytes(export_onnx(g, weights, check=False)), threads)
                for n, g in gs.items()}
    print(f"\nonnxruntime, CPU EP, {threads} threads\n{'T':>8}  "
          + "  ".join(f"{n:>26}" for n in sessions))
    for t in seqs:
        feeds = {"input_ids": np.random.default_rng(t).integers(0, VOCAB, (1, t))}
        outs = {n: s.run(None, feeds)[0] for n, s in sessions.items()}  # warm up and check
        ref = next(iter(outs.values()))
        for n, y in outs.items():
            assert np.abs(y - ref).max() <= 1e-4, f"{n} differs from -O1 at T={t}"
        print(_row(t, _best({n: (lambda s=s, f=feeds: s.run(None, f)) for n, s in sessions.items()},
                            reps)))
    print(f"\nNumPy backend\n{'T':>8}  " + "  ".join(f"{n:>26}" for n in gs))
    for t in numpy_seqs:
        feeds = {"input_ids": np.random.default_rng(t).integers(0, VOCAB, (1, t))}
        fns = {n: (lambda g=g, f=feeds: archc.run(g, f, weights)) for n, g in gs.items()}
        print(_row(t, _best(fns, 1)))


def _moe_layer_graph(t: int) -> Graph:
    g = Graph("layer")
    x = g.add_input("x", TensorType("float32", (1, t, D)))
    gates = g.add_input("gates", TensorType("float32", (1, t, E)))
    ws = [g.add_param(n, TensorType("float32", s)) for n, s in
          (("w1", (E, D, FF)), ("w3", (E, D, FF)), ("w2", (E, FF, D)))]
    node = g.add_op("moe_experts", [x, gates, *ws], {"act": "silu", "gated": True, "bias": False})
    node.type = infer_node(node)
    g.set_output("y", node)
    return g


def _ms_moe(t: int, w1, w3, w2) -> bytes:
    """com.microsoft MoE: weights [E, out, in], gate and up interleaved row by row."""
    fc1 = np.stack([w1, w3], axis=3).reshape(E, D, 2 * FF).transpose(0, 2, 1)
    inits = [numpy_helper.from_array(np.ascontiguousarray(a), n) for n, a in
             (("fc1", fc1), ("fc2", w2.transpose(0, 2, 1)))]
    node = helper.make_node("MoE", ["x", "logits", "fc1", "", "fc2"], ["y"],
                            domain="com.microsoft", k=K, activation_type="swiglu",
                            swiglu_fusion=1, normalize_routing_weights=1,
                            activation_alpha=1.0, activation_beta=0.0)
    vi = helper.make_tensor_value_info
    graph = helper.make_graph([node], "ms_moe", [vi("x", TensorProto.FLOAT, [t, D]),
                                                 vi("logits", TensorProto.FLOAT, [t, E])],
                              [vi("y", TensorProto.FLOAT, [t, D])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                   helper.make_opsetid("com.microsoft", 1)]
                             ).SerializeToString()


def time_layer(t: int, threads: int, reps: int) -> None:
    rng = np.random.default_rng(0)
    w1, w3 = (rng.normal(0, 0.03, (E, D, FF)).astype(np.float32) for _ in range(2))
    w2 = rng.normal(0, 0.03, (E, FF, D)).astype(np.float32)
    x = rng.standard_normal((t, D)).astype(np.float32)
    logits = rng.standard_normal((t, E)).astype(np.float32)
    gates = OPS["moe_gates"].numpy(logits, k=K)
    chain = cpu_session(model_bytes(export_onnx(_moe_layer_graph(t), {"w1": w1, "w3": w3,
                                                                  "w2": w2}, check=False)),
                     threads)
    ms = cpu_session(_ms_moe(t, w1, w3, w2), threads)
    feeds = {"x": x[None], "gates": gates[None]}
    every = {"x": x[None], "gates": OPS["softmax"].numpy(logits, axis=-1)[None]}
    diff = np.abs(chain.run(None, feeds)[0][0] - ms.run(None, {"x": x, "logits": logits})[0])
    best = _best({"archc chain": lambda: chain.run(None, feeds),
                  "com.microsoft MoE": lambda: ms.run(None, {"x": x, "logits": logits}),
                  "chain, all 8 experts": lambda: chain.run(None, every)}, reps)
    print(f"\none MoE layer on onnxruntime, T={t} (max difference {diff.max():.2g})\n"
          f"{'T':>8}  " + "  ".join(f"{n:>26}" for n in best) + "\n" + _row(t, best))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seqs", default="128,512")
    ap.add_argument("--numpy-seqs", default="128")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--layer", type=int, default=512, metavar="T")
    args = ap.parse_args()
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    print(f"onnxruntime {ort.__version__}; top-{K} of {E} experts, d {D}, hidden {FF}, "
          "4 layers, batch 1, float32")
    gs = graphs()
    weights = archc.init_params(gs["-O1 (dense)"], 0)
    time_models(gs, weights, ints(args.seqs), ints(args.numpy_seqs), args.threads, args.reps)
    if args.layer:
        time_layer(args.layer, args.threads, args.reps)


if __name__ == "__main__":
    main()
