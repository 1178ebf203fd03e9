"""Weight-only quantization: a pass over the IR that changes how weights are stored.

`quantize(graph, weights, dtype, block, symmetric)` returns the graph and the weights as they go
into the ONNX file (`archc compile --weights-dtype`). It runs after the pipeline (it rewrites
`matmul` and `gather` nodes, which the fusions leave alone) and mutates `graph` in place.

- `int8` / `int4`: every `matmul` whose right operand is a 2-D parameter — `x @ W` with W stored
  [K, N] (archc's linear layout), or `x @ transpose(T)` with a [N, K] table (a tied LM head) —
  becomes `matmul_nbits` (archc/ops/quant.py) over three new parameters `NAME.qweight`,
  `NAME.scales` and, unless `symmetric`, `NAME.zero_points` (`NAME.t.*` for the transposed
  case), with MatMulNBits' `accuracy_level` from ACCURACY_LEVEL. Blocks of `block` weights
  along K share a scale:
    symmetric:   s = m / -2^(bits-1), m the block's element of largest magnitude, zp = 2^(bits-1)
                 (m itself is exact; one more level than max|w| / (2^(bits-1) - 1))
    zero points: s = (max(w, 0) - min(w, 0)) / (2^bits - 1), zp = round(-min(w, 0) / s)
    q = clip(round(w / s) + zp, 0, 2^bits - 1),  w ~ (q - zp) * s
  `gather(T, ids)` of a 2-D table (token and position embeddings) becomes `gather_nbits`
  (GatherBlockQuantized) over `NAME.rows.*`, the same kind of codes laid out by rows, always
  8-bit (EMBEDDING_BITS): decode reads one row per token, so this saves file size and memory,
  not time (`embeddings=False` keeps the tables float32). A tied table gets both copies. A
  parameter nothing reads any more is dropped. Other weights (norms, biases) stay float32.
  Expert banks, the 3-D [E, K, N] weights of a mixture of experts (most of its bytes), get
  the same codes, each expert's MatMulNBits tensors stacked on a leading E (`NAME.qweight`
  [E, N, nb, block*bits/8], `.scales` [E, N*nb], `.zero_points` [E, ...]): the sparse
  `moe_experts` op (-O2's `experts` fusion) becomes `moe_experts_nbits` (archc/ops/moe.py), and
  the dense form's `x @ W` with x [..., E or 1, M, K] (-O1, the CLI's default) becomes
  `matmul_nbits_bank` (archc/ops/quant.py); a one-expert bank (a shared expert) is x @ W[0], a
  plain `matmul_nbits`. In ONNX each expert is its own MatMulNBits. A bank read any other way
  stays float32: `graph.meta["quantize"]["kept"]` names it and its readers, and an
  `ArchcWarning` says so (the CLI prints it).
- `float16`: every float32 parameter is stored as float16 with a `cast` to float32 after it.
  onnxruntime folds the cast when it loads the model, so this halves the file, not decode time.
"""

from __future__ import annotations

import warnings

import numpy as np

from archc.diagnostics import ArchcError, Diagnostic
from archc.ir.graph import Graph, Node
from archc.ir.types import TensorType
from archc.ops import moe  # noqa: F401  (registers moe_experts_nbits)
from archc.ops.quant import n_blocks, pack
from archc.passes.infer_shapes import infer_node
from archc.weights import ArchcWarning

DTYPES = ("float16", "int8", "int4")
BLOCKS = (32, 64, 128)
# MatMulNBits `accuracy_level` (archc/ops/quant.py): 4, int8 activations, as onnxruntime-genai's
# CPU int4 models use. Measured on onnxruntime 1.32's CPU EP (benchmarks/quantized_decode.py):
# int8 weights at level 0 decode ~5x slower than float32; int4 at level 4 is ~1.3x faster than
# at level 0, for the same quality (max |dlogit| 0.60 vs 0.59, top-1 0.53 vs 0.52)
ACCURACY_LEVEL = 4
# Embedding tables are stored int8 at both int8 and int4: decode reads one row a token, so their
# bits buy file size and memory, not time, and at 4 bits they cost quality (benchmarks/
# quantized_decode.py: top-1 agreement 0.35 against 0.51 with the tables float32)
EMBEDDING_BITS = 8
PARTS = ("qweight", "scales", "zero_points")  # MatMulNBits' weight inputs, in order


