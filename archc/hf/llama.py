"""llama: RMSNorm, rotate-half RoPE, SwiGLU, GQA, untied head, no biases. The base of the
mistral, qwen2, mixtral and gemma modules."""

from __future__ import annotations

from archc.diagnostics import ArchcError, Diagnostic
from archc.hf import common
from archc.hf.config import HFConfig
from archc.hf.decoder import Decoder
from archc.hf.tensors import Tensors

# Every activation name of transformers' ACT2FN -> a primitive or a block of core.arch with the
# same formula (the tanh GELUs differ only in how they write sqrt(2 / pi)).
ACTS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "relu": "relu", "gelu_new": "gelu_tanh",
        "gelu_pytorch_tanh": "gelu_tanh", "gelu_python": "gelu", "tanh": "tanh",
        "gelu_python_tanh": "gelu_tanh", "gelu_accurate": "gelu_tanh", "gelu_fast": "gelu_fast",
        "quick_gelu": "quick_gelu", "gelu_10": "gelu_10", "relu2": "relu2", "relu6": "relu6",
        "leaky_relu": "leaky_relu", "hardswish": "hardswish", "mish": "mish",
        "laplace": "laplace", "sqrtsoftplus": "sqrt_softplus", "linear": "identity",
        "sigmoid": "sigmoid"}
_LEARNED = ("prelu", "xielu")  # activations with parameters of their own


def act(name: str) -> str:
    if name not in ACTS:
        why = " (it has learned parameters)" if name in _LEARNED else ""
        raise ArchcError([Diagnostic("E0503", f"activation `{name}` is not supported{why}",
                                     help=f"supported: {', '.join(sorted(ACTS))}")])
    return ACTS[name]


def head_kind(c: HFConfig, tied_default: bool) -> str:
    if not c.with_head():
        return "none"
    return "tied" if c.get("tie_word_embeddings", default=tied_default) else "untied"


def windows(c: HFConfig, dec: Decoder) -> None:
    """Sliding windows from `layer_types` (per layer) or a model-wide `sliding_window`."""
    window = c.get("sliding_window", default=None)
    types = c.get("layer_types", default=None)
    if types is not None:
        if window and "sliding_attention" in types:
            dec.window = window
            sliding = [i for i, t in enumerate(types) if t == "sliding_attention"]
            dec.window_layers = None if len(sliding) == dec.layers else sliding
    elif window and c.get("use_sliding_window", default=True):
        dec.window = window


def describe(c: HFConfig, tensors: Tensors | None = None) -> Decoder:
    d, heads = c.get("hidden_size"), c.get("num_attention_heads")
    bias = c.get("attention_bias", default=False)
    return Decoder(
        name=c.model_type, vocab=c.get("vocab_size"), d=d, heads=heads,
        layers=c.get("num_hidden_layers"), ff=c.get("intermediate_size"),
        eps=float(c.get("rms_norm_eps", default=1e-6)),
        kv_heads=c.get("num_key_value_heads", default=heads),
        head_dim=c.get("head_dim", default=None) or d // heads,
        rope=c.rope_options(),
        qkv_bias=bias, out_bias=bias, ffn="glu", act=act(c.get("hidden_act", default="silu")),
        ffn_bias=c.get("mlp_bias", default=False), head=head_kind(c, False))


def glu_ffn(out: common.Weights, t: Tensors, hf: str, me: str, dec: Decoder) -> None:
    common.glu(out, t, f"{hf}.mlp", f"{me}.mlp", dec)


def weights(c: HFConfig, dec: Decoder, t: Tensors, ffn=glu_ffn,
            attention=common.attention) -> common.Weights:
    out: common.Weights = {}
    out["embed_tokens.weight"] = t.take("model.embed_tokens.weight", (dec.vocab, dec.d))
    for i in range(dec.layers):
        hf, me = f"model.layers.{i}", f"layers.{i}"
        common.norm(out, t, f"{hf}.input_layernorm", f"{me}.input_norm", dec.d, False)
        attention(out, t, f"{hf}.self_attn", f"{me}.self_attn", dec)
        common.norm(out, t, f"{hf}.post_attention_layernorm", f"{me}.post_attention_norm",
                    dec.d, False)
        ffn(out, t, hf, me, dec)
    common.norm(out, t, "model.norm", "norm", dec.d, False)
    common.head(out, t, dec)
    return out

