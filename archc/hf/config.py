"""Reading a Hugging Face config.json the same way whichever transformers version wrote it.

Every field a family reads is typed in `FIELDS`, and `get`/`rope` check the value they return
against it: a size is a positive integer (not `"32"`, not `-32`, not `true`), a float is a
finite number, a name is a short identifier-like string. So a config value can only reach the
generated `.arch` text as a checked int, float or bool, or as a name from a fixed table: no
config can change the structure of the spec. A wrong value is an error that names the field,
shows it in config.json, and says what was expected.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from archc.diagnostics import ArchcError, Diagnostic, Span
from archc.files import decode, read_bytes

_MISSING = object()
MAX_SIZE = 2**31 - 1
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}")

_KINDS = {  # kind -> (check, what is expected)
    "size": (lambda v: _size(v), f"a positive integer (at most {MAX_SIZE})"),
    "index": (lambda v: _int(v) and 0 <= v <= MAX_SIZE, "a non-negative integer"),
    "float": (lambda v: _num(v) and v >= 0, "a finite non-negative number"),
    "positive": (lambda v: _num(v) and v > 0, "a finite positive number"),
    "fraction": (lambda v: _num(v) and 0 < v <= 1, "a number in (0, 1]"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "name": (lambda v: isinstance(v, str) and bool(_NAME.fullmatch(v)),
             "a name (letters, digits, `_`, `.`, `-`)"),
    "names": (lambda v: isinstance(v, list) and all(isinstance(x, str) and _NAME.fullmatch(x)
                                                    for x in v), "a list of names"),
    "window": (lambda v: _size(v) or (isinstance(v, list) and bool(v) and all(map(_size, v))),
               "a positive integer or a list of them"),
    "floats": (lambda v: isinstance(v, list) and 0 < len(v) <= 4096 and all(
        _num(x) and x > 0 for x in v), "a list of positive numbers"),
    "flags": (lambda v: isinstance(v, list) and 0 < len(v) <= 4096 and all(
        _int(x) and x in (0, 1) for x in v), "a list of 0s and 1s"),
}
_FIELDS_BY_KIND = {
    "size": "vocab_size hidden_size n_embd n_embed num_attention_heads n_head num_heads "
            "num_hidden_layers n_layer num_layers num_decoder_layers intermediate_size d_ff "
            "d_kv d_model ffn_dim ffn_hidden_size n_inner max_position_embeddings n_positions "
            "num_key_value_heads num_kv_heads head_dim encoder_attention_heads "
            "decoder_attention_heads encoder_ffn_dim decoder_ffn_dim encoder_layers "
            "decoder_layers num_local_experts num_experts_per_tok type_vocab_size rotary_dim "
            "relative_attention_num_buckets relative_attention_max_distance sliding_window "
            "num_ln_in_parallel_attn word_embed_proj_dim original_max_position_embeddings "
            "sliding_window_pattern no_rope_layer_interval",
    "index": "pad_token_id",
    "float": "layer_norm_eps layer_norm_epsilon rms_norm_eps attn_logit_softcapping "
             "final_logit_softcapping norm_epsilon mscale mscale_all_dim",
    "positive": "rope_theta rotary_emb_base query_pre_attn_scalar factor low_freq_factor "
                "high_freq_factor beta_fast beta_slow attention_factor rope_local_base_freq "
                "embedding_multiplier attention_multiplier residual_multiplier "
                "logits_scaling logit_scale",
    "fraction": "partial_rotary_factor rotary_pct",
    "bool": "attention_bias mlp_bias alibi apply_residual_connection_post_layernorm bias "
            "do_layer_norm_before enable_bias multi_query new_decoder_architecture "
            "parallel_attn qk_layernorm scale_decoder_outputs scale_embedding "
            "tie_word_embeddings use_parallel_residual use_sliding_window truncate use_qk_norm "
            "use_bias use_qkv_bias",
    "name": "model_type hidden_act hidden_activation activation_function activation "
            "feed_forward_proj position_embedding_type rope_type type",
    "names": "architectures layer_types",
    "window": "attention_window",
    "floats": "short_factor long_factor",
    "flags": "no_rope_layers",
}
_SCALINGS = ("linear", "dynamic", "llama3", "yarn", "longrope")
_SCALING_FIELDS = {"linear": (), "dynamic": (), "llama3": ("low_freq_factor", "high_freq_factor"),
                   "yarn": ("beta_fast", "beta_slow", "attention_factor", "mscale",
                            "mscale_all_dim", "truncate"),
                   "longrope": ("attention_factor", "short_factor", "long_factor")}
FIELDS = {f: kind for kind, names in _FIELDS_BY_KIND.items() for f in names.split()}


def _size(v) -> bool:
    return _int(v) and 1 <= v <= MAX_SIZE


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


class HFConfig:
    def __init__(self, data: dict[str, Any], path: str = "config.json", text: str = ""):
        self.data = data
        self.path = path
        self.text = text
        self._from = 0  # where its fields begin in `text` (a nested config's `"text_config":`)

    @classmethod
    def load(cls, directory: str | Path) -> HFConfig:
        path = Path(directory) / "config.json"
        if not Path(directory).is_dir():
            raise ArchcError([Diagnostic("E0500", f"`{directory}` is not a checkpoint folder",
                                         help="pass the folder that holds config.json")])
        if not path.exists():
            raise ArchcError([Diagnostic("E0500", f"no `config.json` in `{directory}`")])
        text = decode(read_bytes(path, "JSON file"), path, "E0500")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            pos = min(e.pos, len(text.rstrip("\n")))  # an end-of-file error: the last line
            raise ArchcError([Diagnostic("E0500", f"`{path}` is not valid JSON: {e.msg}",
                                         Span(str(path), pos, pos + 1), "here")],
                             {str(path): text}) from None
        except (ValueError, RecursionError) as e:  # huge numbers, nesting too deep
            why = "it is nested too deeply" if isinstance(e, RecursionError) else str(e)
            raise ArchcError([Diagnostic("E0500", f"`{path}` cannot be read: {why}")]) from None
        if not isinstance(data, dict):
            raise ArchcError([Diagnostic("E0500", f"`{path}` holds a JSON "
                                         f"{type(data).__name__}, not an object of fields")])
        return cls(data, str(path), text)

    def checked(self, key: str, value: Any) -> Any:
        """`value` of field `key`, or an error naming the field and what it must be."""
        kind = FIELDS.get(key)
        if kind is None or value is None:
            return value
        check, expected = _KINDS[kind]
        if check(value):
            return value
        shown = json.dumps(value)[:60]
        raise ArchcError([Diagnostic(
            "E0506", f"`{self.path}`: `{key}` is {shown} ({type(value).__name__}); it must "
            f"be {expected}", self._span(key), "this field", help="fix the field in "
            "config.json (archc writes config values into the spec only after checking them)")],
            {self.path: self.text})

    def _span(self, key: str) -> Span | None:
        m = re.compile(r'"' + re.escape(key) + r'"\s*:').search(self.text, self._from)
        return Span(self.path, m.start(), m.start() + len(key) + 2) if m else None

    def nested(self, key: str, defaults: dict[str, Any] | None = None) -> HFConfig:
        """The config object under `key` (a multimodal checkpoint's `text_config`) as a config
        of its own, over `defaults`: transformers 4.x wrote a sub-config as its difference from
        the class defaults. Its errors point into the same config.json."""
        sub = self.data.get(key)
        if not isinstance(sub, dict):
            raise ArchcError([Diagnostic("E0501", f"`{self.path}` has no `{key}` object",
                                         self._span(key), "not an object")],
                             {self.path: self.text})
        c = HFConfig({**(defaults or {}), **sub}, self.path, self.text)
        span = self._span(key)
        c._from = span.end if span else 0
        return c

    @property
    def model_type(self) -> str:
        value = self.data.get("model_type")
        if value is None:
            raise ArchcError([Diagnostic("E0501", f"`{self.path}` has no `model_type`")])
        return self.checked("model_type", value)

    @property
    def architecture(self) -> str:
        archs = self.checked("architectures", self.data.get("architectures") or [])
        return archs[0] if archs else ""

    def get(self, *keys: str, default: Any = _MISSING) -> Any:
        """The first of `keys` present (families rename fields: n_embd / hidden_size)."""
        for k in keys:
            if self.data.get(k) is not None:
                return self.checked(k, self.data[k])
        if default is _MISSING:
            raise ArchcError([Diagnostic("E0501", f"`{self.path}` has no `{keys[0]}`",
                                         help=f"tried {', '.join(keys)}")])
        return default

    def rope(self, key: str, default: Any = _MISSING) -> Any:
        """A rope field: transformers 5 nests them in `rope_parameters`, 4.x keeps them at the
        top level (and some families in `rope_scaling`)."""
        for holder in (self.data.get("rope_parameters"), self.data, self.data.get("rope_scaling")):
            if isinstance(holder, dict) and holder.get(key) is not None:
                return self.checked(key, holder[key])
        if default is _MISSING:
            raise ArchcError([Diagnostic("E0501", f"`{self.path}` has no `{key}`")])
        return default

    def rope_options(self, layer_type: str | None = None, theta: float = 10000.0,
                     fraction: float = 1.0) -> dict:
        """The options of archc's `rope(...)` for this config: theta, fraction, and a scaling
        with its parameters. transformers 5 keeps them in `rope_parameters` (nested per layer
        type in some families), 4.x in `rope_theta` and `rope_scaling` (`type` or `rope_type`),
        with Phi-3's `original_max_position_embeddings` at the top level; the defaults are
        transformers' (`standardize_rope_params`, `modeling_rope_utils`)."""
        params = self.data.get("rope_parameters")
        if isinstance(params, dict) and isinstance(params.get(layer_type), dict):
            params = params[layer_type]
        holders = [h for h in (params, self.data.get("rope_scaling"), self.data)
                   if isinstance(h, dict)]

        def field(key, default=None):
            for h in holders:
                if h.get(key) is not None:
                    return self.checked(key, h[key])
            return default

        out = {"theta": float(field("rope_theta", theta)),
               "fraction": float(field("partial_rotary_factor", fraction))}
        kind = field("rope_type") or field("type") or "default"
        if kind == "default":
            return out
        if kind not in _SCALINGS:
            raise ArchcError([Diagnostic("E0502", f"rope scaling `{kind}` is not supported yet",
                                         help=f"supported: {', '.join(_SCALINGS)}")])
        out["scaling"] = kind
        max_pos = self.get("max_position_embeddings", default=None)
        if kind == "dynamic":
            out["max_pos"] = max_pos or self.get("max_position_embeddings")
        if kind in ("llama3", "yarn", "longrope"):  # the top-level one wins (Phi-3)
            top = self.data.get("original_max_position_embeddings")
            out["original_max"] = self.checked("original_max_position_embeddings", top) if top \
                else field("original_max_position_embeddings", max_pos)
        factor = field("factor")
        if factor is None and kind in ("yarn", "longrope") and out.get("original_max"):
            factor = (max_pos or 0) / out["original_max"]
        if factor is not None:
            out["factor"] = float(factor)
        for key in _SCALING_FIELDS[kind]:
            if field(key) is not None:
                value = field(key)
                out[key] = [float(v) for v in value] if isinstance(value, list) else \
                    value if isinstance(value, bool) else float(value)
        return out

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
