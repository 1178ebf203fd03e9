"""`archc import-hf`: a Hugging Face checkpoint folder -> an idiomatic `.arch` spec and a
safetensors file under archc's parameter names.

Each family's knowledge (config fields, tensor names, fused layouts) lives in its own module
here; the compiler core has no family code paths.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from archc.diagnostics import ArchcError, Diagnostic, did_you_mean
from archc.hf.config import HFConfig
from archc.hf.tensors import Tensors
from archc.progress import bar
from archc.weights import nonfinite_weights

DECODERS = ("bloom", "cohere", "cohere2", "falcon", "gemma", "gemma2", "gemma3_text", "glm4",
            "gpt2", "gpt_neox", "gptj", "granite", "llama", "mistral", "mixtral", "opt", "phi",
            "phi3", "qwen2", "qwen3", "olmo2", "smollm3", "stablelm", "starcoder2", "qwen2_moe",
            "qwen3_moe", "deepseek_v3", "gpt_oss", "deepseek_v2")
ENCODERS = ("bart", "bert", "big_bird", "deberta-v2", "distilbert", "electra", "longformer",
            "marian", "mbart", "modernbert", "mt5", "pegasus", "roberta", "t5", "xlm-roberta")
FAMILIES = DECODERS + ENCODERS
# Multimodal checkpoints imported as their text decoder (fixtures: `<model type>_multimodal`).
MULTIMODAL = ("gemma3",)
# Buffers some checkpoints carry that are not parameters (causal masks, rotary caches).
_BUFFERS = ("attn.bias", "attn.masked_bias", "rotary_emb.inv_freq", "embeddings.position_ids")


@dataclass
class Imported:
    spec: str
    weights: dict[str, np.ndarray] | None


def family(c: HFConfig):
    known = FAMILIES + MULTIMODAL
    if c.model_type not in known:
        raise ArchcError([Diagnostic(
            "E0505", f"model type `{c.model_type}` cannot be imported yet",
            help=did_you_mean(c.model_type, known) or f"supported: {', '.join(known)}")])
    return importlib.import_module(f"archc.hf.{c.model_type}")


def import_checkpoint(directory: str | Path, config_only: bool = False,
                      strict: bool = False) -> Imported:
    c = HFConfig.load(directory)
    fam = family(c)
    t = None if config_only else Tensors.load(directory)
    made = fam.describe(c, t)  # a Decoder (decoder-only families) or the spec text itself
    if not isinstance(made, str):
        made.name = c.model_type
        made.comment = [f"{c.architecture or c.model_type} imported from a Hugging Face "
                        "checkpoint by `archc import-hf`.", *made.comment]
        from archc.serving import hf_facts, statement  # what genai_config.json needs

        made.serving = statement(hf_facts(getattr(fam, "serving_config", lambda c: c.data)(c)))
    spec = made if isinstance(made, str) else made.render()
    if t is None:
        return Imported(spec, None)
    with bar(sum(e.end - e.begin for e in t.tensors.values()), "converting weights",
             unit="B") as t.bar:
        weights = fam.weights(c, made, t)
    t.check_all_used(ignore=_BUFFERS)
    nonfinite_weights(t.nonfinite, f"{directory}: {t.source}", strict)
    return Imported(spec, weights)


def import_hf(directory: str | Path, out: str | Path, config_only: bool = False,
              strict: bool = False) -> Imported:
    """Write OUT/model.arch (and OUT/model.safetensors) and check that they fit each other.
    Nothing is written unless the spec lowers and the weights fit it; then both files are
    written as one atomic set (archc.files), so a failure leaves the old pair as it was."""
    from archc.api import parse
    from archc.files import cannot_write, write_files
    from archc.lower import lower
    from archc.weights import check_weights, safetensors_writer

    result = import_checkpoint(directory, config_only, strict)
    out = Path(out)
    config = Path(directory) / "config.json"
    generated = f"{out / 'model.arch'} (generated from {config}, not written)"
    try:
        graph = lower(parse(result.spec, generated))
        if result.weights is not None:
            check_weights(graph, result.weights, str(directory))
    except ArchcError as e:
        note = f"the spec was generated from `{config}`: check its fields"
        raise ArchcError([replace(d, notes=(*d.notes, note)) for d in e.diagnostics],
                         e.sources) from None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise cannot_write(out, (e.strerror or str(e)).lower()) from None
    files: dict = {out / "model.arch": result.spec.encode()}
    if result.weights is not None:
        files[out / "model.safetensors"] = safetensors_writer(result.weights)
    write_files(files)
    return result
