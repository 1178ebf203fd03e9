"""Exact parameter counts of a lowered graph, by role.

`total` counts each parameter once (a tied head or a shared layer once); `with_duplicates`
counts it once per layer that uses it. The four buckets sum to `total`.

Buffers are tensors a checkpoint stores but does not train: the `final_logits_bias` of BART,
Marian, Pegasus and mBART (the library block `logits_bias` names it so). Frameworks do not
count them as parameters, so neither does `total`: they are reported as `buffers`.

At a context length T (`--seq`, default 2048) and batch B (`--batch`, default 1), with every
symbol of the input types but `batch` (`seq`, `tgt`, a memory length) bound to T:

- forward FLOPs per token: 2·m·n·k per matmul of the lowered graph (the counting `archc
  explain` uses too), at batch 1, divided by T. `weights`: matmuls with a weight (or constant)
  operand, ≈ 2·N; `attention`: activation × activation matmuls (q·kᵀ and probs·v, the whole
  T×T square even when causal). Embedding lookups, norms and elementwise ops are not counted.
  Experts run densely today (every expert on every token); the count scales the expert
  matmuls by top_k/experts, what a routed implementation does.
- weight bytes: float32 and float16 at 4 and 2 bytes a parameter (not the buffers); int8 and
  int4 exactly what `compile --weights-dtype int8|int4` stores (block 32, zero points): the
  codes, scales and zero points of each matmul weight and expert bank, embedding tables at 8
  bits a row, the other parameters float32 (`archc.quantize.stored_bytes`).
- KV cache: kv_per_token values × B × T, at float32 and float16.
- peak activations: the NumPy interpreter's live set over the optimised graph (`-O`): after
  each node, the bytes of the values it still holds (it frees a value after its last reader).
  A view (reshape of a contiguous value, transpose, slice, dropout) shares its input's buffer.
  Inputs, weights and constants are not counted, nor a kernel's own temporaries (softmax's
  exp, the chunked attention kernel's score block): a measurement is that much higher.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Iterator

from archc.ir.graph import Graph, Node
from archc.ir.types import numel

ITEMSIZE = {"float32": 4, "int64": 8, "bool": 1}
WEIGHT_DTYPES = {"float32": 4, "float16/bfloat16": 2, "int8": 1, "int4": 0.5}

BUCKETS = {
    "token_embedding": "token embedding",
    "position_embedding": "position and token-type embeddings",
    "token_type_embedding": "position and token-type embeddings",
    "head": "untied output head",
    "other": "non-embedding",
}
# parameter names (last component) that the framework keeps as buffers: BART's
# `final_logits_bias`, DeepSeek-V3's router `e_score_correction_bias` (archc's correction_bias)
BUFFERS = ("final_logits_bias", "correction_bias")


def is_buffer(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in BUFFERS


def param_stats(graph: Graph) -> dict:
    buckets = dict.fromkeys(BUCKETS.values(), 0)
    total = dup = buffers = 0
    for name, p in graph.params.items():
        n = numel(p.type.shape)
        if is_buffer(name):
            buffers += n
            continue
        total += n
        dup += n * max(1, graph.param_uses.get(name, 1))
        buckets[BUCKETS[p.attrs.get("role", "other")]] += n
    # Per token, a mixture-of-experts layer runs top_k of its experts. A layer in a shared
    # repeat records its experts once per step: count each parameter once.
    idle = {n: numel(graph.params[n].type.shape) * (m["experts"] - m["top_k"]) // m["experts"]
            for m in graph.meta.get("moe", []) for n in m["params"]}
    kv = graph.meta.get("kv_per_token", 0)
    return {"model": graph.name, "parameters": total, "with_duplicates": dup,
            "active_per_token": total - sum(idle.values()), "tensors": len(graph.params),
            "breakdown": buckets, "buffers": buffers,
            "kv_cache_bytes_per_token": {"float32": 4 * kv, "float16": 2 * kv}}


def format_stats(s: dict) -> str:
    kv = s["kv_cache_bytes_per_token"]
    rows = [("parameters", s["parameters"], ""),
            ("with duplicates", s["with_duplicates"], "  (tied/shared weights per use)"),
            ("active per token", s["active_per_token"], "  (mixture of experts: top-k only)"),
            ("tensors", s["tensors"], "")]
    rows += [(f"  {k}", v, "") for k, v in s["breakdown"].items()]
    if s["buffers"]:
        rows.append(("buffers", s["buffers"], "  (stored, not trained: not parameters)"))
    rows += [("KV cache bytes/token", kv["float32"], f"  (float32; float16: {kv['float16']:,})")]
    if "flops_per_token" in s:
        rows += _more_rows(s)
    width = max(len(r[0]) for r in rows)
    lines = [f"model {s['model']}"]
    lines += [f"  {k:<{width}} {round(v):>16,}{note}" for k, v, note in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- dims
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.FloorDiv: operator.floordiv}


def dim_size(d, dims: dict[str, int]) -> int | None:
    """The size of a dim (`7`, `seq`, `batch*passages`, `(m+seq)[-8:]`, `pool(seq,2,2)`) under
    the bound symbols, or None. The text is read as a tree, never run."""
    if isinstance(d, int):
        return d
    try:
        return _dim(ast.parse(d, mode="eval").body, dims)
    except (SyntaxError, KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def _dim(e: ast.expr, dims: dict[str, int]) -> int:
    if isinstance(e, ast.Constant) and type(e.value) is int:
        return e.value
    if isinstance(e, ast.Name):
        return dims[e.id]
    if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.USub):
        return -_dim(e.operand, dims)
    if isinstance(e, ast.BinOp) and type(e.op) in _BINOPS:
        return _BINOPS[type(e.op)](_dim(e.left, dims), _dim(e.right, dims))
    if isinstance(e, ast.Subscript) and isinstance(e.slice, ast.Slice) and e.slice.step is None:
        lo, hi = (None if x is None else _dim(x, dims) for x in (e.slice.lower, e.slice.upper))
        return len(range(_dim(e.value, dims))[lo:hi])
    if isinstance(e, ast.Call) and isinstance(e.func, ast.Name) and e.func.id == "pool" and \
            len(e.args) == 3 and not e.keywords:  # archc.ops.conv.out_len
        t, span, stride = (_dim(a, dims) for a in e.args)
        return (t - span) // stride + 1
    raise ValueError(ast.dump(e))


def bind(graph: Graph, batch: int, seq: int) -> dict[str, int]:
    """`batch` -> batch; every other plain symbol of the input types -> seq."""
    names = {d for n in graph.inputs.values() for d in n.type.shape
             if isinstance(d, str) and d.isidentifier()}
    return {d: batch if d == "batch" else seq for d in names} | {"batch": batch}


# ---------------------------------------------------------------- FLOPs
_SHAPE_ONLY = ("transpose", "reshape", "reshape_to", "cast", "slice", "dropout")


def _source(n: Node) -> Node:
    while n.kind == "op" and n.op in _SHAPE_ONLY:
        n = n.inputs[0]
    return n


def matmul_flops(graph: Graph, size: Callable) -> Iterator[tuple[Node, float, bool]]:
    """Each matmul with its FLOPs, 2·m·n·k with dims sized by `size`, and whether it is
    attention (no operand is a weight or a constant, through shape-only ops). A mixture of
    experts' expert matmuls count top_k/experts of their dense cost."""
    share = {p: m["top_k"] / m["experts"] for m in graph.meta.get("moe", []) for p in m["params"]}
    for n in graph.nodes():
        if n.kind != "op" or n.op != "matmul":
            continue
        fixed = [s for s in map(_source, n.inputs) if s.kind in ("param", "const")]
        scale = min((share.get(s.name, 1.0) for s in fixed if s.kind == "param"), default=1.0)
        k = size(n.inputs[0].type.shape[-1])
        yield n, 2.0 * k * float(math.prod(size(d) for d in n.type.shape)) * scale, not fixed


