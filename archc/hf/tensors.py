"""Reading checkpoint tensors by their Hugging Face names, with errors that name the tensor.

Shards are read through `archc.tensorfile` (headers checked, tensors read lazily, BF16/F16
converted, integer tensors refused when taken as weights). A tensor in two shards is an error
naming both: which copy is right is not archc's to guess.

FP8 checkpoints (DeepSeek-V3, Qwen3-*-FP8, Llama FP8) store linear weights as float8 with a
scale tensor beside each, named by config.json's `quantization_config` (`Quant`). `take`
dequantizes such a weight to float32, W[..., i, j] = q[..., i, j] * s[..., i // bo, j // bi],
and consumes its scale tensor, so the imported model is the float32 model the fp8 checkpoint
stands for (transformers' `dequantize=True`); activations are not quantized.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from archc.diagnostics import ArchcError, Diagnostic
from archc.progress import Silent
from archc.tensorfile import FP8, Entry, TensorFile, nonfinite


@dataclass(frozen=True)
class Quant:
    """How an fp8 checkpoint scales its weights: one scale per `block` (rows, columns) of a
    weight's last two dims, a None size spanning the whole dim (per tensor: (None, None); per
    output channel: (1, None)), stored as `<weight name><suffix>`."""
    method: str
    suffix: str
    block: tuple[int | None, int | None]

    def scale_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        *lead, rows, cols = shape
        return (*lead, *(math.ceil(n / b) if b else 1 for n, b in zip((rows, cols), self.block)))


def _refuse(source: str, why: str) -> ArchcError:
    return ArchcError([Diagnostic(
        "E0504", f"`{source}`: {why}", help="archc imports fp8 checkpoints quantized with "
        "`quant_method: fp8` (block-wise or per-tensor `weight_scale_inv`) or with "
        "compressed-tensors' float8 weights (`weight_scale` per tensor, channel or block), "
        "with dynamic activation scales")])


def _sizes(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(
        isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)


def quant(q, source: str) -> Quant | None:
    """config.json's `quantization_config` as a `Quant`, or a refusal naming what is not
    supported; None when there is none."""
    if q is None:
        return None
    method = q.get("quant_method") if isinstance(q, dict) else None
    if method == "fp8":
        if q.get("activation_scheme", "dynamic") != "dynamic":
            raise _refuse(source, f"fp8 activation scheme {json.dumps(q['activation_scheme'])}"
                          " is not supported (its activation scales are not applied)")
        block = q.get("weight_block_size")
        if block is not None and not _sizes(block):
            raise _refuse(source, f"fp8 `weight_block_size` is {json.dumps(block)[:60]}, not "
                          "two positive sizes")
        return Quant("fp8", "_scale_inv", tuple(block) if block else (None, None))
    if method == "compressed-tensors":
        groups = q.get("config_groups")
        schemes = [g.get("weights") if isinstance(g, dict) else None
                   for g in (groups.values() if isinstance(groups, dict) else ())]
        w = schemes[0] if schemes else None
        if not isinstance(w, dict) or any(s != w for s in schemes) or \
                (w.get("type"), w.get("num_bits")) != ("float", 8):
            raise _refuse(source, "compressed-tensors is supported with one float8 weight "
                          "scheme for all groups only")
        acts = [g.get("input_activations") for g in groups.values()]
        if any(a is not None and not (isinstance(a, dict) and a.get("dynamic")) for a in acts):
            raise _refuse(source, "static input activation scales are not supported")
        strategy, block = w.get("strategy"), w.get("block_structure")
        blocks = {"tensor": (None, None), "channel": (1, None)}
        if strategy == "block" and _sizes(block):
            return Quant(method, "_scale", tuple(block))
        if strategy not in blocks:
            raise _refuse(source, f"compressed-tensors weight strategy "
                          f"{json.dumps(strategy)[:40]} is not supported")
        return Quant(method, "_scale", blocks[strategy])
    raise _refuse(source, f"quantization method {json.dumps(method)[:40]} is not supported")


class Tensors:
    """The tensors of `model.safetensors` (or its shards). `take` marks a tensor used, so that
    `check_all_used` can report tensors the importer did not expect; it also notes tensors
    with NaN or infinite values (`nonfinite`)."""

    def __init__(self, files: dict[str, TensorFile], source: str):
        self.files = files  # tensor name -> the shard holding it
        self.tensors: dict[str, Entry] = {k: f.entries[k] for k, f in files.items()}
        self.source = source
        self.used: set[str] = set()
        self._counted: set[str] = set()
        self.nonfinite: list[str] = []
        self.prefix = ""
        self.bar = Silent()  # archc.progress: `import_checkpoint` sets a bar over the bytes
        self.quant: Quant | None = None  # how fp8 weights are scaled (`load` reads config.json)

    @classmethod
    def load(cls, directory: str | Path) -> Tensors:
        directory = Path(directory)
        paths = sorted(p for p in directory.glob("*.safetensors") if not p.is_dir())
        if not paths:
            raise ArchcError([Diagnostic("E0510", f"no `*.safetensors` file in `{directory}`")])
        files: dict[str, TensorFile] = {}
        dups = []
        for path in paths:
            shard = TensorFile(path)
            for name in shard.entries:
                if name in files:
                    dups.append(Diagnostic("E0514", f"tensor `{name}` is in two shards: "
                                           f"`{Path(files[name].path).name}` and "
                                           f"`{path.name}`", help="remove the stale shard"))
                files.setdefault(name, shard)
        if dups:
            raise ArchcError(dups)
        t = cls(files, ", ".join(p.name for p in paths))
        config = directory / "config.json"
        if config.is_file():
            from archc.hf.config import HFConfig  # checked JSON, errors that name the file

            t.quant = quant(HFConfig.load(directory).data.get("quantization_config"),
                            str(config))
        return t

    def has(self, name: str) -> bool:
        return self.prefix + name in self.tensors or name in self.tensors

    def take(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        full = self.prefix + name if self.prefix + name in self.tensors else name
        if full not in self.tensors:
            raise ArchcError([Diagnostic("E0511", f"missing tensor `{self.prefix + name}` in "
                                         f"{self.source}")])
        self.used.add(full)
        have = self.tensors[full].shape
        if shape is not None and tuple(have) != tuple(shape):
            raise ArchcError([Diagnostic("E0512", f"tensor `{full}` has shape {list(have)}, "
                                         f"the config implies {list(shape)}")])
        t = self._dequantized(full) if self._is_fp8(full) else self._read(full)
        note = nonfinite(full, t)
        if note and note not in self.nonfinite:
            self.nonfinite.append(note)
        return t

    def _is_fp8(self, name: str) -> bool:
        return self.quant is not None and self.tensors[name].dtype in FP8

    def _read(self, name: str) -> np.ndarray:
        e = self.tensors[name]
        self.bar.update(e.end - e.begin if name not in self._counted else 0)
        self._counted.add(name)
        return self.files[name].fp8(name) if self._is_fp8(name) else \
            self.files[name].float32(name)

    def _dequantized(self, name: str) -> np.ndarray:
        """Fp8 weight `name` times its scales, broadcast over their blocks."""
        q = self.quant
        assert q is not None  # `_is_fp8` said so
        scale_name = name + q.suffix
        if scale_name not in self.tensors:
            raise ArchcError([Diagnostic("E0511", f"fp8 tensor `{name}` has no scale tensor "
                                         f"`{scale_name}` in {self.source}", help=f"its "
                                         f"config.json `quantization_config` ({q.method}) "
                                         "names the scales this way")])
        w, s = self._read(name), self._read(scale_name)
        self.used.add(scale_name)
        want = q.scale_shape(w.shape) if w.ndim >= 2 else (1,)
        if s.shape != want and not (q.block == (None, None) and s.size == 1):
            raise ArchcError([Diagnostic(
                "E0512", f"scale tensor `{scale_name}` has shape {list(s.shape)}; fp8 tensor "
                f"`{name}` {list(w.shape)} in blocks of {list(q.block)} needs {list(want)}",
                help="the checkpoint's scales do not match config.json's "
                "`quantization_config`")])
        if s.size == 1 or w.ndim < 2:
            return w * s.reshape(())
        rows, cols = (b or n for n, b in zip(w.shape[-2:], q.block))
        full = np.repeat(np.repeat(s, rows, axis=-2), cols, axis=-1)
        return w * full[..., :w.shape[-2], :w.shape[-1]]

    def linear(self, name: str, in_dim: int, out_dim: int) -> np.ndarray:
        """A torch `nn.Linear` weight [out, in], returned in archc's layout [in, out]."""
        return self.take(name, (out_dim, in_dim)).T

    def check_all_used(self, ignore: tuple[str, ...] = ()) -> None:
        extra = sorted(k for k in set(self.tensors) - self.used
                       if not any(p in k for p in ignore))
        if extra:
            raise ArchcError([Diagnostic("E0513", f"unexpected tensor `{k}` "
                                         f"{list(self.tensors[k].shape)} in {self.source}",
                                         help="the importer does not know where it belongs")
                              for k in extra])