def quantize(graph: Graph, weights: dict[str, np.ndarray], dtype: str, block: int = 32,
             symmetric: bool = False, accuracy_level: int | None = None,
             embeddings: bool = True) -> tuple[Graph, dict[str, np.ndarray]]:
    """`accuracy_level` overrides ACCURACY_LEVEL (0 or 4) for int8/int4; `embeddings=False`
    keeps gathered tables float32."""
    if dtype not in DTYPES:
        raise ArchcError([Diagnostic("E0400", f"unknown weights dtype `{dtype}`",
                                     help=f"use one of {', '.join(DTYPES)}")])
    if block not in BLOCKS:
        raise ArchcError([Diagnostic("E0400", f"quantization block size {block} is not "
                                     "supported", help="use 32, 64 or 128")])
    if accuracy_level not in (None, 0, 4):
        raise ArchcError([Diagnostic("E0400", f"MatMulNBits accuracy level {accuracy_level} is "
                                     "not supported", help="use 0 (float32 activations) or 4 "
                                     "(int8 activations)")])
    weights = {k: weights[k] for k in graph.params}
    if dtype == "float16":
        _store_float16(graph, weights)
        graph.meta["quantize"] = {"kept": {}}  # float16 stores every weight, banks included
    else:
        bits = int(dtype[3:])
        level = ACCURACY_LEVEL if accuracy_level is None else accuracy_level
        _quantize_weights(graph, weights, bits, block, symmetric, level, embeddings)
    return graph, weights


def quantize_weight(w: np.ndarray, bits: int, block: int, symmetric: bool):
    """W [N, K] -> (qweight uint8 [N, nb, block*bits/8], scales float32 [N*nb],
    zero_points uint8 packed [N * ceil(nb*bits/8)] or None): MatMulNBits' layout."""
    w = np.asarray(w, np.float32)
    n, k = w.shape
    nb = n_blocks(k, block)
    blocks = np.zeros((n, nb * block), np.float32)
    blocks[:, :k] = w  # zero padding: inside every block's [min, max], so it costs nothing
    blocks = blocks.reshape(n, nb, block)
    top = 2 ** bits - 1
    if symmetric:
        m = np.take_along_axis(blocks, np.abs(blocks).argmax(-1)[..., None], -1)[..., 0]
        scale = m / np.float32(-(2 ** (bits - 1)))
        zp = np.full((n, nb), 2 ** (bits - 1), np.float32)
    else:
        lo, hi = np.minimum(blocks.min(-1), 0), np.maximum(blocks.max(-1), 0)
        scale = (hi - lo) / np.float32(top)
        zp = np.clip(np.rint(-lo / np.where(scale == 0, 1, scale)), 0, top)
    scale = np.where(scale == 0, np.float32(1), scale).astype(np.float32)  # an all-zero block
    q = np.clip(np.rint(blocks / scale[..., None]) + zp[..., None], 0, top).astype(np.uint8)
    qweight = pack(q, bits)
    if symmetric:
        return qweight, scale.reshape(-1), None
    per = 8 // bits  # zero points of one row, padded to whole bytes
    zrow = np.zeros((n, n_blocks(nb, per) * per), np.uint8)
    zrow[:, :nb] = zp
    return qweight, scale.reshape(-1), pack(zrow, bits).reshape(-1)


