"""Weight-only quantized ops: `matmul_nbits` (com.microsoft `MatMulNBits`) and, at the end of
this file, `gather_nbits` (com.microsoft `GatherBlockQuantized`) for embedding tables.

    y[..., n] = sum_k x[..., k] * W[n, k]
    W[n, k] = (q[n, k] - zp[n, k // block]) * s[n, k // block]

The weight is stored transposed, N rows of K codes, in blocks of `block_size` along K (the last
block zero-padded when K is not a multiple):

- `qweight` uint8 [N, ceil(K / block), block * bits / 8]: codes packed low bits first (int4:
  code 2j in the low nibble of byte j, 2j+1 in the high nibble).
- `scales` float32 [N * ceil(K / block)]: one per block, row-major (n, block).
- `zero_points` uint8, optional: int8 one byte per block [N * nb]; int4 two per byte, each row
  padded to whole bytes [N * ceil(nb / 2)]. Without it the zero point is 2^(bits-1) (8 or 128),
  the symmetric case.

The kernel dequantizes exactly as onnxruntime does ((q - zp) is an integer, times the scale is
one float32 rounding, so W is bit-identical) and then matmuls; only the sum order differs.
`accuracy_level` 0 (unset) keeps `x` in float32. Level 4 has onnxruntime quantize `x` too, per
block of K, symmetric int8 (s_x = max|x| / 127, x ~ round(x / s_x) * s_x) and take integer dot
products; the kernel does the same quantization, so the two still agree to ~1e-5 (the sums are
exact integers times the same scales). archc.quantize picks level 4: onnxruntime 1.32's CPU
MatMulNBits is faster there for 4 bits and needs it for 8 (at level 0, ~5x slower than a
float32 MatMul), as benchmarks/quantized_decode.py measures; it also measures DequantizeLinear
(opset 21, blocked) + MatMul, which onnxruntime fuses into MatMulNBits at level 4 itself.
"""

from __future__ import annotations

import numpy as np

from archc.ir.types import ShapeError, TensorType
from archc.ops.registry import register_op


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes [..., M] (M * bits a multiple of 8) -> bytes [..., M * bits / 8], low first."""
    per = 8 // bits
    c = codes.astype(np.uint8).reshape(*codes.shape[:-1], -1, per)
    out = np.zeros(c.shape[:-1], np.uint8)
    for j in range(per):
        out |= c[..., j] << np.uint8(j * bits)
    return out


def unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """The inverse of `pack`: bytes [..., B] -> codes [..., B * 8 / bits]."""
    per = 8 // bits
    mask = np.uint8((1 << bits) - 1)
    parts = [(packed >> np.uint8(j * bits)) & mask for j in range(per)]
    return np.stack(parts, axis=-1).reshape(*packed.shape[:-1], -1)


def n_blocks(k: int, block_size: int) -> int:
    return -(-k // block_size)


def _dequantize_rows(codes, scales, zero_points, bits: int, block_size: int) -> np.ndarray:
    """codes uint8 [..., C], scales [..., nb], packed zero points [..., ceil(nb*bits/8)] or None
    -> float32 [..., C]: (code - zp) * scale per block of C."""
    c, nb = codes.shape[-1], scales.shape[-1]
    lead = codes.shape[:-1]
    padded = np.zeros((*lead, nb * block_size), np.float32)
    padded[..., :c] = codes
    zp = np.float32(2 ** (bits - 1)) if zero_points is None else \
        unpack(zero_points, bits)[..., :nb, None].astype(np.float32)
    w = (padded.reshape(*lead, nb, block_size) - zp) * scales[..., None]
    return np.ascontiguousarray(w.reshape(*lead, -1)[..., :c])  # BLAS wants contiguous


def dequantize(qweight, scales, zero_points, K: int, N: int, bits: int, block_size: int):
    """The float32 weight [N, K] MatMulNBits' packed tensors stand for."""
    codes = unpack(qweight, bits).reshape(N, -1)[:, :K]
    zp = None if zero_points is None else zero_points.reshape(N, -1)
    return _dequantize_rows(codes, scales.reshape(N, -1), zp, bits, block_size)


