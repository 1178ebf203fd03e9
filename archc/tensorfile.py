"""Reading safetensors files without trusting them.

The format: an 8-byte little-endian header length N, N bytes of JSON
(`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`), then
the data. Every field of the header is checked before any tensor is read, so a truncated,
garbage or hostile file is a diagnostic that names the file, the tensor and what was expected
(never a `SafetensorError`, never a crash), and tensors are read lazily from a memory map.

`float32(name)` converts F32, F16, F64 and BF16 (NumPy has no bfloat16: its bits are the top
half of a float32's) and refuses everything else: integer and bool tensors hold no weights, and
an fp8 tensor means nothing without the scales stored beside it, so reading it as plain numbers
would give silent garbage. `fp8(name)` decodes an fp8 tensor's face values exactly, for a caller
that applies the scales (`archc.hf.tensors`): NumPy has no float8 either, so each of the 256
bit patterns is looked up in a table built from the format's definition (`FP8`).
"""

from __future__ import annotations

import itertools
import json
import math
import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from archc.diagnostics import ArchcError, Diagnostic
from archc.files import cannot_read, open_read

ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
            "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
            "F8_E8M0": 1}
FLOATS = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": "<u2"}
MAX_HEADER = 100 * 2**20  # what the safetensors library itself accepts


def fp8_table(exp_bits: int, man_bits: int, ieee: bool) -> np.ndarray:
    """The float32 value of each byte of a float8 format: 1 sign bit, `exp_bits` exponent bits
    (bias 2**(exp_bits-1) - 1), `man_bits` mantissa bits; exponent 0 is subnormal
    (m / 2**man_bits * 2**(1 - bias)), others normal ((1 + m / 2**man_bits) * 2**(e - bias)).
    The all-ones exponent is inf (m = 0) and NaN in `ieee` formats (E5M2); E4M3 ("fn": finite)
    keeps it for numbers up to 448 and has NaN only at S.1111.111."""
    bits = np.arange(256)
    e, m = (bits >> man_bits) & (2**exp_bits - 1), bits & (2**man_bits - 1)
    bias, frac = 2 ** (exp_bits - 1) - 1, m / 2**man_bits
    mag = np.where(e == 0, frac * 2.0 ** (1 - bias), (1 + frac) * 2.0 ** (e - bias))
    top = e == 2**exp_bits - 1
    if ieee:
        mag = np.where(top, np.where(m == 0, np.inf, np.nan), mag)
    else:
        mag = np.where(top & (m == 2**man_bits - 1), np.nan, mag)
    return np.where(bits >> 7, -mag, mag).astype(np.float32)


# E8M0 ("fnu": no sign, no mantissa, no zero) holds powers of two 2**(e - 127), and NaN at 0xFF:
# the block scales of MX formats and of some FP8 checkpoints.
FP8 = {"F8_E4M3": fp8_table(4, 3, ieee=False), "F8_E5M2": fp8_table(5, 2, ieee=True),
       "F8_E8M0": np.where(np.arange(256) == 255, np.nan,
                           2.0 ** (np.arange(256) - 127)).astype(np.float32)}


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


