"""phi3: llama whose checkpoint fuses q/k/v (`qkv_proj`, blocks [q; k; v]) and gate/up
(`gate_up_proj`, [gate; up]), split on import; LongRoPE (short and long factors, with
`original_max_position_embeddings` at the top level of 4.x configs), partial rotary (Phi-4-mini)
and sliding windows."""

from __future__ import annotations

from archc.hf import common, llama


def describe(c, tensors=None):
    dec = llama.describe(c)
    llama.windows(c, dec)
    return dec


def _attention(out, t, hf, me, dec):
    _, q, kv = common.dims(dec)
    w = t.take(f"{hf}.qkv_proj.weight", (q + 2 * kv, dec.d))
    common.split_qkv(out, me, w, None, "blocks", dec)
    common.linear(out, t, f"{hf}.o_proj", f"{me}.o", q, dec.d, False)


def gate_up(out, t, hf, me, dec):
    w = t.take(f"{hf}.mlp.gate_up_proj.weight", (2 * dec.ff, dec.d)).T  # [d, 2 ff]
    out[f"{me}.mlp.gate.weight"] = w[:, :dec.ff].copy()
    out[f"{me}.mlp.up.weight"] = w[:, dec.ff:].copy()
    common.linear(out, t, f"{hf}.mlp.down_proj", f"{me}.mlp.down", dec.ff, dec.d, False)


def weights(c, dec, t):
    return llama.weights(c, dec, t, ffn=gate_up, attention=_attention)
