"""Matrix products, softmax and normalisation layers."""

from __future__ import annotations

import numpy as np

from archc.ir.types import ShapeError, TensorType, broadcast
from archc.ops.registry import register_op


def _matmul_infer(a: TensorType, b: TensorType) -> TensorType:
    if a.rank < 2 or b.rank < 2:
        raise ShapeError(f"matmul needs rank >= 2 operands, got {a} and {b}")
    if a.dtype != b.dtype or a.dtype == "bool":
        raise ShapeError(f"matmul needs two float32 or two int64 operands, got {a} and {b}")
    if a.shape[-1] != b.shape[-2]:
        raise ShapeError(f"matmul inner dims differ: {a} @ {b} ({a.shape[-1]} vs {b.shape[-2]})")
    batch = broadcast(a.shape[:-2], b.shape[:-2])
    return TensorType(a.dtype, (*batch, a.shape[-2], b.shape[-1]))


register_op("matmul", 2, infer=_matmul_infer, numpy=np.matmul,
            onnx=lambda b, x, y: b.op("MatMul", x, y))


def _softmax(x, axis: int = -1):  # max-subtracted for stability
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(x.dtype, copy=False)


def _float_infer(x: TensorType, **_) -> TensorType:
    if x.dtype != "float32":
        raise ShapeError(f"`x` is {x}: needs float32")
    return x


register_op("softmax", 1, {"axis": True}, infer=_float_infer, numpy=_softmax,
            onnx=lambda b, x, axis: b.op("Softmax", x, axis=axis))


def _norm_infer(x: TensorType, w: TensorType, bias: TensorType | None = None, **_) -> TensorType:
    if w.shape != x.shape[-1:] or (bias is not None and bias.shape != x.shape[-1:]):
        raise ShapeError(f"norm weight {w} does not match the last dim of {x}")
    return x


def _layer_norm(x, w, b=None, eps: float = 1e-5):  # [..., D], [D], [D] -> [..., D]
    mean = x.mean(axis=-1, keepdims=True)
    var = np.square(x - mean).mean(axis=-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + np.float32(eps)) * w
    return (y if b is None else y + b).astype(x.dtype, copy=False)


def _layer_norm_onnx(b, x, w, bias=None, eps: float = 1e-5):
    inputs = (x, w) if bias is None else (x, w, bias)
    return b.op("LayerNormalization", *inputs, axis=-1, epsilon=float(eps))


register_op("layer_norm", (2, 3), {"eps": True}, infer=_norm_infer, numpy=_layer_norm,
            onnx=_layer_norm_onnx)


def _rms_norm(x, w, eps: float = 1e-6):  # x / sqrt(mean(x^2) + eps) * w
    ms = np.square(x).mean(axis=-1, keepdims=True)
    return (x / np.sqrt(ms + np.float32(eps)) * w).astype(x.dtype, copy=False)


def _rms_norm_onnx(b, x, w, eps: float = 1e-6):
    ms = b.op("ReduceMean", b.op("Mul", x, x), b.const(np.array([-1], np.int64)), keepdims=1)
    rms = b.op("Sqrt", b.op("Add", ms, b.scalar(eps)))
    return b.op("Mul", b.op("Div", x, rms), w)


register_op("rms_norm", 2, {"eps": True}, infer=_norm_infer, numpy=_rms_norm,
            onnx=_rms_norm_onnx)


def _moe_gates(logits, k: int):  # [..., E] -> [..., E]: softmax, keep the top k, renormalise
    probs = _softmax(logits.astype(np.float32))
    kth = -np.sort(-probs, axis=-1)[..., k - 1: k]
    kept = np.where(probs >= kth, probs, 0)
    return (kept / kept.sum(axis=-1, keepdims=True)).astype(logits.dtype, copy=False)


def _moe_gates_onnx(b, logits, k: int):
    probs = b.op("Softmax", logits, axis=-1)
    values, indices = b.op_multi("TopK", probs, b.const(np.array([k], np.int64)), n=2, axis=-1)
    norm = b.op("Div", values, b.op("ReduceSum", values, b.const(np.array([-1], np.int64)),
                                   keepdims=1))
    zeros = b.op("Mul", probs, b.scalar(0.0))
    return b.op("ScatterElements", zeros, indices, norm, axis=-1)


def _moe_gates_infer(logits: TensorType, k: int) -> TensorType:
    experts = logits.shape[-1] if logits.rank else None
    if logits.rank == 0 or not (isinstance(experts, int) and 1 <= k <= experts):
        raise ShapeError(f"`k` = {k} of the experts' logits {logits}: needs a static last "
                         f"(experts) axis and 1 <= k <= experts")
    return _float_infer(logits)


register_op("moe_gates", 1, {"k": True}, infer=_moe_gates_infer, numpy=_moe_gates,
            onnx=_moe_gates_onnx)
