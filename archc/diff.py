"""`archc diff A.arch B.arch`: what changed between two designs.

Both specs are lowered and walked as `archc explain` walks them, every repeat step apart
(`explain(graph, seq, merge=False)`). Layers are matched by their path (`h.3.attn`): a path
in one design only is a layer added or removed; a matched pair of standard-library block
calls is compared whole (block, options, shapes, parameters, FLOPs, KV cache), and a repeat
step or a block of the spec's own is compared part by part (and by its own options and step
count). Changes that differ only in a repeat index print once: `h.{12..13} ×2`.

Figures: parameters as `archc explain` counts them (those a call creates: a tied head has
none), forward FLOPs per token at `--seq` (batch 1; `archc.stats.flop_stats`), and the KV
cache in float32 bytes per token (the values each `cache` call keeps, × 4). Totals come from
`archc.stats`, per top-level block from the explain walk; a figure a design holds outside
any block call is shown as `(outside blocks)`. The diff is informational: it exits 0 when it
ran, identical designs included.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field

from archc import api
from archc.diagnostics import ArchcError, Diagnostic
from archc.explain import Line, explain
from archc.ir.graph import Graph
from archc.stats import flop_stats, param_stats

FIGURES = ("params", "flops_per_token", "kv_cache_bytes_per_token")


@dataclass
class Change:
    """A layer added, removed or changed; figures are per layer (A, B), `count` layers."""

    kind: str  # added | removed | changed
    paths: list[str]
    block: tuple[str | None, str | None]
    options: dict[str, tuple[str, str]] = field(default_factory=dict)
    shapes: tuple[str, str] | None = None
    figures: dict[str, tuple[float, float]] = field(default_factory=dict)

    def key(self) -> tuple:
        """What the steps of one repeat that changed alike share: all but the step index."""
        return (self.kind, _template(self.paths[0]), self.block, tuple(self.options.items()),
                self.shapes, tuple(self.figures.items()))


# ---------------------------------------------------------------- matching
def _figures(line: Line | None) -> tuple[float, float, float]:
    if line is None:
        return (0, 0, 0)
    return (line.total_params, line.flops * line.count, 4 * line.kv * line.count)


def _shapes(line: Line) -> str:
    return f"{', '.join(line.inputs) or '-'} -> {line.output or '-'}"


def _keyed(lines: list[Line]) -> dict[str, Line]:
    """Lines by path; a path used twice among siblings (calls `as _`) gets `#k`."""
    out: dict[str, Line] = {}
    for line in lines:
        p, k = line.scope, 1
        while (p if k == 1 else f"{p}#{k}") in out:
            k += 1
        out[p if k == 1 else f"{p}#{k}"] = line
    return out


def _order(a: list[str], b: list[str]) -> list[str]:
    """A's paths in order, with each of B's own inserted after the path B has before it."""
    out = list(a)
    seen = set(a)
    for i, p in enumerate(b):
        if p not in seen:
            out.insert(out.index(b[i - 1]) + 1 if i else 0, p)
            seen.add(p)
    return out


def _one_side(kind: str, path: str, line: Line) -> Change:
    figs = _figures(line)
    zero = (0, 0, 0)
    a, b = (figs, zero) if kind == "removed" else (zero, figs)
    block = (line.block, None) if kind == "removed" else (None, line.block)
    return Change(kind, [path], block, figures=dict(zip(FIGURES, zip(a, b, strict=True),
                                                        strict=True)))


def _changed(path: str, x: Line, y: Line) -> Change | None:
    # Another block's options are its own: compare only those both have.
    names = set(x.args) | set(y.args) if x.block == y.block else set(x.args) & set(y.args)
    options = {k: (x.args.get(k, "-"), y.args.get(k, "-"))
               for k in sorted(names) if x.args.get(k) != y.args.get(k)}
    if x.count != y.count:
        options["steps"] = (str(x.count), str(y.count))
    shapes = (_shapes(x), _shapes(y)) if _shapes(x) != _shapes(y) else None
    figures = dict(zip(FIGURES, zip(_figures(x), _figures(y), strict=True), strict=True))
    if x.block == y.block and not options and shapes is None and \
            all(a == b for a, b in figures.values()):
        return None
    return Change("changed", [path], (x.block, y.block), options, shapes, figures)


def _walk(a: list[Line], b: list[Line], out: list[Change]) -> None:
    ka, kb = _keyed(a), _keyed(b)
    for path in _order(list(ka), list(kb)):
        x, y = ka.get(path), kb.get(path)
        if x is None or y is None:
            out.append(_one_side("added" if x is None else "removed", path, x or y))
        elif x.block != y.block or (x.library and y.library) or not (x.children or
                                                                      y.children):
            change = _changed(path, x, y)  # a library layer: compared whole
            if change is not None:
                out.append(change)
        else:  # a repeat step or the spec's own block: its options, then its parts
            if x.args != y.args or x.count != y.count:
                out.append(_changed(path, x, y) or Change("changed", [path], (x.block, y.block)))
            _walk(x.children, y.children, out)


# ---------------------------------------------------------------- compact paths
def _template(path: str) -> str:
    return re.sub(r"(?<=\.)\d+(?=\.|$| )", "N", path)


def _numbers(values: list[int]) -> str:
    if values == list(range(values[0], values[0] + len(values))):
        return f"{{{values[0]}..{values[-1]}}}"
    return "{" + ",".join(map(str, values)) + "}"


def compact(paths: list[str]) -> list[str]:
    """`h.12.attn`, `h.13.attn` -> [`h.{12..13}.attn`]: one path per run of a varying index
    (two indices varying split on the first)."""
    if len(paths) == 1:
        return paths
    parts = [p.split(".") for p in paths]
    vary = [i for i in range(len(parts[0])) if len({q[i] for q in parts}) > 1]
    if len(vary) == 1:
        i = vary[0]
        head, tail = ".".join(parts[0][:i]), ".".join(parts[0][i + 1:])
        mid = _numbers(sorted(int(q[i]) for q in parts))
        return [".".join(x for x in (head, mid, tail) if x)]
    firsts = list(dict.fromkeys(q[vary[0]] for q in parts))
    return [c for f in firsts for c in compact([p for p, q in zip(paths, parts, strict=True)
                                                 if q[vary[0]] == f])]


def _group(changes: list[Change]) -> list[Change]:
    groups: dict[tuple, Change] = {}
    out: list[Change] = []
    for c in changes:
        g = groups.get(c.key())
        if g is None:
            groups[c.key()] = c
            out.append(c)
        else:
            g.paths.extend(c.paths)
    return out


# ---------------------------------------------------------------- figures
def _totals(graph: Graph, seq: int) -> dict[str, float]:
    p, f = param_stats(graph), flop_stats(graph, seq)
    kv = 4 * graph.meta.get("kv_per_token", 0)
    return {"parameters": p["parameters"], "active_parameters_per_token": p["active_per_token"],
            "flops_per_token": f["total"], "kv_cache_bytes_per_token": kv,
            "kv_cache_bytes": kv * seq}


def _blocks(lines: list[Line], totals: dict) -> dict[str, tuple[float, float, float]]:
    """Per top-level block (a repeat as a whole): params, FLOPs/token, KV bytes/token."""
    out: dict[str, list[float]] = {}
    for line in lines:
        name = line.scope
        if line.block == "repeat":  # steps `h.3` (or `layer shared`) -> `repeat h`
            base = name.removesuffix(" shared")
            name = f"repeat {base if line.shared else base.rsplit('.', 1)[0]}"
        row = out.setdefault(name, [0, 0, 0])
        for i, v in enumerate(_figures(line)):
            row[i] += v
    whole = (totals["parameters"], totals["flops_per_token"], totals["kv_cache_bytes_per_token"])
    rest = [w - sum(r[i] for r in out.values()) for i, w in enumerate(whole)]
    if any(abs(r) > 1e-6 * max(1, abs(w)) for r, w in zip(rest, whole, strict=True)):
        out["(outside blocks)"] = rest
    return {k: tuple(_num(v) for v in r) for k, r in out.items()}


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def _pair(a: float, b: float) -> dict:
    return {"a": _num(a), "b": _num(b), "delta": _num(b - a)}


def diff(a: Graph, b: Graph, seq: int = 2048, files: tuple[str, str] = ("", "")) -> dict:
    """The differences of design `b` from design `a` at context length `seq`, as the JSON
    `archc diff --json` prints (docs/cli.md describes every field)."""
    if seq < 1:
        raise ArchcError([Diagnostic("E0400", "`--seq` must be at least 1")])
    la, lb = explain(a, seq, merge=False), explain(b, seq, merge=False)
    changes: list[Change] = []
    _walk(la, lb, changes)
    ta, tb = _totals(a, seq), _totals(b, seq)
    ba, bb = _blocks(la, ta), _blocks(lb, tb)
    zero = (0, 0, 0)
    layers = [{"change": c.kind, "paths": compact(c.paths), "count": len(c.paths),
               "block": {"a": c.block[0], "b": c.block[1]},
               "options": {k: {"a": x, "b": y} for k, x, y in
                           ((k, *v) for k, v in c.options.items())},
               "shapes": None if c.shapes is None else {"a": c.shapes[0], "b": c.shapes[1]},
               **{k: _pair(*v) for k, v in c.figures.items()}} for c in _group(changes)]
    blocks = [{"name": name, **{k: _pair(x, y) for k, x, y in
                                zip(FIGURES, ba.get(name, zero), bb.get(name, zero),
                                    strict=True)}}
              for name in _order(list(ba), list(bb))]
    totals = {k: _pair(ta[k], tb[k]) for k in ta}
    return {"a": {"file": files[0], "model": a.name}, "b": {"file": files[1], "model": b.name},
            "seq": seq, "identical": not layers and all(t["delta"] == 0 for t in totals.values()),
            "layers": layers, "totals": totals, "blocks": blocks}


# ---------------------------------------------------------------- text
def _int(x: float, sign: bool = False) -> str:
    return f"{round(x):+,}" if sign and round(x) else f"{round(x):,}"


def _mflop(x: float, sign: bool = False) -> str:
    return f"{x / 1e6:+,.3f}" if sign and round(x / 1e6, 3) else f"{x / 1e6:,.3f}"


_FORMAT = {"params": ("params", _int), "flops_per_token": ("MFLOP/token", _mflop),
           "kv_cache_bytes_per_token": ("KV bytes/token", _int)}


def _layer_text(c: dict) -> list[str]:
    mark = {"added": "+", "removed": "-", "changed": "~"}[c["change"]]
    block = c["block"]["a"] or c["block"]["b"]
    if c["block"]["a"] and c["block"]["b"] and c["block"]["a"] != c["block"]["b"]:
        block = f"{c['block']['a']} -> {c['block']['b']}"
    times = f" ×{c['count']}" if c["count"] > 1 else ""
    each = " each" if c["count"] > 1 else ""
    out = []
    for path in c["paths"]:
        head = f"repeat {path}" if block == "repeat" else f"{block} as {path}"
        out.append(f"  {mark} {head}{times}")
    if c["change"] != "changed":
        side = "a" if c["change"] == "removed" else "b"
        figs = [f"{fmt(c[k][side])} {name}" for k, (name, fmt) in _FORMAT.items() if c[k][side]]
        return [*out[:-1], f"{out[-1]}: {', '.join(figs) or 'no parameters'}{each}"]
    rows = [(k, f"{v['a']} -> {v['b']}") for k, v in c["options"].items()]
    if c["shapes"]:  # the shapes hold `->` themselves: one line each
        rows += [("shapes a", c["shapes"]["a"]), ("shapes b", c["shapes"]["b"])]
    rows += [(name, f"{fmt(c[k]['a'])} -> {fmt(c[k]['b'])} ({fmt(c[k]['delta'], True)}{each})")
             for k, (name, fmt) in _FORMAT.items() if c[k]["delta"]]
    width = max((len(r[0]) for r in rows), default=0)
    return out + [f"      {k:<{width}}  {v}" for k, v in rows]


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return ["  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
            for r in [head, *rows]]


def render(d: dict) -> str:
    """The text `archc diff` prints."""
    a, b = d["a"], d["b"]
    out = [f"a: {a['model']} ({a['file']})", f"b: {b['model']} ({b['file']})"]
    if d["identical"]:
        return "\n".join([*out, "no differences"]) + "\n"
    out += ["", f"layers (+ added, - removed, ~ changed; figures per layer, FLOPs at seq "
            f"{d['seq']:,})"]
    for c in d["layers"]:
        out += _layer_text(c)
    if not d["layers"]:
        out.append("  (no layer differs)")
    names = {"parameters": "parameters", "active_parameters_per_token": "active per token",
             "flops_per_token": f"FLOPs/token at seq {d['seq']:,}",
             "kv_cache_bytes_per_token": "KV cache bytes/token",
             "kv_cache_bytes": f"KV cache bytes at seq {d['seq']:,}"}
    rows = []
    for k, t in d["totals"].items():
        pct = f" ({100 * t['delta'] / t['a']:+.1f}%)" if t["a"] and t["delta"] else ""
        rows.append((names[k], _int(t["a"]), _int(t["b"]), _int(t["delta"], True) + pct))
    out += ["", "totals (KV cache: float32, batch 1)",
            *_table(("", "a", "b", "delta"), rows)]
    rows = [(r["name"], *(f(r[k][s], s == "delta") for k, (_, f) in _FORMAT.items()
                          for s in ("a", "b", "delta"))) for r in d["blocks"]]
    head = ("block", *(f"{n} {s}" if s == "a" else s
                       for n in ("params", "MFLOP/token", "KV bytes/token") for s in "abΔ"))
    out += ["", "per top-level block", *_table(head, rows)]
    return "\n".join(out) + "\n"


def cmd_diff(args) -> int:
    from archc.lower import lower

    graphs = [lower(api.parse_file(f), m) for f, m in ((args.spec, args.model),
                                                        (args.other, args.other_model))]
    d = diff(*graphs, seq=args.seq, files=(args.spec, args.other))
    sys.stdout.write(json.dumps(d, indent=2, sort_keys=True) + "\n" if args.json else render(d))
    return 0


__all__ = ["Change", "cmd_diff", "compact", "diff", "render"]
