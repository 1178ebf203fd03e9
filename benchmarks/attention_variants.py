"""Which attention form is fastest on onnxruntime's CPU EP for causal, padding-masked GQA prefill?

One attention core (no projections) on q [1, H, T, D] and k, v [1, KV, T, D] as archc's graph
holds them after rotary, and a causal+padding keep mask [1, 1, T, T] (built once per model, so
its cost is not timed). Every variant takes exactly those tensors, so layout changes a fused op
needs (BNSH -> BSD for the com.microsoft ops) are part of its time. Each variant is checked
against the unfused one before it is timed. Ratios are to the unfused form, measured in this run.

    python benchmarks/attention_variants.py [--threads 2] [--seqs 512,2048] [--reps 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from archc.backends.ort import cpu_session

H, KV, D = 8, 2, 64  # the LLaMA-shaped benchmark model: hidden 512, GQA 8/2
G = H // KV
LOWEST = float(np.finfo(np.float32).min)
F, B8, I64, I32 = TensorProto.FLOAT, TensorProto.BOOL, TensorProto.INT64, TensorProto.INT32


def _c(name, arr):
    return helper.make_tensor(name, {np.float32: F, np.int64: I64, np.int32: I32}[
        arr.dtype.type], arr.shape, arr.reshape(-1).tolist())


def _model(nodes, inits, opset=23, extra_inputs=()) -> bytes:
    inputs = [helper.make_tensor_value_info("q", F, [1, H, "T", D]),
              helper.make_tensor_value_info("k", F, [1, KV, "T", D]),
              helper.make_tensor_value_info("v", F, [1, KV, "T", D]),
              helper.make_tensor_value_info("keep", B8, [1, 1, "T", "T"]), *extra_inputs]
    out = helper.make_tensor_value_info("y", F, None)
    g = helper.make_graph(nodes, "attn", inputs, [out], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset),
                                            helper.make_opsetid("com.microsoft", 1)],
                          ir_version=10)
    return m.SerializeToString()


def _n(op, ins, outs, domain="", **attrs):
    return helper.make_node(op, ins, outs, domain=domain, **attrs)


def _bias_nodes():
    """keep -> additive float bias: 0 where kept, float32's lowest where masked."""
    return [_n("Where", ["keep", "zero", "lowest"], ["bias"])], [
        _c("zero", np.array(0, np.float32)), _c("lowest", np.array(LOWEST, np.float32))]


def unfused() -> bytes:
    """archc -O1 today: Tile-repeated kv, scale after the matmul, Where mask, Softmax."""
    nodes = [
        _n("Unsqueeze", ["k", "ax2"], ["k5"]), _n("Tile", ["k5", "reps"], ["kt"]),
        _n("Reshape", ["kt", "shp"], ["kr"]),
        _n("Unsqueeze", ["v", "ax2"], ["v5"]), _n("Tile", ["v5", "reps"], ["vt"]),
        _n("Reshape", ["vt", "shp"], ["vr"]),
        _n("Transpose", ["kr"], ["kT"], perm=[0, 1, 3, 2]), _n("MatMul", ["q", "kT"], ["s0"]),
        _n("Mul", ["s0", "scale"], ["s1"]), _n("Where", ["keep", "s1", "lowest"], ["s2"]),
        _n("Softmax", ["s2"], ["p"], axis=-1), _n("MatMul", ["p", "vr"], ["y"])]
    inits = [_c("ax2", np.array([2], np.int64)), _c("reps", np.array([1, 1, G, 1, 1], np.int64)),
             _c("shp", np.array([0, H, -1, D], np.int64)),
             _c("scale", np.array(D ** -0.5, np.float32)),
             _c("lowest", np.array(LOWEST, np.float32))]
    return _model(nodes, inits)


def grouped() -> bytes:
    """Plain ONNX, fused by hand: q pre-scaled, the G query heads of one kv head stacked on the
    query axis ([1, KV, G*T, D]) so k and v are never repeated, an additive mask bias."""
    bias, binits = _bias_nodes()
    nodes = [*bias,
             _n("Mul", ["q", "scale"], ["qs"]), _n("Reshape", ["qs", "gshape"], ["qg"]),
             _n("Transpose", ["k"], ["kT"], perm=[0, 1, 3, 2]), _n("MatMul", ["qg", "kT"], ["s"]),
             _n("Tile", ["bias", "greps"], ["biasg"]),  # [1, 1, G*T, T], once per model
             _n("Add", ["s", "biasg"], ["sb"]), _n("Softmax", ["sb"], ["p"], axis=-1),
             _n("MatMul", ["p", "v"], ["og"]), _n("Reshape", ["og", "hshape"], ["y"])]
    inits = [*binits, _c("scale", np.array(D ** -0.5, np.float32)),
             _c("gshape", np.array([0, KV, -1, 0], np.int64)),
             _c("greps", np.array([1, 1, G, 1], np.int64)),
             _c("hshape", np.array([0, H, -1, D], np.int64))]
    return _model(nodes, inits)


