"""Reading a Hugging Face config.json the same way whichever transformers version wrote it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from archc.diagnostics import ArchcError, Diagnostic

_MISSING = object()


class HFConfig:
    def __init__(self, data: dict[str, Any], path: str = "config.json"):
        self.data = data
        self.path = path

    @classmethod
    def load(cls, directory: str | Path) -> HFConfig:
        path = Path(directory) / "config.json"
        if not path.exists():
            raise ArchcError([Diagnostic("E0500", f"no `config.json` in `{directory}`")])
        try:
            return cls(json.loads(path.read_text()), str(path))
        except json.JSONDecodeError as e:
            raise ArchcError([Diagnostic("E0500", f"`{path}` is not valid JSON: {e}")]) from None

    @property
    def model_type(self) -> str:
        return self.data.get("model_type", "")

    @property
    def architecture(self) -> str:
        archs = self.data.get("architectures") or []
        return archs[0] if archs else ""

    def get(self, *keys: str, default: Any = _MISSING) -> Any:
        """The first of `keys` present (families rename fields: n_embd / hidden_size)."""
        for k in keys:
            if self.data.get(k) is not None:
                return self.data[k]
        if default is _MISSING:
            raise ArchcError([Diagnostic("E0501", f"`{self.path}` has no `{keys[0]}`",
                                         help=f"tried {', '.join(keys)}")])
        return default

    def rope(self, key: str, default: Any = _MISSING) -> Any:
        """A rope field: transformers 5 nests them in `rope_parameters`, 4.x keeps them at the
        top level (and some families in `rope_scaling`)."""
        for holder in (self.data.get("rope_parameters"), self.data, self.data.get("rope_scaling")):
            if isinstance(holder, dict) and holder.get(key) is not None:
                return holder[key]
        if default is _MISSING:
            raise ArchcError([Diagnostic("E0501", f"`{self.path}` has no `{key}`")])
        return default

    def check_rope_type(self) -> None:
        kind = self.rope("rope_type", "default")
        if kind not in ("default", None):
            raise ArchcError([Diagnostic("E0502", f"rope scaling `{kind}` is not supported yet",
                                         help="only unscaled rotary embeddings import today")])

    def with_head(self) -> bool:
        """Whether the checkpoint's class carries an LM head (`...ForCausalLM`, not `...Model`)."""
        arch = self.architecture
        return not arch or arch.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration",
                                          "ForMaskedLM", "ForPreTraining"))
