"""Tensor mappings shared by the family modules: norms, attention, FFNs, heads.

Each helper reads Hugging Face tensors through `Tensors` and writes archc parameters (layout
[in, out]) into `out` under the names of `decoder.Decoder`'s template.
"""

from __future__ import annotations

import numpy as np

from archc.hf.decoder import Decoder
from archc.hf.tensors import Tensors

Weights = dict[str, np.ndarray]

SEQ2SEQ_INPUTS = [  # the graph inputs of an encoder-decoder spec, as transformers names them
    "  input input_ids: int64[batch, seq]",
    "  input attention_mask: int64[batch, seq]",
    "  input decoder_input_ids: int64[batch, tgt]",
    "  input decoder_attention_mask: int64[batch, tgt]",
]


def norm(out: Weights, t: Tensors, hf: str, name: str, d: int, bias: bool = True) -> None:
    out[f"{name}.weight"] = t.take(f"{hf}.weight", (d,))
    if bias:
        out[f"{name}.bias"] = t.take(f"{hf}.bias", (d,))


def linear(out: Weights, t: Tensors, hf: str, name: str, n_in: int, n_out: int,
           bias: bool) -> None:
    out[f"{name}.weight"] = t.linear(f"{hf}.weight", n_in, n_out)
    if bias:
        out[f"{name}.bias"] = t.take(f"{hf}.bias", (n_out,))


def dims(dec: Decoder) -> tuple[int, int, int]:
    hd = dec.head_dim or dec.d // dec.heads
    return hd, dec.heads * hd, (dec.kv_heads or dec.heads) * hd


def attention(out: Weights, t: Tensors, hf: str, name: str, dec: Decoder,
              proj=("q_proj", "k_proj", "v_proj", "o_proj")) -> None:
    """Separate q/k/v/o projections."""
    _, q, kv = dims(dec)
    for mine, theirs, n_out in zip("qkv", proj[:3], (q, kv, kv)):
        linear(out, t, f"{hf}.{theirs}", f"{name}.{mine}", dec.d, n_out, dec.qkv_bias)
    linear(out, t, f"{hf}.{proj[3]}", f"{name}.o", q, dec.d, dec.out_bias)


def split_qkv(out: Weights, name: str, w: np.ndarray, b: np.ndarray | None, layout: str,
              dec: Decoder) -> None:
    """Fused qkv [out, in] (torch layout) -> q, k, v. Layouts:
    `blocks` = [q; k; v]; `per_head` = per head [q_h; k_h; v_h] (GPT-NeoX, Bloom);
    `per_group` = per kv group [q heads of the group; k; v] (Falcon's new architecture)."""
    hd, _, _ = dims(dec)
    kv = dec.kv_heads or dec.heads

    def parts(a):
        if layout == "blocks":
            q = dec.heads * hd
            return a[:q], a[q:q + kv * hd], a[q + kv * hd:]
        if layout == "per_head":
            r = a.reshape(dec.heads, 3, hd, *a.shape[1:])
            return (r[:, i].reshape(dec.heads * hd, *a.shape[1:]) for i in range(3))
        g = dec.heads // kv
        r = a.reshape(kv, g + 2, hd, *a.shape[1:])
        return (r[:, :g].reshape(dec.heads * hd, *a.shape[1:]),
                r[:, g].reshape(kv * hd, *a.shape[1:]), r[:, g + 1].reshape(kv * hd, *a.shape[1:]))

    for mine, part in zip("qkv", parts(w)):
        out[f"{name}.{mine}.weight"] = np.ascontiguousarray(part.T)
    if b is not None:
        for mine, part in zip("qkv", parts(b)):
            out[f"{name}.{mine}.bias"] = np.ascontiguousarray(part)


def glu(out: Weights, t: Tensors, hf: str, name: str, dec: Decoder,
        proj=("gate_proj", "up_proj", "down_proj")) -> None:
    for mine, theirs in zip(("gate", "up"), proj[:2]):
        linear(out, t, f"{hf}.{theirs}", f"{name}.{mine}", dec.d, dec.ff, dec.ffn_bias)
    linear(out, t, f"{hf}.{proj[2]}", f"{name}.down", dec.ff, dec.d, dec.ffn_bias)


def mlp(out: Weights, t: Tensors, hf: str, name: str, dec: Decoder, proj=("fc1", "fc2")) -> None:
    linear(out, t, f"{hf}.{proj[0]}", f"{name}.fc", dec.d, dec.ff, dec.ffn_bias)
    linear(out, t, f"{hf}.{proj[1]}", f"{name}.proj", dec.ff, dec.d, dec.ffn_bias)


def head(out: Weights, t: Tensors, dec: Decoder, hf: str = "lm_head") -> None:
    if dec.head == "untied":
        out["lm_head.weight"] = t.linear(f"{hf}.weight", dec.embed_dim or dec.d, dec.vocab)
    if dec.head != "none" and dec.head_bias:
        out["lm_head.bias"] = t.take(f"{hf}.bias", (dec.vocab,))
