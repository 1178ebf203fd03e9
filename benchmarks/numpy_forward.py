"""Hand-written NumPy forwards of the benchmark's three models (picoGPT-style): the baseline
archc's NumPy backend is measured against in benchmarks/suite.py. Weights come from the
transformers model, pre-transposed to [in, out] once; nothing else is precomputed.

    W = prepare(kind, torch_model); logits = forward(kind, W, ids)
    step = stepper(kind, W, prompt, next_ids); step()  # one decode step, repeatable
"""

from __future__ import annotations

import math

import numpy as np


def prepare(kind: str, model) -> dict:
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    cfg = model.config
    W = {"cfg": cfg}
    for k, v in sd.items():
        # nn.Linear stores [out, in]; GPT-2's Conv1D already [in, out]
        linear = v.ndim == 2 and kind != "gpt2" and "embed" not in k and "embeddings" not in k
        W[k] = np.ascontiguousarray(v.T) if linear else v
    if kind == "gpt2":
        W["lm_head"] = np.ascontiguousarray(sd["transformer.wte.weight"].T)
    return W


def _rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _softmax(x):
    x = np.exp(x - x.max(-1, keepdims=True))
    return x / x.sum(-1, keepdims=True)


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _attend(q, k, v, causal: bool):
    """q [H, T, hd], k/v [H, S, hd] (S >= T: the last T keys are the new ones)."""
    s = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
    if causal:
        t, n = q.shape[1], k.shape[1]
        s = s + np.triu(np.full((t, n), -np.inf, np.float32), n - t + 1)
    return _softmax(s) @ v


def _rope(x, pos, theta):
    hd = x.shape[-1]
    f = pos[:, None] * (1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float32) / hd))
    cos, sin = np.cos(np.concatenate([f, f], -1)), np.sin(np.concatenate([f, f], -1))
    rot = np.concatenate([-x[..., hd // 2:], x[..., : hd // 2]], -1)
    return x * cos + rot * sin


def _heads(x, n):
    t, d = x.shape
    return x.reshape(t, n, d // n).transpose(1, 0, 2)


def llama(W, ids, cache=None, start=0):
    c = W["cfg"]
    H, KV, eps = c.num_attention_heads, c.num_key_value_heads, c.rms_norm_eps
    theta = getattr(c, "rope_parameters", None) or {"rope_theta": c.rope_theta}
    theta = theta["rope_theta"]
    x = W["model.embed_tokens.weight"][ids[0]]
    pos = np.arange(start, start + len(x), dtype=np.float32)
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        h = _rms(x, W[p + "input_layernorm.weight"], eps)
        q = _rope(_heads(h @ W[p + "self_attn.q_proj.weight"], H), pos, theta)
        k = _rope(_heads(h @ W[p + "self_attn.k_proj.weight"], KV), pos, theta)
        v = _heads(h @ W[p + "self_attn.v_proj.weight"], KV)
        if cache is not None:
            if i in cache:
                k, v = np.concatenate([cache[i][0], k], 1), np.concatenate([cache[i][1], v], 1)
            cache[i] = (k, v)
        o = _attend(q, np.repeat(k, H // KV, 0), np.repeat(v, H // KV, 0), True)
        x = x + o.transpose(1, 0, 2).reshape(len(x), -1) @ W[p + "self_attn.o_proj.weight"]
        h = _rms(x, W[p + "post_attention_layernorm.weight"], eps)
        g = h @ W[p + "mlp.gate_proj.weight"]
        x = x + (g / (1 + np.exp(-g)) * (h @ W[p + "mlp.up_proj.weight"])) @ \
            W[p + "mlp.down_proj.weight"]
    return (_rms(x, W["model.norm.weight"], eps) @ W["lm_head.weight"])[None]


def gpt2(W, ids, cache=None, start=0):
    c = W["cfg"]
    H, eps, t = c.n_head, c.layer_norm_epsilon, ids.shape[1]
    x = W["transformer.wte.weight"][ids[0]] + W["transformer.wpe.weight"][start:start + t]
    for i in range(c.n_layer):
        p = f"transformer.h.{i}."
        h = _ln(x, W[p + "ln_1.weight"], W[p + "ln_1.bias"], eps)
        q, k, v = np.split(h @ W[p + "attn.c_attn.weight"] + W[p + "attn.c_attn.bias"], 3, -1)
        q, k, v = _heads(q, H), _heads(k, H), _heads(v, H)
        if cache is not None:
            if i in cache:
                k, v = np.concatenate([cache[i][0], k], 1), np.concatenate([cache[i][1], v], 1)
            cache[i] = (k, v)
        o = _attend(q, k, v, True).transpose(1, 0, 2).reshape(t, -1)
        x = x + o @ W[p + "attn.c_proj.weight"] + W[p + "attn.c_proj.bias"]
        h = _ln(x, W[p + "ln_2.weight"], W[p + "ln_2.bias"], eps)
        h = _gelu_tanh(h @ W[p + "mlp.c_fc.weight"] + W[p + "mlp.c_fc.bias"])
        x = x + h @ W[p + "mlp.c_proj.weight"] + W[p + "mlp.c_proj.bias"]
    x = _ln(x, W["transformer.ln_f.weight"], W["transformer.ln_f.bias"], eps)
    return (x @ W["lm_head"])[None]


def bert(W, ids):
    c = W["cfg"]
    H, eps, t = c.num_attention_heads, c.layer_norm_eps, ids.shape[1]
    e = "embeddings."
    x = W[e + "word_embeddings.weight"][ids[0]] + W[e + "position_embeddings.weight"][:t] + \
        W[e + "token_type_embeddings.weight"][0]
    x = _ln(x, W[e + "LayerNorm.weight"], W[e + "LayerNorm.bias"], eps)
    for i in range(c.num_hidden_layers):
        p = f"encoder.layer.{i}."
        q, k, v = (_heads(x @ W[p + f"attention.self.{n}.weight"] +
                          W[p + f"attention.self.{n}.bias"], H) for n in ("query", "key", "value"))
        o = _attend(q, k, v, False).transpose(1, 0, 2).reshape(t, -1)
        o = o @ W[p + "attention.output.dense.weight"] + W[p + "attention.output.dense.bias"]
        x = _ln(x + o, W[p + "attention.output.LayerNorm.weight"],
                W[p + "attention.output.LayerNorm.bias"], eps)
        h = _gelu_tanh(x @ W[p + "intermediate.dense.weight"] + W[p + "intermediate.dense.bias"])
        h = h @ W[p + "output.dense.weight"] + W[p + "output.dense.bias"]
        x = _ln(x + h, W[p + "output.LayerNorm.weight"], W[p + "output.LayerNorm.bias"], eps)
    return x[None]


FORWARDS = {"llama": llama, "gpt2": gpt2, "bert": bert}


def forward(kind: str, W, ids):
    return FORWARDS[kind](W, ids)


def stepper(kind: str, W, prompt, nxt):
    cache: dict = {}
    FORWARDS[kind](W, prompt, cache)
    saved = dict(cache)

    def step():
        c = dict(saved)
        return FORWARDS[kind](W, nxt, c, prompt.shape[1])

    return step