def _match(node: Node, embeddings: bool) -> tuple[Node, str] | None:
    """(param, layout) when `node` reads a 2-D float32 parameter that can be stored quantized:
    `x @ W` (layout "kn": W [K, N]), `x @ transpose(T)` ("nk": T [N, K]) or, with
    `embeddings`, `gather(T, ids)` ("rows": T [rows, C]); and an expert bank W [E, K, N] in
    the dense form, x [..., E or 1, M, K] @ W ("bank"; "one" when E = 1: x @ W[0])."""
    if node.kind != "op" or node.inputs[0].type.dtype != "float32":
        return None
    if node.op == "matmul":
        v = node.inputs[1]
        nk = v.kind == "op" and v.op == "transpose" and tuple(v.attrs["perm"]) == (1, 0)
        p, layout = (v.inputs[0], "nk") if nk else (v, "kn")
    elif node.op == "gather" and embeddings and node.attrs.get("axis", 0) == 0:
        p, layout = node.inputs[0], "rows"
    else:
        return None
    if p.kind != "param" or p.type.dtype != "float32":
        return None
    x = node.inputs[0].type
    if layout == "kn" and p.type.rank == 3 and x.rank >= 3:
        if p.type.shape[0] == 1:
            return p, "one"  # the leading 1 broadcasts away: x @ W[0]
        if x.shape[-3] in (1, p.type.shape[0]):
            return p, "bank"
    return (p, layout) if p.type.rank == 2 else None


def stored_bytes(graph: Graph, bits: int, block: int = 32, symmetric: bool = False,
                 embeddings: bool = True) -> int:
    """The bytes `quantize(graph, W, f"int{bits}", block, symmetric)` stores for the weights,
    from the shapes alone (`archc stats`): the codes, scales and zero points of each weight it
    quantizes (per layout, as `_add_quantized` lays them out), and 4 bytes an element of every
    float32 parameter it keeps (norms, biases; a weight something else also reads)."""
    layouts: dict[Node, set[str]] = {}
    for n in graph.nodes():
        if (m := _match(n, embeddings)) is not None:
            layouts.setdefault(m[0], set()).add(m[1])
    total = 0
    for p in graph.params.values():
        read = set(graph.users(p))
        quantized = {u for u in read if (m := _match(u, embeddings)) and m[0] is p} | {
            u for u in read if u.kind == "op" and u.op == "transpose" and graph.users(u) and
            all((m := _match(w, embeddings)) and m[0] is p for w in graph.users(u))}
        if read - quantized or not read:
            total += 4 * int(np.prod(p.type.shape))
        for layout in layouts.get(p, ()):
            total += _layout_bytes(p.type.shape, layout, bits, block, symmetric)
    return total