def onnx_attention(mask: str, causal: int = 0) -> bytes:
    """ONNX Attention (opset 23) on the BNSH tensors as they are; `mask` is `bool` (keep as is)
    or `float` (the additive bias)."""
    bias, binits = _bias_nodes() if mask == "float" else ([], [])
    m = "bias" if mask == "float" else "keep"
    return _model([*bias, _n("Attention", ["q", "k", "v", m], ["y"], scale=D ** -0.5,
                             is_causal=causal)], binits)


def _to_bsd(x: str, heads: int) -> list:
    return [_n("Transpose", [x], [x + "_t"], perm=[0, 2, 1, 3]),
            _n("Reshape", [x + "_t", f"bsd{heads}"], [x + "_bsd"])]


_BSD = [_c("bsd8", np.array([0, 0, H * D], np.int64)), _c("bsd2", np.array([0, 0, KV * D],
                                                                            np.int64))]


def mha() -> bytes:
    """com.microsoft MultiHeadAttention: no GQA, so k and v are repeated to H heads (BNSH)."""
    bias, binits = _bias_nodes()
    nodes = [*bias, *_to_bsd("q", 8),
             _n("Unsqueeze", ["k", "ax2"], ["k5"]), _n("Tile", ["k5", "reps"], ["kt"]),
             _n("Reshape", ["kt", "shp"], ["kr"]),
             _n("Unsqueeze", ["v", "ax2"], ["v5"]), _n("Tile", ["v5", "reps"], ["vt"]),
             _n("Reshape", ["vt", "shp"], ["vr"]),
             _n("MultiHeadAttention", ["q_bsd", "kr", "vr", "", "", "bias"], ["o"],
                domain="com.microsoft", num_heads=H, scale=D ** -0.5),
             _n("Reshape", ["o", "bshd"], ["o4"]),
             _n("Transpose", ["o4"], ["y"], perm=[0, 2, 1, 3])]
    inits = [*binits, *_BSD, _c("ax2", np.array([2], np.int64)),
             _c("reps", np.array([1, 1, G, 1, 1], np.int64)),
             _c("shp", np.array([0, H, -1, D], np.int64)),
             _c("bshd", np.array([0, 0, H, D], np.int64))]
    return _model(nodes, inits)


def gqa(padding: str, causal: int = 1) -> bytes:
    """com.microsoft GroupQueryAttention. `padding`: `bias` (the keep mask as an additive
    attention_bias, exact for any mask) or `seqlens` (right padding only). With `causal` the
    op skips the keys after each query; a query that sees no key at all (a left-padding row)
    then averages only the keys up to itself, so archc's lowering patches those rows to the
    mean of every value row (what the unfused form gives); that patch is timed here too."""
    bias, binits = _bias_nodes() if padding == "bias" else ([], [])
    nodes = [*bias, *_to_bsd("q", 8), *_to_bsd("k", 2), *_to_bsd("v", 2),
             _n("Shape", ["q"], ["qshape"], start=2, end=3),
             _n("Cast", ["qshape"], ["tot1"], to=I32), _n("Squeeze", ["tot1"], ["total"]),
             _n("ReduceSum", ["mask", "ax1"], ["lens"], keepdims=0),  # valid keys per row
             _n("Cast", ["lens"], ["lens32"], to=I32),
             _n("Sub", ["lens32" if padding == "seqlens" else "tot1", "one"], ["seqlens"]),
             _n("GroupQueryAttention", ["q_bsd", "k_bsd", "v_bsd", "", "", "seqlens", "total",
                                        "", "", "", "bias" if padding == "bias" else ""], ["o"],
                domain="com.microsoft", num_heads=H, kv_num_heads=KV, scale=D ** -0.5,
                causal=causal)]
    if causal and padding == "bias":  # rows with no key: the mean of all values, per kv head
        nodes += [_n("ReduceMax", ["bias", "axm1"], ["rowmax"], keepdims=1),
                  _n("Greater", ["rowmax", "half_lowest"], ["row_ok4"]),
                  _n("Squeeze", ["row_ok4", "ax1"], ["row_ok"]),
                  _n("ReduceMean", ["v_bsd", "ax1"], ["vmean"], keepdims=1),
                  _n("Reshape", ["vmean", "kv1d"], ["vm5"]), _n("Tile", ["vm5", "greps"], ["vmt"]),
                  _n("Reshape", ["vmt", "bsd8"], ["vmh"]),
                  _n("Where", ["row_ok", "o", "vmh"], ["o_fixed"])]
        binits += [_c("axm1", np.array([-1], np.int64)),
                   _c("half_lowest", np.array(LOWEST / 2, np.float32)),
                   _c("kv1d", np.array([0, 1, KV, 1, D], np.int64)),
                   _c("greps", np.array([1, 1, 1, G, 1], np.int64))]
    last = "o_fixed" if causal and padding == "bias" else "o"
    nodes += [_n("Reshape", [last, "bshd"], ["o4"]),
              _n("Transpose", ["o4"], ["y"], perm=[0, 2, 1, 3])]
    inits = [*binits, *_BSD, _c("one", np.array([1], np.int32)),
             _c("ax1", np.array([1], np.int64)), _c("bshd", np.array([0, 0, H, D], np.int64))]
    return _model(nodes, inits, extra_inputs=[helper.make_tensor_value_info("mask", I64,
                                                                            [1, "T"])])