def _quantize_activations(x: np.ndarray, block_size: int) -> np.ndarray:
    """x [..., K] as accuracy_level 4 sees it: symmetric int8 per block of K, dequantized."""
    k = x.shape[-1]
    nb = n_blocks(k, block_size)
    xb = np.zeros((*x.shape[:-1], nb * block_size), np.float32)
    xb[..., :k] = x
    xb = xb.reshape(*x.shape[:-1], nb, block_size)
    scale = (np.abs(xb).max(-1, keepdims=True) / np.float32(127)).astype(np.float32)
    inverse = np.float32(1) / np.where(scale > 0, scale, np.float32(1))
    q = np.rint(xb * np.where(scale > 0, inverse, np.float32(0)))
    return (q * scale).reshape(*x.shape[:-1], -1)[..., :k]


def infer_matmul_nbits(x: TensorType, q: TensorType, s: TensorType, zp: TensorType | None = None, *,
           K: int, N: int, bits: int, block_size: int, accuracy_level: int = 0) -> TensorType:
    if accuracy_level not in (0, 4):
        raise ShapeError(f"matmul_nbits `accuracy_level` is 0 or 4, got {accuracy_level}")
    if bits not in (4, 8) or block_size not in (16, 32, 64, 128, 256):
        raise ShapeError(f"matmul_nbits supports bits 4 or 8 and block_size 16..256 (a power of "
                         f"two), got bits={bits}, block_size={block_size}")
    nb = n_blocks(K, block_size)
    want = {"qweight": (q, "uint8", (N, nb, block_size * bits // 8)),
            "scales": (s, "float32", (N * nb,))}
    if zp is not None:
        want["zero_points"] = (zp, "uint8", (N * n_blocks(nb * bits, 8),))
    if x.dtype != "float32" or x.rank < 1 or x.shape[-1] != K:
        raise ShapeError(f"matmul_nbits needs a float32 input [..., {K}], got {x}")
    for name, (t, dtype, shape) in want.items():
        if t.dtype != dtype or t.shape != shape:
            raise ShapeError(f"matmul_nbits `{name}` must be {TensorType(dtype, shape)}, got {t}")
    return x.with_shape((*x.shape[:-1], N))


def matmul_nbits(x, q, s, zp=None, *, K, N, bits, block_size, accuracy_level=0):  # [..,K] -> [..,N]
    if accuracy_level == 4:
        x = _quantize_activations(x, block_size)
    return (x @ dequantize(q, s, zp, K, N, bits, block_size).T).astype(np.float32)


def _onnx(b, x, q, s, zp=None, *, K, N, bits, block_size, accuracy_level=0):
    inputs = (x, q, s) if zp is None else (x, q, s, zp)
    return b.op("MatMulNBits", *inputs, domain="com.microsoft", K=K, N=N, bits=bits,
                block_size=block_size, accuracy_level=accuracy_level)


register_op("matmul_nbits", (3, 4), {"K": True, "N": True, "bits": True, "block_size": True,
                                     "accuracy_level": False},
            infer=infer_matmul_nbits, numpy=matmul_nbits, onnx=_onnx)


# An expert bank, the dense mixture-of-experts form (below -O2, or where the `experts` fusion
# does not fire): x [..., E or 1, M, K] @ W [E, K, N] -> [..., E, M, N], W stored as each
# expert's MatMulNBits tensors stacked on a leading E (qweight [E, N, nb, block * bits / 8],
# scales [E, N * nb], zero points [E, ...]), as `moe_experts_nbits` stores its banks. ONNX: one
# MatMulNBits per expert, on x or its e-th slice, concatenated on axis -3 (Gather(part, e) of an
# initializer folds into a constant when onnxruntime loads the model).
def _bank_infer(x: TensorType, q: TensorType, s: TensorType, zp: TensorType | None = None, *,
                K: int, N: int, bits: int, block_size: int, accuracy_level: int = 0
                ) -> TensorType:
    e = q.shape[0] if q.rank == 4 else None
    parts = (q, s) if zp is None else (q, s, zp)
    if e is None or any(t.rank < 1 or t.shape[0] != e for t in parts):
        raise ShapeError(f"matmul_nbits_bank parts {', '.join(map(str, parts))} are not one "
                         "MatMulNBits weight per expert [E, ...]")
    if x.rank < 3 or x.shape[-3] not in (1, e):
        raise ShapeError(f"matmul_nbits_bank needs x [..., {e} or 1, M, {K}], got {x}")
    one = infer_matmul_nbits(x, *(t.with_shape(t.shape[1:]) for t in parts), K=K, N=N,
                             bits=bits, block_size=block_size, accuracy_level=accuracy_level)
    return one.with_shape((*x.shape[:-3], e, *one.shape[-2:]))


def _bank_kernel(x, q, s, zp=None, *, K, N, bits, block_size, accuracy_level=0):
    if accuracy_level == 4:
        x = _quantize_activations(x, block_size)
    w = np.stack([dequantize(q[e], s[e], None if zp is None else zp[e], K, N, bits,
                             block_size).T for e in range(q.shape[0])])  # [E, K, N]
    return (x @ w).astype(np.float32)


def _bank_onnx(b, x, q, s, zp=None, *, K, N, bits, block_size, accuracy_level=0):
    parts, rank = (q, s) if zp is None else (q, s, zp), b.types[x].rank
    outs = []
    for e in range(b.types[q].shape[0]):
        idx = b.const(np.array(e, np.int64))
        xe = x if b.types[x].shape[-3] == 1 else b.slice(x, rank - 3, e, e + 1)
        outs.append(b.op("MatMulNBits", xe, *(b.op("Gather", t, idx, axis=0) for t in parts),
                         domain="com.microsoft", K=K, N=N, bits=bits, block_size=block_size,
                         accuracy_level=accuracy_level))
    return b.op("Concat", *outs, axis=-3) if len(outs) > 1 else outs[0]


register_op("matmul_nbits_bank", (3, 4), {"K": True, "N": True, "bits": True,
                                          "block_size": True, "accuracy_level": False},
            infer=_bank_infer, numpy=_bank_kernel, onnx=_bank_onnx)


# Embedding rows: com.microsoft GatherBlockQuantized (gather_axis 0, quantize_axis 1). The table
# [R, C] is stored as `data` uint8 [R, C * bits / 8] (rows packed low bits first, not padded),
# `scales` float32 [R, ceil(C / block)] and optional zero points uint8 [R, ceil(nb * bits / 8)],
# the same codes and blocks as MatMulNBits' with rows for N and C for K.
def _gather_infer(data: TensorType, ids: TensorType, s: TensorType, zp: TensorType | None = None,
                  *, bits: int, block_size: int) -> TensorType:
    if bits not in (4, 8) or data.dtype != "uint8" or data.rank != 2:
        raise ShapeError(f"gather_nbits needs bits 4 or 8 and uint8 [rows, bytes], got {data}")
    if ids.dtype != "int64":
        raise ShapeError(f"gather_nbits indices must be int64, got {ids}")
    rows, cols = data.shape[0], data.shape[1] * 8 // bits
    nb = n_blocks(cols, block_size)
    want = {"scales": (s, "float32", (rows, nb))}
    if zp is not None:
        want["zero_points"] = (zp, "uint8", (rows, n_blocks(nb * bits, 8)))
    for name, (t, dtype, shape) in want.items():
        if t.dtype != dtype or t.shape != shape:
            raise ShapeError(f"gather_nbits `{name}` must be {TensorType(dtype, shape)}, got {t}")
    return TensorType("float32", (*ids.shape, cols))


def _gather(data, ids, s, zp=None, *, bits, block_size):  # [R, C*bits/8], [...] -> [..., C]
    take = lambda a: None if a is None else np.take(a, ids, axis=0)  # noqa: E731
    return _dequantize_rows(unpack(take(data), bits), take(s), take(zp), bits, block_size)


def _gather_onnx(b, data, ids, s, zp=None, *, bits, block_size):
    inputs = (data, ids, s) if zp is None else (data, ids, s, zp)
    return b.op("GatherBlockQuantized", *inputs, domain="com.microsoft", gather_axis=0,
                quantize_axis=1, bits=bits, block_size=block_size)


register_op("gather_nbits", (3, 4), {"bits": True, "block_size": True}, infer=_gather_infer,
            numpy=_gather, onnx=_gather_onnx)
