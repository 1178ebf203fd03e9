"""Passes are plain functions `Graph -> PassResult`, run in order by `run_pipeline`.

The pipelines by optimisation level:
- O0: infer_shapes only (the IR exactly as lowered);
- O1: fold constants, then CSE, then DCE, repeated to a fixpoint;
- O2: O1, then `fuse` (archc/passes/fusions/: attention, norms, skip norms, GELU), repeated
  with O1 to a fixpoint, so CSE merges what the rules emit (one mask bias for every layer).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from archc.ir.graph import Graph
from archc.ir.verify import VerifyError, verify


@dataclass
class PassResult:
    graph: Graph
    changed: bool


Pass = Callable[[Graph], PassResult]


class PassError(RuntimeError):
    pass


from archc.passes.cse import eliminate_common_subexpressions  # noqa: E402
from archc.passes.dce import eliminate_dead_code  # noqa: E402
from archc.passes.fold_constants import fold_constants  # noqa: E402
from archc.passes.fusions import fuse  # noqa: E402
from archc.passes.infer_shapes import infer_shapes  # noqa: E402

PIPELINES: dict[int, tuple[Pass, ...]] = {
    0: (infer_shapes,),
    1: (infer_shapes, fold_constants, eliminate_common_subexpressions, eliminate_dead_code),
    2: (infer_shapes, fold_constants, eliminate_common_subexpressions, eliminate_dead_code,
        fuse),
}
PASSES: dict[str, Pass] = {p.__name__: p for p in PIPELINES[2]}


def run_pipeline(graph: Graph, passes: Sequence[Pass] = PIPELINES[1], verify_each: bool = False,
                 fixpoint_steps: int = 4) -> Graph:
    """Run `passes` in order, repeating the sequence until nothing changes (at most
    `fixpoint_steps` rounds). With `verify_each` (or ARCHC_DEBUG set) the IR is verified after
    every pass, and a failure names the pass and those that ran before it."""
    verify_each = verify_each or bool(os.environ.get("ARCHC_DEBUG"))
    ran: list[str] = []
    for _ in range(fixpoint_steps):
        changed = False
        for p in passes:
            result = p(graph)
            graph, changed = result.graph, changed or result.changed
            if verify_each:
                try:
                    verify(graph)
                except VerifyError as e:
                    raise PassError(f"after {p.__name__} (ran: {', '.join(ran)}): {e}") from None
            ran.append(p.__name__)
        if not changed:
            break
    return graph


__all__ = ["PASSES", "PIPELINES", "PassError", "PassResult", "run_pipeline"]