def _layout_bytes(shape, layout: str, bits: int, block: int, symmetric: bool) -> int:
    if layout == "rows":  # [rows, C] at EMBEDDING_BITS, one zero point byte a block
        rows, c = shape
        nb = n_blocks(c, block)
        return rows * (c * EMBEDDING_BITS // 8 + 4 * nb + (0 if symmetric else nb))
    experts = shape[0] if layout == "bank" else 1
    n, k = shape[-2:] if layout == "nk" else shape[:-3:-1]  # [N, K] or [.., K, N]
    nb = n_blocks(k, block)
    zero_points = 0 if symmetric else n * n_blocks(nb, 8 // bits)
    return experts * (n * nb * block * bits // 8 + 4 * n * nb + zero_points)


def _quantize_weights(graph: Graph, weights, bits: int, block: int, symmetric: bool,
                      level: int, embeddings: bool) -> None:
    done: dict[tuple[str, str], tuple[Node, ...]] = {}
    for node in graph.nodes():
        if node.kind == "op" and node.op == "moe_experts":
            _quantize_experts(graph, weights, node, done, bits, block, symmetric, level)
            continue
        if _packed(node):
            _quantize_packed(graph, weights, node, done, bits, block, symmetric, level)
            continue
        found = _match(node, embeddings)
        if found is None:
            continue
        p, layout = found
        nbits = EMBEDDING_BITS if layout == "rows" else bits
        if (p.name, layout) not in done:
            done[p.name, layout] = _add_quantized(graph, weights, p, layout, nbits, block,
                                                  symmetric)
        params = done[p.name, layout]
        if layout == "rows":  # gather_nbits(data, ids, scales, zero_points)
            inputs, attrs = (params[0], node.inputs[1], *params[1:]), {}
        else:
            inputs = (node.inputs[0], *params)
            n, k = p.type.shape if layout == "nk" else p.type.shape[:-3:-1]
            attrs = {"K": k, "N": n, "accuracy_level": level}
        op = "matmul_nbits_bank" if layout == "bank" else f"{node.op}_nbits"
        new = graph.add_op(op, inputs, {**attrs, "bits": nbits, "block_size": block},
                           scope=node.scope, span=node.span)
        new.type = infer_node(new)
        graph.replace_all_uses_with(node, new)
        graph.erase_node(node)
        operand = node.inputs[1]
        if layout == "nk" and not graph.users(operand):
            graph.erase_node(operand)
    for name in sorted({name for name, _ in done}):
        p = graph.params[name]
        if not graph.users(p) and not graph.is_output(p):
            graph.erase_node(p)
            del weights[name]
            graph.param_uses.pop(name, None)
    _report_kept(graph)


def _packed(node: Node) -> bool:
    """x @ concat(W_1, .., W_n, axis=-1) with 2-D float32 parameters (fusions/packing.py)."""
    if node.kind != "op" or node.op != "matmul" or node.inputs[0].type.dtype != "float32":
        return False
    v = node.inputs[1]
    return v.kind == "op" and v.op == "concat" and v.attrs["axis"] in (-1, 1) and all(
        p.kind == "param" and p.type.rank == 2 and p.type.dtype == "float32" for p in v.inputs)


def _quantize_packed(graph: Graph, weights, node: Node, done, bits, block, symmetric,
                     level) -> None:
    """Each W_i quantized on its own; MatMulNBits' codes, scales and zero points are laid
    out by rows of N, so the packed ones are their concats along N (folded at load)."""
    parts = []
    for p in node.inputs[1].inputs:
        if (p.name, "kn") not in done:
            done[p.name, "kn"] = _add_quantized(graph, weights, p, "kn", bits, block, symmetric)
        parts.append(done[p.name, "kn"])
    packed = []
    for pieces in zip(*parts):
        cat = graph.add_op("concat", pieces, {"axis": 0}, scope=node.scope, span=node.span)
        cat.type = infer_node(cat)
        packed.append(cat)
    k, n = node.inputs[1].type.shape
    new = graph.add_op("matmul_nbits", (node.inputs[0], *packed),
                       {"K": k, "N": n, "accuracy_level": level, "bits": bits,
                        "block_size": block}, scope=node.scope, span=node.span)
    new.type = infer_node(new)
    graph.replace_all_uses_with(node, new)
    graph.erase_node(node)
    if not graph.users(cat := node.inputs[1]):
        graph.erase_node(cat)


def _add_quantized(graph: Graph, weights, p: Node, layout: str, bits: int, block: int,
                   symmetric: bool) -> tuple[Node, ...]:
    """New params holding `p` quantized: NAME.{qweight,scales,zero_points} for "kn" and "one"
    (W[0]) and for an expert bank ("bank": [E, K, N], each expert as "kn", stacked), NAME.t.*
    for "nk", NAME.rows.* for "rows" (GatherBlockQuantized's 2-D shapes)."""
    if layout == "bank":
        per = [quantize_weight(w.T, bits, block, symmetric) for w in weights[p.name]]
        arrays = {part: None if per[0][i] is None else np.stack([e[i] for e in per])
                  for i, part in enumerate(PARTS)}
    else:
        w = weights[p.name]
        w = w[0].T if layout == "one" else w.T if layout == "kn" else w  # [N, K]
        n, k = w.shape
        arrays = dict(zip(PARTS, quantize_weight(w, bits, block, symmetric)))
    if layout == "rows":
        arrays = {part: None if a is None else np.ascontiguousarray(
            a.reshape(n, -1)[:, :k * bits // 8] if part == "qweight" else a.reshape(n, -1))
            for part, a in arrays.items()}
    stem = {"nk": f"{p.name}.t", "rows": f"{p.name}.rows"}.get(layout, p.name)
    nodes = []
    for part, a in arrays.items():
        if a is None:
            continue
        name = f"{stem}.{part}"
        if name in graph.params:
            raise ArchcError([Diagnostic("E0400", f"cannot quantize `{p.name}`: a parameter "
                                         f"`{name}` already exists")])
        dtype = "float32" if part == "scales" else "uint8"
        nodes.append(graph.add_param(name, TensorType(dtype, a.shape), **p.attrs))
        graph.param_uses[name] = graph.param_uses.get(p.name, 1)
        weights[name] = a
    return tuple(nodes)


def _quantize_experts(graph: Graph, weights, node: Node, done, bits, block, symmetric,
                      level) -> None:
    """moe_experts(x, gates, W1, [W3], W2, biases) -> moe_experts_nbits(x, gates, W1's parts,
    [W3's], W2's, biases): each bank a float32 parameter [E, K, N] (they are, as the `experts`
    fusion makes them); the biases stay float32."""
    n = 3 if node.attrs["gated"] else 2
    banks = node.inputs[2:2 + n]
    if not all(p.kind == "param" and p.type.dtype == "float32" for p in banks):
        return  # (computed weights): _report_kept names them
    parts = []
    for p in banks:
        if (p.name, "bank") not in done:
            done[p.name, "bank"] = _add_quantized(graph, weights, p, "bank", bits, block,
                                                  symmetric)
        parts += done[p.name, "bank"]
    new = graph.add_op("moe_experts_nbits", (*node.inputs[:2], *parts, *node.inputs[2 + n:]),
                       {**node.attrs, "bits": bits, "block_size": block,
                        "accuracy_level": level}, scope=node.scope, span=node.span)
    new.type = infer_node(new)
    graph.replace_all_uses_with(node, new)
    graph.erase_node(node)


def _report_kept(graph: Graph) -> None:
    """Expert banks (the 3-D parameters of `graph.meta["moe"]`) still read in float32:
    `graph.meta["quantize"]["kept"]` maps each to its readers, and one warning names them."""
    banks = {p for bank in graph.meta.get("moe", ()) for p in bank["params"]}
    kept = {}
    for name in sorted(banks & set(graph.params)):
        p = graph.params[name]
        ops = sorted({f"`{u.op}`" for u in graph.users(p)})
        if p.type.rank == 3 and p.type.dtype == "float32" and ops:
            kept[name] = f"read by {', '.join(ops)}"
    graph.meta["quantize"] = {"kept": kept}
    if kept:
        first = next(iter(kept))
        warnings.warn(ArchcWarning(Diagnostic(
            "E0400", f"{len(kept)} expert weight bank(s) stay float32, first `{first}` "
            f"({kept[first]})", severity="warning",
            help="quantization stores a bank [E, K, N] that `moe_experts` reads or that a "
                 "`matmul` reads as x [..., E or 1, M, K] @ W")), stacklevel=3)


def _store_float16(graph: Graph, weights) -> None:
    """W -> cast(W as float16, float32): the param node keeps its name and users read the cast.
    A weight beyond float16's range (|w| > 65504) is an error, not a silent infinity."""
    big = [n for n in sorted(graph.params) if graph.params[n].type.dtype == "float32" and
           np.abs(weights[n]).max(initial=0) > np.finfo(np.float16).max]
    if big:
        raise ArchcError([Diagnostic("E0400", f"{len(big)} weight(s) exceed float16's range, "
                                     f"first `{big[0]}`", help="use `--weights-dtype int8` or "
                                     "float32")])
    for name in sorted(graph.params):
        p = graph.params[name]
        if p.type.dtype != "float32":
            continue
        users = graph.users(p)
        weights[name] = weights[name].astype(np.float16)
        p.type = p.type.with_dtype("float16")
        cast = graph.add_op("cast", (p,), {"to": "float32"}, scope=p.scope)
        cast.type = infer_node(cast)
        for user in users:
            graph.set_inputs(user, tuple(cast if i is p else i for i in user.inputs))
        for out, node in graph.outputs.items():
            if node is p:
                graph.outputs[out] = cast
