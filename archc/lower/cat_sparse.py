"""Primitives of the sparse and linear attention catalogue (`stdlib/sparse_attention.arch`).

Why these stay in Python:

- `bigbird_layout` and `orthogonal_features` draw random numbers from a seed written in the
  spec, at compile time, into constants: the pattern is a table and the features a QR
  factorisation, neither of which the language computes. Constants are not parameters, so
  `archc stats` does not count them, and both backends read the same values.
- `cumsum_cache` carries a running sum between calls when decoding, as `cache` carries keys:
  it adds a graph input and output, which a block cannot do.
- `dilated_band_mask` needs `mod` on int64 tensors (its op is in `archc/ops/cat_sparse.py`).
"""

from __future__ import annotations

import numpy as np

from archc.ir.types import TensorType
from archc.limits import check_bytes
from archc.lower.builder import Abort, LayerBuilder, LayerFailed
from archc.lower.layers import layer
from archc.lower.signature import Arg, describe

T = "tensor"


@layer("dilated_band_mask", 4, Arg("qpos", T), Arg("kpos", T), Arg("radius", "int"),
       Arg("dilation", "value", 1), owns=False,
       doc="keep [H, Tq, Tk]: |key - query| <= radius * d_h and a multiple of d_h "
           "(Longformer's dilated window; `dilation` is an int or one per head)")
def dilated_band_mask(b: LayerBuilder, qpos, kpos, radius, dilation):
    steps = dilation if isinstance(dilation, tuple) else (dilation,)
    if not steps or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1
                            for d in steps):
        b.fail("E0200", "`dilation` must be a positive integer or a list of them, one per head",
               f"this is {describe(dilation)}", span=b.at("dilation"))
    if radius < 0:
        b.fail("E0200", f"`radius` = {radius} must be >= 0", "here", span=b.at("radius"))
    return b.op("dilated_band_mask", qpos, kpos, radius=radius, dilation=tuple(steps))