def flop_stats(graph: Graph, seq: int) -> dict:
    """Forward FLOPs per token at context length `seq` (batch 1), from the lowered graph."""
    dims = bind(graph, 1, seq)

    def size(d) -> int:
        v = dim_size(d, dims)
        return seq if v is None else v
    weights = attention = 0.0
    for _, f, is_attention in matmul_flops(graph, size):
        if is_attention:
            attention += f
        else:
            weights += f
    return {"seq": seq, "weights": _num(weights / seq), "attention": _num(attention / seq),
            "total": _num((weights + attention) / seq),
            "moe_active_only": bool(graph.meta.get("moe"))}


def _num(x: float) -> int | float:
    return int(x) if x == int(x) else x


# ---------------------------------------------------------------- bytes
def byte_stats(graph: Graph, s: dict, batch: int, seq: int) -> dict:
    """Weight bytes per dtype and the KV cache at batch × seq, from `param_stats` counts and,
    for int8/int4, the graph's weights as quantization stores them."""
    from archc.quantize import stored_bytes

    kv = s["kv_cache_bytes_per_token"]
    return {"weight_bytes": {k: math.ceil(s["parameters"] * v) if v >= 2 else
                             stored_bytes(graph, int(8 * v)) for k, v in WEIGHT_DTYPES.items()},
            "kv_cache_bytes": {"batch": batch, "seq": seq,
                               **{k: v * batch * seq for k, v in kv.items()}}}