VARIANTS = {
    "unfused (archc -O1)": unfused,
    "grouped matmul, plain ONNX": grouped,
    "ONNX Attention, bool mask": lambda: onnx_attention("bool"),
    "ONNX Attention, float bias": lambda: onnx_attention("float"),
    "ONNX Attention, is_causal + bias": lambda: onnx_attention("float", causal=1),
    "com.microsoft MHA (repeated kv)": mha,
    "com.microsoft GQA, bias": lambda: gqa("bias", causal=0),
    "com.microsoft GQA, causal + bias": lambda: gqa("bias"),
    "com.microsoft GQA, seqlens only*": lambda: gqa("seqlens"),
    "com.microsoft GQA, causal, no mask**": lambda: gqa("none"),
}


def _feeds(t: int, pad: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    keep = np.tril(np.ones((t, t), bool))
    keep[:, t - pad:] = False  # right padding: the last `pad` keys are masked for every query
    keep[t - pad:, :] = np.tril(np.ones((t, t), bool))[t - pad:, :]  # pad queries: see all
    keep[t - pad:, t - pad:] = False
    return {"q": rng.standard_normal((1, H, t, D), np.float32),
            "k": rng.standard_normal((1, KV, t, D), np.float32),
            "v": rng.standard_normal((1, KV, t, D), np.float32), "keep": keep[None, None],
            "mask": (np.arange(t) < t - pad).astype(np.int64)[None]}


def _run(sess, feeds) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    y = sess.run(None, feeds)[0]
    return y, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seqs", default="512,2048")
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    print(f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, CPU EP, "
          f"{args.threads} threads; H={H} KV={KV} D={D}, batch 1, causal + padding; "
          f"best of {args.reps}, variants interleaved")
    for t in map(int, args.seqs.split(",")):
        pad = t // 8
        feeds = _feeds(t, pad)
        sessions, times, errs = {}, {}, {}
        for name, make in VARIANTS.items():
            try:
                sess = cpu_session(make(), args.threads)
            except Exception as e:  # an op this onnxruntime build lacks: say so
                print(f"  {name:36s} failed: {str(e).splitlines()[0][:90]}")
                continue
            wanted = {i.name for i in sess.get_inputs()}
            sessions[name] = (sess, {k: v for k, v in feeds.items() if k in wanted})
        ref = None
        for name, (sess, f) in sessions.items():  # warm up and check against the unfused form
            y, _ = _run(sess, f)
            ref = y if ref is None else ref
            assert np.isfinite(y).all(), name
            errs[name] = (float(np.abs(y - ref)[:, :, : t - pad].max()),
                          float(np.abs(y - ref).max()))
        for _ in range(args.reps):
            for name, (sess, f) in sessions.items():
                times[name] = min(times.get(name, np.inf), _run(sess, f)[1])
        base = times[next(iter(times))]
        print(f"\nT={t} (last {pad} tokens padding)")
        for name, sec in times.items():
            valid, every = errs[name]
            print(f"  {name:36s} {sec * 1e3:8.1f} ms  x{base / sec:5.2f}  "
                  f"max|diff| valid rows {valid:.1e}, all rows {every:.1e}")
    print("\n* seqlens_k assumes right padding; it cannot express a left-padded mask."
          "\n** ignores the padding (its rows differ): the form archc emits for a causal-only "
          "mask.")


if __name__ == "__main__":
    main()
