"""Decode speed and quality of weight-only quantized exports (`archc compile --weights-dtype`).

The model is benchmarks/prefill.py's LLaMA shape (about 55M parameters: 8 layers, hidden 512,
GQA 8/2, SwiGLU 1408, vocab 32000, untied head), random weights from archc's seeded init.

Speed: the `--kv-cache` export on onnxruntime's CPU EP, batch 1, `--threads` threads: one
decode step (1 new token) on top of `--past` tokens of cache that the same session filled by a
prefill. Sessions are timed in turn (interleaved); each figure is the median of `--reps` steps.
Quality, against the float32 model on one seeded stream of `--tokens` random token ids (a
full-sequence run of each export): max |logit diff|, top-1 agreement, and the perplexity of the
stream (next-token NLL) and its change.

Besides archc's exports (MatMulNBits at accuracy_level 4, int8 activations; embeddings as int8
GatherBlockQuantized) the alternatives are measured: `acc0` (float32 activations), `dq` (the
same codes as opset-21 DequantizeLinear(uint4/uint8, blocks along K) + MatMul; onnxruntime
fuses the pair back into MatMulNBits) and `f32emb` (embedding table left float32). The machine
is shared, so the table gives each step's median and best (least disturbed) time, with both
ratios. With random weights the logits are nearly flat (max |logit| is printed), so top-1
flips easily and the perplexity of random tokens is about the vocabulary size: read dppl as a
relative figure.

    nice python benchmarks/quantized_decode.py [--threads 2] [--past 128] [--reps 30]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import archc
from archc.backends.onnx_export import export_onnx, model_bytes
from archc.backends.ort import cpu_session
from archc.lower import lower
from archc.ops import quant
from archc.quantize import quantize

SPEC = """
model llama_bench {
  let vocab = 32000, d = 512, heads = 8, kv = 2, ff = 1408, layers = 8, eps = 1e-6
  input input_ids: int64[batch, seq]
  input attention_mask: int64[batch, seq]
  x = embed(input_ids, vocab, d) as embed_tokens
  repeat layers as layers {
    x = x + attention(rms_norm(x, eps) as input_norm, heads, kv_heads = kv, causal,
                      mask = attention_mask, rope = rope(theta = 10000), bias = false) as self_attn
    x = x + swiglu(rms_norm(x, eps) as post_attention_norm, ff) as mlp
  }
  output logits = lm_head(rms_norm(x, eps) as norm, vocab)
}
"""
# name -> archc.quantize keyword arguments (absent: archc's defaults; `dtype` float32: none),
# plus `dq`: rewrite each MatMulNBits to DequantizeLinear + MatMul
SYM, ZP = {"symmetric": True}, {"symmetric": False}
VARIANTS = {"fp32": {"dtype": "float32"}, "fp16": {"dtype": "float16"},
            "int8 sym": {"dtype": "int8", **SYM}, "int8 zp": {"dtype": "int8", **ZP},
            "int8 sym acc0": {"dtype": "int8", **SYM, "accuracy_level": 0},
            "int8 sym dq": {"dtype": "int8", **SYM, "accuracy_level": 0, "dq": True},
            "int4 sym": {"dtype": "int4", **SYM}, "int4 zp": {"dtype": "int4", **ZP},
            "int4 sym acc0": {"dtype": "int4", **SYM, "accuracy_level": 0},
            "int4 sym dq": {"dtype": "int4", **SYM, "dq": True},
            "int4 sym f32emb": {"dtype": "int4", **SYM, "embeddings": False}}


def export(cache: bool, variant: str, weights, block: int) -> bytes:
    kwargs = dict(VARIANTS[variant])
    dq = kwargs.pop("dq", False)
    graph = archc.api.optimize(lower(archc.parse(SPEC, "llama_bench.arch"), None, cache=cache), 2)
    stored = {k: weights[k] for k in graph.params}
    if kwargs["dtype"] != "float32":
        graph, stored = quantize(graph, stored, block=block, **kwargs)
    model = export_onnx(graph, stored, check=False)
    return model_bytes(_to_dequantize_linear(model) if dq else model)


def _to_dequantize_linear(model: onnx.ModelProto) -> onnx.ModelProto:
    """Each MatMulNBits (no zero points) -> DequantizeLinear(uint4/uint8 codes [K, N], scales
    [K/block, N], zero point 2^(bits-1), axis 0, block_size) + MatMul, at opset 21."""
    inits = {t.name: t for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            nodes.append(node)
            continue
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        k, n, block, bits = a["K"], a["N"], a["block_size"], a["bits"]
        nb = quant.n_blocks(k, block)
        codes = quant.unpack(numpy_helper.to_array(inits.pop(node.input[1])), bits)
        codes = codes.reshape(n, nb * block)[:, :k].T  # [K, N]
        scales = numpy_helper.to_array(inits.pop(node.input[2])).reshape(n, nb).T.copy()
        stem = node.input[1]
        elem = TensorProto.UINT4 if bits == 4 else TensorProto.UINT8
        tensors = [helper.make_tensor(f"{stem}.u", elem, codes.shape, codes.reshape(-1).tolist()),
                   numpy_helper.from_array(scales, f"{stem}.s"),
                   helper.make_tensor(f"{stem}.z", elem, scales.shape,
                                      [2 ** (bits - 1)] * scales.size)]
        inits.update({t.name: t for t in tensors})
        nodes.append(helper.make_node("DequantizeLinear", [t.name for t in tensors],
                                      [f"{stem}.w"], axis=0, block_size=block))
        nodes.append(helper.make_node("MatMul", [node.input[0], f"{stem}.w"], node.output))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits[k] for k in sorted(inits))
    for imp in model.opset_import:
        if imp.domain == "":
            imp.version = max(imp.version, 21)
    model.ir_version = max(model.ir_version, 10)
    return model


def quality(logits: np.ndarray, ref: np.ndarray, ids: np.ndarray) -> tuple[float, float, float]:
    """(max |logit - ref|, top-1 agreement with ref, perplexity of ids[1:])."""
    x = logits[0, :-1].astype(np.float64)
    lse = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    nll = lse - x[np.arange(len(x)), ids[0, 1:]]
    return (float(np.abs(logits - ref).max()),
            float((logits.argmax(-1) == ref.argmax(-1)).mean()), float(np.exp(nll.mean())))


def step_times(sessions: dict, feeds: dict, reps: int) -> dict[str, tuple[float, float]]:
    """(median, best) seconds of one `logits` step of each session, over `reps` rounds after
    3 warm-ups, the sessions taking turns within a round."""
    times = {name: [] for name in sessions}
    for _ in range(reps + 3):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(["logits"], feeds[name])
            times[name].append(time.perf_counter() - start)
    return {name: (float(np.median(t[3:])), min(t[3:])) for name, t in times.items()}


def decode_feeds(sess: ort.InferenceSession, past: int, rng, vocab: int = 32000
                 ) -> dict[str, np.ndarray]:
    """Prefill `past` tokens with the session itself; the feeds of the next one-token step."""
    names = [i.name for i in sess.get_inputs() if i.name.startswith("past_key_values.")]
    empty = {name: np.zeros((1, 2, 0, 64), np.float32) for name in names}
    ids = rng.integers(0, vocab, (1, past))
    outs = sess.run(None, {"input_ids": ids, "attention_mask": np.ones((1, past), np.int64),
                           **empty})
    present = dict(zip([o.name for o in sess.get_outputs()], outs))
    return {"input_ids": np.array([[7]], np.int64),
            "attention_mask": np.ones((1, past + 1), np.int64),
            **{n: present[n.replace("past_key_values.", "present.")] for n in names}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--past", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    names = args.variants.split(",")
    graph = archc.compile(archc.parse(SPEC, "llama_bench.arch"), level=2)
    weights = archc.init_params(graph, 0)
    print(f"onnxruntime {ort.__version__}, CPU EP, {args.threads} threads, batch 1, "
          f"{sum(w.size for w in weights.values()) / 1e6:.1f}M parameters, block {args.block}")
    ids = np.random.default_rng(1).integers(0, 32000, (1, args.tokens))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    rows, ref = {}, None
    for name in names:  # quality: one full-sequence run each
        blob = export(False, name, weights, args.block)
        logits = cpu_session(blob, args.threads).run(["logits"], feeds)[0]
        ref = logits if ref is None else ref
        rows[name] = [len(blob) / 1e6, *quality(logits, ref, ids)]
    sessions = {name: cpu_session(export(True, name, weights, args.block), args.threads)
                for name in names}
    step = {name: decode_feeds(s, args.past, np.random.default_rng(2))
            for name, s in sessions.items()}
    times = step_times(sessions, step, args.reps)
    base = times[names[0]]
    ppl0 = rows[names[0]][3]
    print(f"\ndecode step with {args.past} tokens of past; quality on {args.tokens} tokens vs "
          f"{names[0]} (max |logit| {np.abs(ref).max():.2f})\n{'variant':<16}{'file MB':>8}"
          f"{'median ms':>10}{'x':>7}{'best ms':>9}{'x':>7}{'max|dlogit|':>12}{'top-1':>7}"
          f"{'ppl':>9}{'dppl':>8}")
    for name in names:
        mb, diff, top1, ppl = rows[name]
        t = times[name]
        print(f"{name:<16}{mb:8.1f}{t[0] * 1e3:10.2f}{base[0] / t[0]:6.2f}x{t[1] * 1e3:9.2f}"
              f"{base[1] / t[1]:6.2f}x{diff:12.4f}{top1:7.3f}{ppl:9.0f}{ppl - ppl0:+8.1f}")

if __name__ == "__main__":
    main()