_VIEWS = ("reshape", "reshape_to", "transpose", "slice", "dropout", "tuple_get")


def activation_peak(graph: Graph, batch: int, seq: int) -> dict:
    """Peak bytes of the values the NumPy interpreter holds during a forward pass of `graph` (run
    it optimised, as the backend does), from its schedule: `archc.backends.numpy_interp`."""
    dims = bind(graph, batch, seq)
    order = graph.nodes()
    end = len(order)
    last = {i.id: k for k, n in enumerate(order) for i in n.inputs}  # value -> last reader
    keep = {n.id for n in graph.outputs.values()}
    owner: dict[int, int | None] = {}  # value -> the op whose buffer it is (None: not counted)
    flat: dict[int, bool] = {}  # value -> C-contiguous (a reshape of it is a view)
    sizes: dict[int, int] = {}
    born: dict[int, int] = {}
    dies: dict[int, int] = {}
    for k, n in enumerate(order):
        src = n.inputs[0] if n.inputs else None
        view = n.kind == "op" and n.op in _VIEWS and \
            (n.op not in ("reshape", "reshape_to") or flat[src.id])
        if n.kind != "op":
            owner[n.id], flat[n.id] = None, True
        elif view:
            owner[n.id] = owner[src.id]
            flat[n.id] = flat[src.id] and (
                n.op not in ("transpose", "slice") or
                (n.op == "transpose" and list(n.attrs["perm"]) == sorted(n.attrs["perm"])) or
                (n.op == "slice" and n.attrs["axis"] % n.type.rank == 0))
        else:
            owner[n.id], flat[n.id] = n.id, True
            shape = [dim_size(d, dims) for d in n.type.shape]
            if None in shape:
                raise ValueError(f"cannot size {n.type} of %{n.id} at batch {batch}, seq {seq}")
            parts = max([u.attrs["index"] + 1 for u in graph.users(n) if u.op == "tuple_get"],
                        default=1)
            sizes[n.id] = math.prod(shape) * ITEMSIZE[n.type.dtype] * parts
            born[n.id] = k
        b = owner[n.id]
        if b is not None:
            gone = end if n.id in keep or n.id not in last else last[n.id]
            dies[b] = max(dies.get(b, k), gone)
    delta = [0] * (end + 1)
    for b, size in sizes.items():
        delta[born[b]] += size
        delta[dies[b] + 1 if dies[b] < end else end] -= size
    live = peak = at = 0
    for k in range(end):
        live += delta[k]
        if live > peak:
            peak, at = live, k
    n = order[at] if order else None
    return {"batch": batch, "seq": seq, "bytes": peak,
            "at": f"%{n.id} {n.op} in `{n.scope}`" if n is not None else ""}


def full_stats(graph: Graph, seq: int = 2048, batch: int = 1, level: int = 1) -> dict:
    """`param_stats` plus FLOPs, bytes and peak activations at `batch` × `seq`; the graph is
    lowered and not yet optimised (it is optimised at `level` for the activation peak)."""
    from archc.api import optimize

    s = param_stats(graph)
    s["flops_per_token"] = flop_stats(graph, seq)
    s |= byte_stats(graph, s, batch, seq)
    s["peak_activation_bytes"] = activation_peak(optimize(graph, level), batch, seq) | \
        {"opt": level}
    return s


def _more_rows(s: dict) -> list[tuple]:
    f, kv, act = s["flops_per_token"], s["kv_cache_bytes"], s["peak_activation_bytes"]
    moe = "  (experts: top-k of their dense cost)" if f["moe_active_only"] else ""
    rows = [(f"forward FLOPs/token at seq {f['seq']:,}", f["total"], moe),
            ("  weight matmuls", f["weights"], ""),
            ("  attention (q·kᵀ, probs·v)", f["attention"], "")]
    rows += [(f"weight bytes {k}", v, "") for k, v in s["weight_bytes"].items()]
    rows += [(f"KV cache bytes, batch {kv['batch']} × seq {kv['seq']:,}", kv["float32"],
              f"  (float32; float16: {kv['float16']:,})"),
             (f"peak activation bytes, batch {act['batch']} × seq {act['seq']:,}", act["bytes"],
              f"  (NumPy backend, -O{act['opt']}; at {act['at']})")]
    return rows