class TensorFile:
    """The header of one safetensors file, checked; tensors are read on demand."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        with open_read(path, "safetensors file") as f:
            try:
                size = f.seek(0, 2)
                if size < 8:
                    raise self._bad(f"{size} bytes, too short for a header")
                self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except OSError as e:
                raise cannot_read(path, (e.strerror or str(e)).lower()) from None
        n = int.from_bytes(self.map[:8], "little")
        if n > min(MAX_HEADER, size - 8):
            raise self._bad(f"its header claims {n} bytes, the file has {size - 8} after "
                            "the length" if n <= MAX_HEADER else f"header length {n}")
        self.data_start, data_len = 8 + n, size - 8 - n
        self.entries = self._header(bytes(self.map[8:8 + n]), data_len)

    def _bad(self, why: str, tensor: str | None = None) -> ArchcError:
        where = f"tensor `{tensor}` in `{self.path}`" if tensor else f"`{self.path}`"
        return ArchcError([Diagnostic("E0306", f"{where} is not valid safetensors: {why}",
                                      help="the file may be truncated or not a safetensors "
                                      "file")])

    def _header(self, raw: bytes, data_len: int) -> dict[str, Entry]:
        def pairs(items):
            keys = [k for k, _ in items]
            dup = next((k for k in keys if keys.count(k) > 1), None)
            if dup is not None:
                raise self._bad(f"the header names `{dup}` twice")
            return dict(items)

        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=pairs)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise self._bad(f"its header is not JSON ({type(e).__name__})") from None
        if not isinstance(header, dict):
            raise self._bad("its header is not a JSON object")
        entries, spans = {}, []
        for name, info in header.items():
            if name == "__metadata__":
                continue
            entries[name] = e = self._entry(name, info, data_len)
            spans.append((e.begin, e.end, name))
        spans.sort()
        for (_, end, a), (begin, _, b) in itertools.pairwise(spans):
            if begin < end:
                raise self._bad(f"the data of `{a}` and `{b}` overlap")
        return entries

    def _entry(self, name: str, info, data_len: int) -> Entry:
        if not isinstance(info, dict):
            raise self._bad("its header entry is not an object", name)
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in ITEMSIZE:
            raise self._bad(f"unknown dtype {dtype!r}", name)
        if not isinstance(shape, list) or not all(_natural(d) for d in shape):
            raise self._bad(f"shape {shape!r} is not a list of sizes", name)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_natural, offsets))
                and offsets[0] <= offsets[1] <= data_len):
            raise self._bad(f"data offsets {offsets!r} lie outside the {data_len} data bytes",
                            name)
        need = math.prod(shape) * ITEMSIZE[dtype]
        if offsets[1] - offsets[0] != need:
            raise self._bad(f"{dtype}{shape} needs {need} bytes, its offsets hold "
                            f"{offsets[1] - offsets[0]}", name)
        return Entry(name, dtype, tuple(shape), offsets[0], offsets[1])

    def refusal(self, name: str) -> Diagnostic | None:
        """Why tensor `name` cannot be read as float32 weights, or None."""
        e = self.entries[name]
        if e.dtype in FLOATS:
            return None
        fp8 = e.dtype in FP8
        why = "fp8 means nothing without its scales" if fp8 else "it holds no float values"
        return Diagnostic("E0308", f"tensor `{name}` in `{self.path}` is {e.dtype}"
                          f"{list(e.shape)}: a float parameter needs F32, F16, BF16 or F64 "
                          f"({why})", help="import an fp8 checkpoint with `archc import-hf`, "
                          "which applies the scales its config.json names" if fp8 else
                          "convert the checkpoint's weights to a float dtype")

    def float32(self, name: str) -> np.ndarray:
        """Tensor `name` as a new float32 array; a non-float dtype is an error naming it."""
        refused = self.refusal(name)
        if refused is not None:
            raise ArchcError([refused])
        e = self.entries[name]
        count = math.prod(e.shape)
        raw = np.frombuffer(self.map, FLOATS[e.dtype], count, self.data_start + e.begin)
        if e.dtype == "BF16":
            out = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            out = raw.astype(np.float32)
        return out.reshape(e.shape)

    def fp8(self, name: str) -> np.ndarray:
        """Fp8 tensor `name`'s face values as float32, exactly, before any scale."""
        e = self.entries[name]
        raw = np.frombuffer(self.map, np.uint8, math.prod(e.shape), self.data_start + e.begin)
        return FP8[e.dtype][raw].reshape(e.shape)


def _natural(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def nonfinite(name: str, a: np.ndarray) -> str | None:
    """A note naming how many values of `a` are NaN or infinite, or None."""
    bad = ~np.isfinite(a)
    if not bad.any():
        return None
    return (f"`{name}`: {int(np.isnan(a).sum())} NaN, {int(np.isinf(a).sum())} infinite "
            f"of {a.size}")
