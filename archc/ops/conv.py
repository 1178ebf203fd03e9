"""1-D convolution and pooling over the time axis of `[B, T, C]` activations, without padding.

archc keeps channels last, as every transformer layer does; ONNX's Conv and pools want
channels first, so each lowering is Transpose -> op -> Transpose (a pass can cancel adjacent
pairs). Output length (valid padding): floor((T - span) / stride) + 1, span = dilation*(K-1)+1.
A symbolic T gives the symbol `pool(T,span,stride)`, so a conv and a pool with the same window
and stride give equal dims.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from archc.ir.types import Dim, ShapeError, TensorType
from archc.ops.elementwise import mismatch
from archc.ops.registry import register_op

_CHANNELS_FIRST = [0, 2, 1]  # [B, T, C] <-> [B, C, T]; its own inverse


def out_len(t: Dim, span: int, stride: int) -> Dim:
    if isinstance(t, str):
        return f"pool({t},{span},{stride})"
    return (t - span) // stride + 1


def _windowed(x: TensorType, span: int, stride: int, what: str) -> Dim:
    """The output length, after checking x is [B, T, C] and one window fits."""
    if x.rank != 3 or x.dtype != "float32":
        raise ShapeError(f"`x` is {x}: {what} needs float32 [B, T, C]")
    if span < 1 or stride < 1:
        raise ShapeError(f"{what} of `x` ({x}) needs a kernel and stride >= 1")
    if isinstance(x.shape[1], int) and x.shape[1] < span:
        raise ShapeError(f"`x` is {x}: its {x.shape[1]} steps are fewer than the window {span}")
    return out_len(x.shape[1], span, stride)


def _windows(x, span: int, stride: int, dilation: int = 1):  # [B,T,C] -> [B,T',C,K]
    return sliding_window_view(x, span, axis=1)[:, ::stride, :, ::dilation]


# ---------------------------------------------------------------------------------- pooling
def _stride(kernel: int, stride: int | None) -> int:  # windows side by side unless told
    return kernel if stride is None else stride


def _pool_infer(x: TensorType, kernel: int, stride: int | None = None) -> TensorType:
    t = _windowed(x, kernel, _stride(kernel, stride), "pooling")
    return x.with_shape((x.shape[0], t, x.shape[2]))


def _pool(name: str, reduce, onnx_op: str) -> None:
    def kernel_fn(x, kernel, stride=None):  # [B,T,C] -> [B,T',C]
        return reduce(_windows(x, kernel, _stride(kernel, stride)), axis=-1).astype(x.dtype)

    def lower(b, x, kernel, stride=None):
        xt = b.op("Transpose", x, perm=_CHANNELS_FIRST)
        y = b.op(onnx_op, xt, kernel_shape=[kernel], strides=[_stride(kernel, stride)])
        return b.op("Transpose", y, perm=_CHANNELS_FIRST)

    register_op(name, 1, {"kernel": True, "stride": False}, infer=_pool_infer, numpy=kernel_fn,
                onnx=lower)


_pool("avg_pool1d", np.mean, "AveragePool")
_pool("max_pool1d", np.max, "MaxPool")


# ------------------------------------------------------------------------------ convolution
def _conv_infer(x: TensorType, w: TensorType, bias: TensorType | None = None,
                stride: int = 1, dilation: int = 1) -> TensorType:
    if w.rank != 3 or x.rank != 3 or w.shape[1] != x.shape[-1] or w.dtype != x.dtype:
        raise mismatch("x", x, "w", w, "conv1d needs x [B, T, Cin] and w [Cout, Cin, K]")
    if not isinstance(w.shape[2], int):
        raise ShapeError(f"`w` is {w}: conv1d needs a static kernel size")
    if bias is not None and bias.shape != w.shape[:1]:
        raise mismatch("bias", bias, "w", w, "conv1d needs bias [Cout]")
    t = _windowed(x, dilation * (w.shape[2] - 1) + 1, stride, "conv1d")
    return x.with_shape((x.shape[0], t, w.shape[0]))


def _conv1d(x, w, bias=None, stride=1, dilation=1):  # [B,T,Ci], [Co,Ci,K], [Co] -> [B,T',Co]
    # summed in float64 so the result is the exact float32 rounding, whichever order ORT adds in
    span = dilation * (w.shape[2] - 1) + 1
    y = np.einsum("btck,ock->bto", _windows(x, span, stride, dilation), w, dtype=np.float64)
    return (y if bias is None else y + bias).astype(x.dtype)


def _conv1d_onnx(b, x, w, bias=None, stride=1, dilation=1):
    xt = b.op("Transpose", x, perm=_CHANNELS_FIRST)
    y = b.op("Conv", xt, w, *([] if bias is None else [bias]), strides=[stride],
             dilations=[dilation], kernel_shape=[b.type_of(w).shape[2]])
    return b.op("Transpose", y, perm=_CHANNELS_FIRST)


register_op("conv1d", (2, 3), {"stride": False, "dilation": False}, infer=_conv_infer,
            numpy=_conv1d, onnx=_conv1d_onnx)
