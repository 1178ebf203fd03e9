"""The spec-level primitives: embeddings, norms, linear maps, FFNs and functions.

Each entry pairs a `Signature` (what a spec may write) with a function that lowers one call
into ops through a `LayerBuilder`. Layers that own parameters (`owns=True`) get a name
(`as NAME`, or their own name made unique in the enclosing scope); their parameters are
`<scope>.<name>.<local>`. Attention lives in `attention.py`.

Weights are stored `[in, out]` (`y = x @ W + b`); embeddings are `[rows, dim]`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from archc.ir.graph import Node
from archc.lower.builder import LayerBuilder
from archc.lower.signature import Arg, ModuleRef, Rope, Signature


@dataclass(frozen=True)
class Layer:
    sig: Signature
    lower: Callable[..., object]
    owns: bool  # creates parameters, so gets a name


LAYERS: dict[str, Layer] = {}


def layer(name: str, positional: int, *args: Arg, owns: bool = True, doc: str = ""):
    def wrap(fn):
        LAYERS[name] = Layer(Signature(name, args, positional, doc), fn, owns)
        return fn
    return wrap


T = "tensor"
ACTS = ("relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh")


def activation(b: LayerBuilder, x: Node, act: str) -> Node:
    if act in ("gelu", "gelu_tanh"):
        return b.op("gelu", x, approximate="tanh" if act == "gelu_tanh" else "none")
    return b.op(act, x)


def tied_weight(b: LayerBuilder, ref: ModuleRef, shape: tuple[int, ...]) -> Node:
    """The `weight` of another layer (`tied = wte`), checked against the shape needed here."""
    w = b.graph.params.get(f"{ref.prefix}.weight")
    if w is None:
        b.fail("E0106", f"layer `{ref.prefix}` has no `weight` to tie to", "tied here")
    if w.type.shape != shape:
        b.fail("E0201", f"cannot tie to `{w.name}`: it is {list(w.type.shape)}, "
               f"this layer needs {list(shape)}", "tied here")
    return b.reuse(w)


# ---------------------------------------------------------------- embeddings
@layer("embed", 3, Arg("ids", T), Arg("vocab", "int"), Arg("dim", "int"),
       Arg("tied", "module", None), doc="token embedding: ids [B,T] -> [B,T,dim]")
def embed(b: LayerBuilder, ids, vocab, dim, tied, role="token_embedding"):
    if tied is not None:
        w = tied_weight(b, tied, (vocab, dim))
    else:
        w = b.param("weight", (vocab, dim), "normal:0.02", role=role)
    return b.op("gather", w, ids)


@layer("type_embed", 3, Arg("ids", T), Arg("types", "int"), Arg("dim", "int"),
       doc="token-type (segment) embedding: ids [B,T] -> [B,T,dim]")
def type_embed(b, ids, types, dim):
    return embed(b, ids, types, dim, None, role="token_type_embedding")


@layer("pos_embed", 3, Arg("x", T), Arg("max_pos", "int"), Arg("dim", "int"),
       Arg("offset", "int", 0), Arg("mask", T, None),
       doc="learned absolute positions for x's seq axis -> [T,dim]; with `mask`, positions "
           "count only unmasked tokens -> [B,T,dim]")
def pos_embed(b, x, max_pos, dim, offset, mask):
    w = b.param("weight", (max_pos + offset, dim), "normal:0.02", role="position_embedding")
    pos = b.positions(x)
    if mask is not None:  # count only real tokens; with a cache, keep the new tokens' positions
        pos = mask_positions(b, mask)
        if pos.type.shape[1] != x.type.shape[1]:
            pos = b.op("tail", pos, x, axis=1, ref_axis=1)
    if offset:
        pos = b.op("add", pos, b.const(offset, np.int64))
    return b.op("gather", w, pos)


@layer("sinusoidal", 2, Arg("x", T), Arg("dim", "int"), owns=False,
       doc="fixed sin/cos positions (Vaswani et al.) for x's seq axis -> [T,dim]")
def sinusoidal(b, x, dim):
    if dim % 2:
        b.fail("E0200", f"sinusoidal positions need an even dim, got {dim}", "odd",
               span=b.at("dim"))
    return b.op("sinusoidal", b.positions(x), dim=dim)


# ---------------------------------------------------------------- norms
@layer("layer_norm", 2, Arg("x", T), Arg("eps", "float", 1e-5), Arg("bias", "bool", True))
def layer_norm(b, x, eps, bias):
    d = b.dim(x)
    w = b.param("weight", (d,), "ones")
    inputs = (x, w, b.param("bias", (d,), "zeros")) if bias else (x, w)
    return b.op("layer_norm", *inputs, eps=eps)


@layer("rms_norm", 2, Arg("x", T), Arg("eps", "float", 1e-6), Arg("unit_offset", "bool", False),
       doc="x / rms(x) * w; with unit_offset the scale is (1 + w) and w starts at 0")
def rms_norm(b, x, eps, unit_offset):
    w = b.param("weight", (b.dim(x),), "zeros" if unit_offset else "ones")
    if unit_offset:
        w = b.op("add", w, b.const(1.0))
    return b.op("rms_norm", x, w, eps=eps)


# ---------------------------------------------------------------- linear maps and heads
def dense(b: LayerBuilder, x: Node, out: int, bias: bool, init: str = "xavier",
          role: str = "other") -> Node:
    w = b.param("weight", (b.dim(x), out), init, role=role)
    y = b.op("matmul", x, w)
    return b.op("add", y, b.param("bias", (out,), "zeros", role=role)) if bias else y


@layer("linear", 2, Arg("x", T), Arg("out", "int"), Arg("bias", "bool", True),
       Arg("tied", "module", None), Arg("init", "enum", "xavier", ("xavier", "he", "normal")))
def linear(b, x, out, bias, tied, init, role="other"):
    if tied is None:
        return dense(b, x, out, bias, "normal:0.02" if init == "normal" else init, role)
    w = tied_weight(b, tied, (out, b.dim(x)))  # an embedding table [rows, dim], used as x @ W^T
    y = b.op("matmul", x, b.op("transpose", w, perm=(1, 0)))
    return b.op("add", y, b.param("bias", (out,), "zeros")) if bias else y


@layer("lm_head", 2, Arg("x", T), Arg("vocab", "int"), Arg("tied", "module", None),
       Arg("bias", "bool", False), doc="the output projection to the vocabulary")
def lm_head(b, x, vocab, tied, bias):
    return linear(b, x, vocab, bias, tied, "normal", role="head")


# ---------------------------------------------------------------- feed-forward
@layer("mlp", 2, Arg("x", T), Arg("hidden", "int"), Arg("act", "enum", "gelu", ACTS),
       Arg("bias", "bool", True), Arg("out", "int", None), Arg("dropout", "float", 0.0),
       doc="two-layer FFN: fc -> act -> proj")
def mlp(b, x, hidden, act, bias, out, dropout):
    init = "he" if act == "relu" else "xavier"
    h = activation(b, dense(_sub(b, "fc"), x, hidden, bias, init), act)
    y = dense(_sub(b, "proj"), h, out or b.dim(x), bias)
    return b.op("dropout", y, p=dropout) if dropout else y


@layer("glu", 2, Arg("x", T), Arg("hidden", "int"), Arg("act", "enum", "sigmoid", ACTS),
       Arg("bias", "bool", False), Arg("out", "int", None), Arg("dropout", "float", 0.0),
       doc="gated FFN: down(act(gate(x)) * up(x)); act=silu is SwiGLU, act=gelu is GeGLU")
def glu(b, x, hidden, act, bias, out, dropout):
    gate = activation(b, dense(_sub(b, "gate"), x, hidden, bias), act)
    h = b.op("mul", gate, dense(_sub(b, "up"), x, hidden, bias))
    y = dense(_sub(b, "down"), h, out or b.dim(x), bias)
    return b.op("dropout", y, p=dropout) if dropout else y


@layer("swiglu", 2, Arg("x", T), Arg("hidden", "int"), Arg("bias", "bool", False),
       Arg("out", "int", None), doc="glu with act = silu")
def swiglu(b, x, hidden, bias, out):
    return glu(b, x, hidden, "silu", bias, out, 0.0)


@layer("geglu", 2, Arg("x", T), Arg("hidden", "int"), Arg("bias", "bool", False),
       Arg("out", "int", None), Arg("approximate", "bool", False),
       doc="glu with act = gelu (tanh form when approximate)")
def geglu(b, x, hidden, bias, out, approximate):
    return glu(b, x, hidden, "gelu_tanh" if approximate else "gelu", bias, out, 0.0)


def _sub(b: LayerBuilder, name: str) -> LayerBuilder:
    return LayerBuilder(b.graph, b.diags, f"{b.scope}.{name}" if b.scope else name, b.span,
                        b.shared, b.uses, b.arg_spans)


# ---------------------------------------------------------------- functions (no parameters)
@layer("dropout", 2, Arg("x", T), Arg("p", "float"), owns=False, doc="identity at inference")
def dropout(b, x, p):
    return b.op("dropout", x, p=p)


def _unary(name: str, op: str, **attrs):
    layer(name, 1, Arg("x", T), owns=False)(lambda b, x: b.op(op, x, **attrs))


for _name in ("relu", "silu", "sigmoid", "tanh", "exp", "sqrt", "erf"):
    _unary(_name, _name)
_unary("gelu", "gelu", approximate="none")
_unary("gelu_tanh", "gelu", approximate="tanh")


@layer("softmax", 1, Arg("x", T), Arg("axis", "int", -1), owns=False)
def softmax(b, x, axis):
    return b.op("softmax", x, axis=axis)


@layer("first_token", 1, Arg("x", T), owns=False, doc="x[:, 0]: [B,T,D] -> [B,D]")
def first_token(b, x):
    return b.op("take", x, axis=1, index=0)


@layer("softcap", 2, Arg("x", T), Arg("cap", "float"), owns=False, doc="cap * tanh(x / cap)")
def softcap(b, x, cap):
    c = b.const(cap)
    return b.op("mul", b.op("tanh", b.op("div", x, c)), c)


@layer("rope", 0, Arg("theta", "float", 10000.0), Arg("fraction", "float", 1.0),
       Arg("dim", "int", None), Arg("interleaved", "bool", False), owns=False,
       doc="a rotary-embedding config for attention(..., rope = rope(...))")
def rope(b, theta, fraction, dim, interleaved):
    return Rope(theta, fraction, dim, interleaved)


NUMERIC = {"sqrt": np.sqrt, "exp": np.exp, "tanh": np.tanh}  # these also work on numbers


@layer("relative_bias", 4, Arg("x", T), Arg("heads", "int"), Arg("buckets", "int", 32),
       Arg("max_distance", "int", 128), Arg("bidirectional", "bool", True),
       Arg("context", T, None),
       doc="T5 relative position bias [heads, Tq, Tk], for attention(..., position_bias = b)")
def relative_bias(b, x, heads, buckets, max_distance, bidirectional, context):
    table = b.param("weight", (buckets, heads), "normal:0.02")
    kpos = b.key_positions(x) if context is None else b.positions(context)
    ids = b.op("relative_buckets", b.positions(x), kpos, num_buckets=buckets,
               max_distance=max_distance, bidirectional=bidirectional)
    return b.op("transpose", b.op("gather", table, ids), perm=(2, 0, 1))  # [H, Tq, Tk]


def mask_positions(b: LayerBuilder, mask: Node) -> Node:
    """Positions that skip padding: cumsum(mask) * mask - 1, so the first real token is 0 and
    padding gets -1 (the convention of OPT's and Bloom's position ids)."""
    if mask.type.dtype != "int64":
        mask = b.op("cast", mask, to="int64")
    return b.op("sub", b.op("mul", b.op("cumsum", mask, axis=-1), mask), b.const(1, np.int64))


@layer("alibi", 2, Arg("mask", T), Arg("heads", "int"), owns=False,
       doc="ALiBi bias [B, heads, 1, Tk]: slope_h * key position, positions counted over mask")
def alibi(b, mask, heads):
    from archc.ops.attention import alibi_slopes

    pos = b.op("mul", mask_positions(b, mask), mask)  # (cumsum - 1) * mask: padding at 0
    pos = b.op("reshape", b.op("cast", pos, to="float32"), shape=(0, 1, 1, -1))
    return b.op("mul", pos, b.const(alibi_slopes(heads).reshape(heads, 1, 1)))


@layer("moe", 4, Arg("x", T), Arg("experts", "int"), Arg("top_k", "int"), Arg("hidden", "int"),
       Arg("act", "enum", "silu", ACTS),
       doc="mixture of gated experts: softmax router, top-k, renormalised, GLU experts")
def moe(b, x, experts, top_k, hidden, act):
    if not 0 < top_k <= experts:
        b.fail("E0200", f"`top_k` = {top_k} must be in 1..{experts}",
               f"picks {top_k} of {experts} experts", span=b.at("top_k"))
    d = b.dim(x)
    gates = b.op("moe_gates", dense(_sub(b, "router"), x, experts, False), k=top_k)  # [B,T,E]
    # Every expert runs on every token (dense); the gates zero all but the top k. Exact, and a
    # later fusion can swap in a sparse kernel.
    x5 = b.op("reshape", x, shape=(0, 0, 1, 1, d))  # [B,T,1,1,d] @ [E,d,ff] -> [B,T,E,1,ff]
    sub = _sub(b, "experts")
    wg, wu, wd = (sub.param("gate", (experts, d, hidden), "xavier"),
                  sub.param("up", (experts, d, hidden), "xavier"),
                  sub.param("down", (experts, hidden, d), "xavier"))
    b.graph.meta.setdefault("moe", []).append(
        {"params": [wg.name, wu.name, wd.name], "experts": experts, "top_k": top_k})
    gate = activation(b, b.op("matmul", x5, wg), act)
    up = b.op("matmul", x5, wu)
    y = b.op("matmul", b.op("mul", gate, up), wd)
    y = b.op("reshape", y, shape=(0, 0, experts, d))  # [B,T,E,d]
    weighted = b.op("mul", y, b.op("reshape", gates, shape=(0, 0, experts, 1)))
    return b.op("reduce_sum", weighted, axis=2)
