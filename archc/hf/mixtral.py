"""mixtral: llama whose FFN is a mixture of SwiGLU experts (softmax router, top-k,
renormalised). Experts load from the per-expert layout (`experts.N.w1/w2/w3`, as published)
or the fused one (`experts.gate_up_proj`, `experts.down_proj`)."""

from __future__ import annotations

import numpy as np

from archc.hf import llama


def describe(c, tensors=None):
    dec = llama.describe(c)
    dec.ffn, dec.experts, dec.top_k = "moe", c.get("num_local_experts"), \
        c.get("num_experts_per_tok")
    llama.windows(c, dec)
    return dec


def _ffn(out, t, hf, me, dec) -> None:
    e, d, ff = dec.experts, dec.d, dec.ff
    moe = f"{hf}.block_sparse_moe" if t.has(f"{hf}.block_sparse_moe.gate.weight") else f"{hf}.mlp"
    out[f"{me}.mlp.router.weight"] = t.linear(f"{moe}.gate.weight", d, e)
    if t.has(f"{moe}.experts.gate_up_proj"):
        gate_up = t.take(f"{moe}.experts.gate_up_proj", (e, 2 * ff, d))
        gate, up = gate_up[:, :ff], gate_up[:, ff:]
        down = t.take(f"{moe}.experts.down_proj", (e, d, ff))
    else:
        w = {k: np.stack([t.take(f"{moe}.experts.{j}.{k}.weight") for j in range(e)])
             for k in ("w1", "w2", "w3")}
        gate, up, down = w["w1"], w["w3"], w["w2"]
    sub = f"{me}.mlp.experts"
    out[f"{sub}.gate"] = np.ascontiguousarray(gate.transpose(0, 2, 1))  # [E, d, ff]
    out[f"{sub}.up"] = np.ascontiguousarray(up.transpose(0, 2, 1))
    out[f"{sub}.down"] = np.ascontiguousarray(down.transpose(0, 2, 1))  # [E, ff, d]


def weights(c, dec, t):
    return llama.weights(c, dec, t, ffn=_ffn)
