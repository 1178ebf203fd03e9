"""The fusion pass: archc's transformer rules, applied at -O2 after O1's cleanup.

Rule sets, in the order they get a try at each node:
- `cleanup`: `dropout` (the identity at inference, kept to O1 so dumps show it) -> its input
- `attention`  (fusions/attention.py): the scaled-dot-product core -> `sdpa` (`sdpa_past`
  over a KV cache)
- `rotary`     (fusions/rotary.py): `rope` and its attention factor -> `rotary`
- `norms`      (fusions/norms.py): RMSNorm / LayerNorm, spelled out or as one op -> fused norms
- `skip_norms` (fusions/norms.py): a fused norm of a residual sum -> a skip norm
- `activations` (fusions/activations.py): GELU (with a projection bias) -> `fused_gelu`
- `experts`    (fusions/experts.py): a dense mixture of experts (every expert on every token,
  weighted by gates that are zero off-route) -> `moe_experts`, which runs each expert only
  on the tokens routed to it
- `packing`    (fusions/packing.py): x @ Wq, x @ Wk, x @ Wv (gate/up) -> slices of x @ [Wq|Wk|Wv]

`fuse(graph)` records what fired and, for rules that did not, the first reason why, in
`graph.meta["fusions"]` (a `FusionReport`); `explain(graph)` renders it for a CLI flag, and
ARCHC_DEBUG=1 prints the counts to stderr. Precondition: types are inferred.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass, field

from archc.ir.graph import Graph
from archc.passes.fusions.activations import ACTIVATIONS
from archc.passes.fusions.attention import ATTENTION
from archc.passes.fusions.experts import EXPERTS
from archc.passes.fusions.norms import NORMS, SKIPS
from archc.passes.fusions.packing import PACKING
from archc.passes.fusions.rotary import ROTARY
from archc.passes.rewrite import Rule, RuleSet, apply_rules


class DropDropout(Rule):
    """dropout(x) -> x: archc runs inference only, where dropout is the identity."""

    name = "dropout"

    def pattern(self, op, x):
        return op.dropout(x)

    def rewrite(self, op, m):
        return m["x"]


CLEANUP = RuleSet("cleanup", (DropDropout(),))
RULESETS: tuple[RuleSet, ...] = (CLEANUP, ATTENTION, ROTARY, NORMS, SKIPS, ACTIVATIONS, EXPERTS,
                                  PACKING)


@dataclass
class FusionReport:
    fired: Counter = field(default_factory=Counter)
    why_not: dict[str, str] = field(default_factory=dict)  # rule -> first failing reason


def fuse(graph: Graph):
    from archc.passes import PassResult

    why_not: dict[str, str] = {}
    fired = apply_rules(graph, RULESETS, why_not=why_not)
    report = graph.meta.setdefault("fusions", FusionReport())
    report.fired.update(fired)
    report.why_not = {k: v for k, v in {**why_not, **report.why_not}.items()
                      if k not in report.fired}
    if fired and os.environ.get("ARCHC_DEBUG"):
        counts = ", ".join(f"{k} x{v}" for k, v in sorted(fired.items()))
        print(f"fuse: {counts}", file=sys.stderr)
    return PassResult(graph, bool(fired))


def explain(graph: Graph) -> str:
    """What fired and, for each rule that did not, why (`archc compile --explain`)."""
    report = graph.meta.get("fusions")
    if report is None:
        return "no fusion pass ran (fusions run at -O2)\n"
    lines = [f"fired  {name} x{n}" for name, n in sorted(report.fired.items())]
    lines += [f"not    {name}: {why}" for name, why in sorted(report.why_not.items())]
    return "\n".join(lines) + "\n"


__all__ = ["RULESETS", "FusionReport", "explain", "fuse"]
