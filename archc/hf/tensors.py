"""Reading checkpoint tensors by their Hugging Face names, with errors that name the tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from archc.diagnostics import ArchcError, Diagnostic


class Tensors:
    """The tensors of `model.safetensors` (or its shards). `take` marks a tensor used, so that
    `check_all_used` can report tensors the importer did not expect."""

    def __init__(self, tensors: dict[str, np.ndarray], source: str):
        self.tensors = tensors
        self.source = source
        self.used: set[str] = set()
        self.prefix = ""

    @classmethod
    def load(cls, directory: str | Path) -> Tensors:
        from safetensors.numpy import load_file

        directory = Path(directory)
        files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise ArchcError([Diagnostic("E0510", f"no `*.safetensors` file in `{directory}`")])
        tensors = {}
        for f in files:
            tensors.update(load_file(str(f)))
        return cls(tensors, ", ".join(f.name for f in files))

    def has(self, name: str) -> bool:
        return self.prefix + name in self.tensors or name in self.tensors

    def take(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        full = self.prefix + name if self.prefix + name in self.tensors else name
        if full not in self.tensors:
            raise ArchcError([Diagnostic("E0511", f"missing tensor `{self.prefix + name}` in "
                                         f"{self.source}")])
        self.used.add(full)
        t = self.tensors[full].astype(np.float32)
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise ArchcError([Diagnostic("E0512", f"tensor `{full}` has shape {list(t.shape)}, "
                                         f"the config implies {list(shape)}")])
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
