"""The inputs `archc verify` runs: derived from the graph so that every feature it has shows.

An exporter that drops a sliding window still validates on a sequence shorter than the
window; one that ignores padding validates on an unpadded batch. So the inputs are chosen from
what the lowered graph says about itself:

- bounds (`bounds`): every length past which a feature changes the numbers. A causal
  `causal_mask {window=w}` cuts keys once the sequence exceeds w; a `band_mask {radius=r}`
  (bidirectional window) once it exceeds 2r + 1; a `dilated_band_mask` once it exceeds twice
  its reach (radius x largest dilation) + 1; a windowed KV cache (`last {n}` on the cache graph)
  once past and new tokens exceed n + 1; a state that keeps its last n entries
  (`slice {start=-n}` to the end, as a Transformer-XL memory) once it would hold more.
  T5's `relative_buckets` turn log-spaced past num_buckets / 4 (bidirectional; / 2 causal)
  and clip at max_distance.
- the prefill split K (incremental decoding): one past the largest window, so the prefill
  itself crosses every window and the steps after it cross it again; 3 when there is none.
- the sequence: longer than every bound and at least K + largest window + 2 (and `MIN_SEQ`),
  so it is longer than every window and than the prefill, cut down to what the position tables
  accept (`archc.inputs.validate` refuses a position past a learned table; the limit is found
  by bisection), with each feature that no longer fits reported as not exercised.
- a batch of 3: row 0 unpadded, row 1 left-padded and row 2 right-padded by a quarter of the
  sequence, in every `...attention_mask` (along its last axis); a `global_attention_mask`
  flags the first real token of each row.
- the rest as `archc.inputs.random_inputs` draws it (ids within their tables, floats N(0, 1)).

Whether every expert of a mixture is hit depends on the weights too, so it is checked on the
reference run (`archc.verify`), which draws new ids until each router has picked every expert.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from archc.diagnostics import ArchcError
from archc.inputs import random_inputs, validate
from archc.ir.graph import Graph

BATCH = 3
MIN_SEQ = 8
PREFILL = 3  # tokens prefilled when no window asks for more
_FAR = 2**62  # a slice `end` at least this large runs to the end


@dataclass
class Plan:
    batch: int
    seq: int
    prefill: int
    inputs: dict[str, np.ndarray]
    features: list[str] = field(default_factory=list)  # what the inputs exercise
    gaps: list[str] = field(default_factory=list)  # what they could not


def bounds(*graphs: Graph | None) -> dict[str, tuple[int, bool]]:
    """Each feature, the sequence length it needs to exceed to show, and whether it is a
    window (which the prefill should cross too)."""
    found: dict[str, tuple[int, bool]] = {}
    for g in graphs:
        for n in g.nodes() if g is not None else ():
            if n.kind != "op":
                continue
            a = n.attrs
            if n.op == "causal_mask" and a.get("window"):
                found[f"sliding window {a['window']}"] = (int(a["window"]), True)
            elif n.op == "band_mask":
                found[f"band of {a['radius']} each side"] = (2 * int(a["radius"]) + 1, True)
            elif n.op == "dilated_band_mask":
                reach = int(a["radius"]) * max(int(d) for d in np.ravel(a["dilation"]))
                found[f"dilated band reaching {reach} each side"] = (2 * reach + 1, True)
            elif n.op == "last" and g.is_output(n):  # a windowed cache's `present`
                found[f"KV cache window {a['n'] + 1}"] = (int(a["n"]) + 1, True)
            elif n.op == "slice" and a["start"] < 0 and a["end"] >= _FAR:
                keep = -int(a["start"])  # a memory that keeps its last entries
                found[f"a memory keeping its last {keep}"] = (keep, True)
            elif n.op == "relative_buckets":  # T5: exact, then log-spaced, then the last bucket
                half = int(a["num_buckets"]) // (2 if a["bidirectional"] else 1)
                found[f"log-spaced relative buckets from {half // 2}"] = (half // 2, False)
                found[f"the last relative bucket at {a['max_distance']}"] = \
                    (int(a["max_distance"]), False)
    return found


def derive(plain: Graph, cached: Graph | None = None, seed: int = 0, seq: int | None = None,
           prefill: int | None = None, at_least: int = 0) -> Plan:
    """The inputs for `plain` (and for `cached`, its KV-cache form); `seq` and `prefill`
    override the derived lengths (a test shows what shorter inputs would miss); `at_least`
    asks for a longer sequence than the bounds need (to hit every expert)."""
    need = bounds(plain, cached)
    window = max((n for n, is_window in need.values() if is_window), default=0)
    k = prefill or (window + 1 if window else PREFILL)
    want = seq or max(MIN_SEQ, k + window + 2, at_least, *(n + 1 for n, _ in need.values()))
    fixed = _static_seq(plain)
    if fixed is not None and seq is None:
        want = fixed
    length = _fit(plain, want, seed)
    if length < k + 2:  # cut short: keep some steps after the prefill
        k = max(1, length // 2)
    plan = Plan(BATCH, length, k, _inputs(plain, length, seed))
    why = f"the position tables stop at {length}" if length < want else "it was set so" if \
        seq else "the input shape fixes it"
    for what, (bound, _) in sorted(need.items(), key=lambda kv: (kv[1][0], kv[0])):
        if length > bound:
            plan.features.append(f"seq {length} > {what}")
        else:
            plan.gaps.append(f"{what} needs seq > {bound}, got {length} ({why})")
    if length < want and not need:
        plan.gaps.append(f"seq cut from {want} to {length}: {why}")
    if cached is not None:
        steps = length - k
        plan.features.append(f"prefill {k}, then {steps} step{'s' * (steps != 1)} through "
                             "the cache")
    plan.features += _padding_notes(plan)
    return plan


def _static_seq(graph: Graph) -> int | None:
    """The sequence length `input_ids` declares, when it is a number (BigBird's layout)."""
    node = graph.inputs.get("input_ids")
    if node is not None and node.type.rank >= 2 and isinstance(node.type.shape[-1], int):
        return node.type.shape[-1]
    return None


def _fit(graph: Graph, want: int, seed: int) -> int:
    """The largest length <= `want` the graph accepts (E0315: an index past a table)."""
    def ok(n: int) -> bool:
        try:
            validate(graph, _inputs(graph, n, seed))
        except ArchcError as e:
            if all(d.code == "E0315" for d in e.diagnostics) and n > 1:
                return False
            raise
        return True

    if ok(want):
        return want
    lo, hi = 1, want  # ok(lo), not ok(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def _inputs(graph: Graph, seq: int, seed: int) -> dict[str, np.ndarray]:
    feeds = random_inputs(graph, BATCH, seq, seed)
    for name, a in feeds.items():
        if _padding(name, a):
            pad = max(1, a.shape[-1] // 4) if a.shape[-1] > 1 else 0
            a[...] = 1
            if pad:
                a[1, ..., :pad] = 0  # left padding
                a[2, ..., -pad:] = 0  # right padding
    mask = feeds.get("attention_mask")
    if "global_attention_mask" in feeds and mask is not None and mask.ndim == 2:
        flags = np.zeros_like(mask)
        first = mask.argmax(axis=1)  # the first real token of each row
        flags[np.arange(len(mask)), first] = 1
        feeds["global_attention_mask"] = flags
    return feeds


def _padding(name: str, a: np.ndarray) -> bool:
    """A mask of real tokens: `attention_mask`, `decoder_attention_mask` (not global flags)."""
    return name.endswith("attention_mask") and not name.startswith("global") and \
        a.dtype == np.int64 and a.ndim >= 2


def _padding_notes(plan: Plan) -> list[str]:
    out = []
    for name, a in plan.inputs.items():
        if _padding(name, a):
            pad = int((a[1] == 0).sum(axis=-1).max())
            if pad:
                out.append(f"`{name}`: row 1 left-padded {pad}, row 2 right-padded {pad}")
    if "global_attention_mask" in plan.inputs:
        out.append("`global_attention_mask`: the first real token of each row")
    return out