def bigbird_table(length: int, block: int, heads: int, window: int, global_blocks: int,
                  random: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """BigBird's ITC pattern over n = ceil(length / block) blocks. The first and the last
    `global_blocks` blocks are global; every other query block i (the local rows, nq of them)
    reads the key-block slots [globals..., i - w .. i + w, r random] with w = window // 2.
    The random blocks of each (head, row) are the `random` highest of uniform priorities
    drawn from `seed` among the blocks that are neither global nor in the window: a uniform
    draw without replacement. A slot that names no new block (the window past an end, a
    window block that is global, too few candidates for the random draw) is dropped by
    `keep`, and so is every key in the padding past `length`.
    Returns blocks i64[heads, nq, slots] and keep b8[heads, nq, slots * block]."""
    n = -(-length // block)
    g, w = global_blocks, window // 2
    globals_ = [*range(g), *range(n - g, n)]
    rows = range(g, n - g)
    prio = np.random.default_rng(seed).random((heads, n, n))
    slots = 2 * g + 2 * w + 1 + random
    blocks = np.zeros((heads, len(rows), slots), np.int64)
    valid = np.zeros((heads, len(rows), slots), bool)
    for h in range(heads):
        for r, i in enumerate(rows):
            near = list(range(i - w, i + w + 1))
            picks = [j for j in np.argsort(-prio[h, i], kind="stable")
                     if j not in globals_ and j not in near][:random]
            for s, j in enumerate([*globals_, *near, *picks]):
                ok = 0 <= j < n and (s < 2 * g or j not in globals_)
                blocks[h, r, s], valid[h, r, s] = (j, ok) if ok else (0, False)
    inside = np.arange(n * block).reshape(n, block) < length  # [n, block]: not padding
    keep = valid[..., None] & inside[blocks]  # [heads, nq, slots, block]
    return blocks, keep.reshape(heads, len(rows), slots * block)


@layer("bigbird_layout", 7, Arg("length", "value"), Arg("block_size", "int"), Arg("heads", "int"),
       Arg("window", "int", 3), Arg("global_blocks", "int", 1), Arg("random", "int", 3),
       Arg("seed", "int", 0), owns=False,
       doc="BigBird's block pattern as constants: [blocks i64[H, nq, slots], "
           "keep b8[H, nq, slots * block]] (or [none, none] when every block is global), "
           "random blocks drawn from `seed`")
def bigbird_layout(b: LayerBuilder, length, block_size, heads, window, global_blocks, random, seed):
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        _stop(b, "BigBird's block layout is drawn at compile time, so the sequence length "
              f"must be a static positive integer, not {describe(length)}", "length",
              help="declare the input with a fixed length, e.g. `int64[batch, 512]`")
    block = block_size
    given = {"block_size": block, "heads": heads, "window": window, "global_blocks": global_blocks,
             "random": random, "seed": seed}
    for arg, ok, text in (("block_size", block >= 1, "must be positive"),
                          ("heads", heads >= 1, "must be positive"),
                          ("window", window >= 1 and window % 2 == 1,
                           "must be an odd number of blocks (3: the block and one each side)"),
                          ("global_blocks", global_blocks >= 1, "must be at least 1"),
                          ("random", random >= 0, "must be >= 0"),
                          ("seed", 0 <= seed < 2**63, "must be in 0..2^63-1")):
        if not ok:
            _stop(b, f"`{arg}` = {given[arg]} {text}", arg)
    if -(-length // block) <= 2 * global_blocks:
        return (None, None)
    if heads * (-(-length // block)) ** 2 > MAX_LAYOUT:  # the draw's priorities, in Python
        _stop(b, f"BigBird's layout of {heads} heads x {-(-length // block)} blocks "
              f"(length {length}, block_size {block}) is over the compile-time limit of "
              f"{MAX_LAYOUT:,} block pairs", "length", help="use a larger `block_size`")
    blocks, keep = bigbird_table(length, block, heads, window, global_blocks, random, seed)
    return (b.const(blocks, np.int64), b.const(keep, np.bool_))


def _stop(b: LayerBuilder, message: str, arg: str, help: str | None = None):
    """An error at the caller's argument that also stops the enclosing block, as a failed
    `require` does: what follows in the block would only add confusing errors."""
    frame = b.ev.frames[-1] if b.ev is not None and b.ev.frames else None
    span = frame.arg_spans.get(arg, frame.call) if frame is not None else b.at(arg)
    try:
        b.fail("E0200", message, "here", span=span, help=help)
    except LayerFailed:
        raise Abort from None


MAX_LAYOUT = 2**24  # heads * blocks^2: 16 heads of 1024 blocks
MAX_DRAW_FLOPS = 2 * 10**11  # compile-time QR work: about a second; a 4096-wide head fits


def orthogonal_gaussian(m: int, d: int, seed: int) -> np.ndarray:
    """FAVOR+'s projection (Choromanski et al. 2021, sec. 2.4): m rows in blocks of d mutually
    orthogonal directions (QR of a Gaussian matrix, signs fixed by R's diagonal so the draw
    does not depend on the LAPACK build), each row scaled to the norm of an independent
    d-dimensional Gaussian vector, so every row is marginally N(0, I_d)."""
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(-(-m // d)):
        q, r = np.linalg.qr(rng.standard_normal((d, d)))
        parts.append((q * np.sign(np.diag(r))).T)
    rows = np.concatenate(parts)[:m]
    norms = np.linalg.norm(rng.standard_normal((m, d)), axis=1)
    return (rows * norms[:, None]).astype(np.float32)


@layer("orthogonal_features", 3, Arg("m", "int"), Arg("d", "int"), Arg("seed", "int", 0),
       owns=False, doc="f32[m, d] orthogonal Gaussian random features drawn from `seed` "
                       "(Performer's FAVOR+): a constant, not a parameter")
def orthogonal_features(b: LayerBuilder, m, d, seed):
    if m < 1 or d < 1:
        b.fail("E0200", f"orthogonal_features needs m, d >= 1, got {m}, {d}", "here")
    if not 0 <= seed < 2**63:
        b.fail("E0200", f"`seed` = {seed} must be in 0..2^63-1", "here", span=b.at("seed"))
    flops = -(-m // d) * 4 * d**3 // 3  # one QR of a d x d Gaussian per block of d rows
    if flops > MAX_DRAW_FLOPS:
        b.fail("E0200", f"orthogonal_features({m}, {d}) would take {-(-m // d)} QR "
               f"factorisations of {d} x {d} at compile time (~{flops / 1e9:,.0f} GFLOP, over "
               f"the limit of {MAX_DRAW_FLOPS / 1e9:,.0f})", "here",
               help="d is the head size: check the model width and head count")
    check_bytes(3 * 8 * d * d, f"orthogonal_features' {d} x {d} draw (float64, with its QR)")
    return b.const(orthogonal_gaussian(m, d, seed))


@layer("cumsum_cache", 2, Arg("x", T), Arg("name", "value"), Arg("axis", "int", 2), owns=False,
       doc="running sum of x along the token axis; when decoding, the sum so far is a state "
           "(`past_key_values.N.NAME` -> `present.N.NAME`) of constant size")
def cumsum_cache(b: LayerBuilder, x, name, axis):
    ax = axis % x.type.rank if -x.type.rank <= axis < x.type.rank else None
    if ax is None or ax == 0:
        b.fail("E0201", f"`axis` = {axis} must name a token axis of {x.type} (not the batch)",
               "here", span=b.at("axis"))
    rest = x.type.shape[:ax] + x.type.shape[ax + 1:]
    if x.type.dtype != "float32" or not all(isinstance(d, int) for d in rest[1:]):
        b.fail("E0201", f"`cumsum_cache` needs float32 with static dims besides batch and the "
               f"token axis, got {x.type}", "here")
    running = b.op("cumsum", x, axis=ax)
    if not b.cache:  # what `archc.serving.keeps_cache` reads off the plain graph
        b.graph.meta["cached_states"] = b.graph.meta.get("cached_states", 0) + 1
        return running
    counts = b.graph.meta.setdefault("cache_counts", {})
    n = counts.get(str(name), 0)
    counts[str(name)] = n + 1
    past = b.graph.add_input(f"past_key_values.{n}.{name}", TensorType("float32", rest))
    b.graph.set_output(f"present.{n}.{name}",
                       b.op("add", past, b.op("reduce_sum", x, axis=ax, keepdims=False)))
    b.graph.meta["states"][past.name] = f"present.{n}.{name}"
    shape = (0, *x.type.shape[1:ax], 1, *x.type.shape[ax + 1:])  # past, unsqueezed at ax
    return b.op("add", running, b.op("reshape", past, shape=shape))
