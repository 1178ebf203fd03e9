"""gemma3: the multimodal Gemma 3 checkpoints (gemma-3-4b/12b/27b, `Gemma3ForConditionalGeneration`)
imported as their text decoder, which is what transformers runs for a prompt of text alone.

Given only `input_ids` and `attention_mask`, `Gemma3Model.forward` embeds the ids (an image
token id past the vocabulary becomes 0, one inside it is an ordinary row), scatters no image
features, builds the causal and sliding masks of the text config (`token_type_ids` only adds
bidirectional blocks over image tokens, and text tokens are 0) and runs its `language_model`,
a `Gemma3TextModel`; `lm_head` follows, tied to the embeddings when the top-level
`tie_word_embeddings` says so (transformers 5; default true). Unlike `Gemma3ForCausalLM`, it
applies no `final_logit_softcapping` (transformers 5.24), so neither does the spec.

The text model's settings are under `text_config`: transformers 4.x wrote only the fields that
differ from `Gemma3TextConfig`'s defaults (gemma-3-4b-it's names six), so those defaults fill
the rest. Its tensors are `language_model.model.*` in what `save_pretrained` writes (4.x, and
5.x, which renames them back on saving), `model.language_model.*` in a 5.x state dict, and
`language_model.*` for a bare `Gemma3Model`. The vision tower (`vision_tower.*`) and the
projector (`multi_modal_projector.*`) are not imported, and the spec header says so.
"""

from __future__ import annotations

from archc.diagnostics import ArchcError, Diagnostic
from archc.hf import gemma3_text
from archc.hf.config import HFConfig

# transformers' Gemma3TextConfig defaults (those gemma3_text would otherwise guess differently)
TEXT_DEFAULTS = {
    "model_type": "gemma3_text", "vocab_size": 262_208, "hidden_size": 2304,
    "intermediate_size": 9216, "num_hidden_layers": 26, "num_attention_heads": 8,
    "num_key_value_heads": 4, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131_072, "rms_norm_eps": 1e-6, "query_pre_attn_scalar": 256,
    "sliding_window": 4096, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
}
# where the text model is, in the order tried: the first holding its embeddings wins
LAYOUTS = ("language_model.model.",  # what save_pretrained writes, 4.x and 5.x
           "model.language_model.",  # a transformers 5 state dict
           "language_model.")  # a bare Gemma3Model
HEADS = ("language_model.lm_head.", "lm_head.")  # an untied head (4.x; 5.x)
NOT_IMPORTED = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                "model.multi_modal_projector.")


def text_config(c: HFConfig) -> HFConfig:
    text = c.nested("text_config", TEXT_DEFAULTS)
    text.data["architectures"] = c.data.get("architectures")  # with_head() reads the class
    text.data["tie_word_embeddings"] = c.get("tie_word_embeddings", default=True)
    return text


def serving_config(c: HFConfig) -> dict:
    """The generation facts: the text model's, with the top level's token ids over them."""
    return {**text_config(c).data,
            **{k: v for k, v in c.data.items() if k.endswith("_token_id") and v is not None}}


def describe(c: HFConfig, tensors=None):
    text = text_config(c)
    dec = gemma3_text.describe(text)
    dec.comment = ["The text decoder only: the vision tower (`vision_tower.*`) and the "
                   "multimodal projector", "(`multi_modal_projector.*`) are not imported; "
                   "the spec reads text tokens, not images.", *dec.comment]
    if dec.final_softcap:
        dec.comment += [f"`final_logit_softcapping` ({dec.final_softcap!r}) is not applied: "
                        "Gemma3ForConditionalGeneration", "does not apply it."]
        dec.final_softcap = 0.0
    return dec


class _TextTensors:
    """The checkpoint's tensors under the names gemma3_text's mapping reads
    (`model.layers.0.*`, `lm_head.weight`); errors name the tensors as the file does."""

    def __init__(self, t, base: str):
        self.t, self.base = t, base

    def name(self, name: str) -> str:
        if name.startswith("model."):
            return self.base + name.removeprefix("model.")
        if name.startswith("lm_head."):
            names = [head + name.removeprefix("lm_head.") for head in HEADS]
            return next((n for n in names if n in self.t.tensors), names[0])
        return name

    def has(self, name: str) -> bool:
        return self.t.has(self.name(name))

    def take(self, name: str, shape: tuple[int, ...] | None = None):
        return self.t.take(self.name(name), shape)

    def linear(self, name: str, in_dim: int, out_dim: int):
        return self.take(name, (out_dim, in_dim)).T


def weights(c: HFConfig, dec, t):
    base = next((b for b in LAYOUTS if b + "embed_tokens.weight" in t.tensors), None)
    if base is None:
        raise ArchcError([Diagnostic(
            "E0511", f"no Gemma 3 text model in {t.source}: found none of "
            + ", ".join(f"`{b}embed_tokens.weight`" for b in LAYOUTS))])
    out = gemma3_text.weights(text_config(c), dec, _TextTensors(t, base))
    skipped = [k for k in t.tensors if k.startswith(NOT_IMPORTED)]
    t.used.update(skipped)  # deliberately left out (the header comment says so)
    t.bar.update(sum(t.tensors[k].end - t.tensors[k].begin for k in skipped))
    return out
