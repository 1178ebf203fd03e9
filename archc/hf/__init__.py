"""`archc import-hf`: a Hugging Face checkpoint folder -> an idiomatic `.arch` spec and a
safetensors file under archc's parameter names.

Each family's knowledge (config fields, tensor names, fused layouts) lives in its own module
here; the compiler core has no family code paths.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from archc.diagnostics import ArchcError, Diagnostic, did_you_mean
from archc.hf.config import HFConfig
from archc.hf.tensors import Tensors

DECODERS = ("bloom", "falcon", "gemma", "gemma2", "gpt2", "gpt_neox", "gptj", "llama",
            "mistral", "mixtral", "opt", "phi", "qwen2")
ENCODERS = ("bart", "bert", "longformer", "roberta", "t5")
FAMILIES = DECODERS + ENCODERS
# Buffers some checkpoints carry that are not parameters (causal masks, rotary caches).
_BUFFERS = ("attn.bias", "attn.masked_bias", "rotary_emb.inv_freq", "embeddings.position_ids")


@dataclass
class Imported:
    spec: str
    weights: dict[str, np.ndarray] | None


def family(c: HFConfig):
    if c.model_type not in FAMILIES:
        raise ArchcError([Diagnostic(
            "E0505", f"model type `{c.model_type}` cannot be imported yet",
            help=did_you_mean(c.model_type, FAMILIES) or f"supported: {', '.join(FAMILIES)}")])
    return importlib.import_module(f"archc.hf.{c.model_type}")


def import_checkpoint(directory: str | Path, config_only: bool = False) -> Imported:
    c = HFConfig.load(directory)
    fam = family(c)
    t = None if config_only else Tensors.load(directory)
    made = fam.describe(c, t)  # a Decoder (decoder-only families) or the spec text itself
    if not isinstance(made, str):
        made.name = c.model_type
        made.comment = [f"{c.architecture or c.model_type} imported from a Hugging Face "
                        "checkpoint by `archc import-hf`."]
    spec = made if isinstance(made, str) else made.render()
    if t is None:
        return Imported(spec, None)
    weights = fam.weights(c, made, t)
    t.check_all_used(ignore=_BUFFERS)
    return Imported(spec, weights)


def import_hf(directory: str | Path, out: str | Path, config_only: bool = False) -> Imported:
    """Write OUT/model.arch (and OUT/model.safetensors) and check that they fit each other."""
    from archc.api import parse
    from archc.lower import lower
    from archc.weights import check_weights, save_weights

    result = import_checkpoint(directory, config_only)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    graph = lower(parse(result.spec, str(out / "model.arch")))
    if result.weights is not None:
        check_weights(graph, result.weights, str(directory))
        save_weights(result.weights, str(out / "model.safetensors"))
    (out / "model.arch").write_text(result.spec)
    return result
