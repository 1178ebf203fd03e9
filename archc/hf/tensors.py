"""Reading checkpoint tensors by their Hugging Face names, with errors that name the tensor.

Shards are read through `archc.tensorfile` (headers checked, tensors read lazily, BF16/F16
converted, integer and fp8 tensors refused when taken as weights). A tensor in two shards is an
error naming both: which copy is right is not archc's to guess.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from archc.diagnostics import ArchcError, Diagnostic
from archc.progress import _Silent
from archc.tensorfile import Entry, TensorFile, nonfinite


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
        self.bar = _Silent()  # archc.progress: `import_checkpoint` sets a bar over the bytes

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
        return cls(files, ", ".join(p.name for p in paths))

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
        t = self.files[full].float32(full)
        e = self.tensors[full]
        self.bar.update(e.end - e.begin if full not in self._counted else 0)
        self._counted.add(full)
        note = nonfinite(full, t)
        if note and note not in self.nonfinite:
            self.nonfinite.append(note)
        return t

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
