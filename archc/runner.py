"""A compiled graph ready for repeated calls, on either backend.

    r = archc.Runner(graph, weights, backend="onnxruntime")   # export + session, once
    out = r({"input_ids": ids, "attention_mask": mask})         # each call only runs

The NumPy backend compiles and binds its plan once (archc/backends/numpy_interp.py); the
onnxruntime backend exports the graph and builds the session once. Each call checks its inputs
as `archc.run` does (`archc.inputs.validate`, against facts gathered from the graph once) and
returns every output by name. `archc.Session` (archc/kvcache.py) drives one across decode steps.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from archc.diagnostics import ArchcError, Diagnostic
from archc.inputs import GraphFacts, validate
from archc.ir.graph import Graph
from archc.weights import as_run, check_weights, init_params


class Runner:
    """One graph with its weights on one backend. `weights` default to the seeded init;
    weights the graph does not read are ignored (an encoder-decoder's halves share one file)."""

    def __init__(self, graph: Graph, weights: dict[str, np.ndarray] | None = None,
                 backend: str = "numpy", seed: int = 0):
        if backend not in ("numpy", "onnxruntime"):
            raise ValueError(f"unknown backend `{backend}` (numpy or onnxruntime)")
        if not isinstance(graph, Graph):
            raise TypeError(f"Runner takes a Graph (`archc.compile(text)`, `archc.lower(...)`), "
                            f"not a {type(graph).__name__}")
        if weights is not None and not isinstance(weights, Mapping):
            raise TypeError(f"weights are a dict of parameter name -> array, not a "
                            f"{type(weights).__name__}")
        weights = init_params(graph, seed) if weights is None else weights
        check_weights(graph, {k: weights[k] for k in graph.params if k in weights},
                      "the given weights")
        self.graph, self.backend, self.facts = graph, backend, GraphFacts(graph)
        self.weights = as_run(graph, weights)
        self._ort = self._plan = None
        self._names: list[str] = []  # the session's outputs (a step would ask every time)
        if backend == "numpy":
            from archc.backends.numpy_interp import bind, compile_graph

            self._plan = bind(compile_graph(graph), self.weights)
        else:
            from archc.backends.onnx_export import export_onnx
            from archc.backends.ort import session

            self._ort = session(export_onnx(graph, self.weights))
            self._names = [o.name for o in self._ort.get_outputs()]

    def __call__(self, inputs: dict) -> dict[str, np.ndarray]:
        """Check and convert `inputs` (see archc.inputs), then run."""
        return self.run_checked(validate(self.graph, inputs, facts=self.facts))

    def run_checked(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run feeds `validate` already returned."""
        if self._ort is not None:
            names = self._names or [o.name for o in self._ort.get_outputs()]
            return explained(self.graph, feeds, lambda: dict(zip(names, self._ort.run(
                names, feeds))), weights=self.weights)
        from archc.backends.numpy_interp import run_plan

        return explained(self.graph, feeds, lambda: run_plan(self._plan, feeds, self.weights))


def explained(graph: Graph, feeds: dict[str, np.ndarray], call, weights=None):
    """`call()`; when it fails and the spec's shape rules, run again at these inputs' sizes,
    refuse them (`reshape(x [seq], [2, 2])` with seq = 3), that is E0201 at the spec's line,
    not an internal error. A NumPy kernel's failure is E0333 at its op. An onnxruntime failure
    (no op to point at) is run again on NumPy with `weights`, to find the op. Any other failure
    propagates as it was. Only a failed run pays."""
    try:
        return call()
    except MemoryError:
        raise
    except Exception as failure:
        from archc.ir.types import ShapeError, TensorType
        from archc.passes.infer_shapes import infer_at

        given = {k: TensorType(graph.inputs[k].type.dtype, tuple(np.shape(v)))
                 for k, v in feeds.items() if k in graph.inputs}
        try:
            infer_at(graph, given)
        except ShapeError as why:  # the spec's own rules refuse these sizes
            raise ArchcError([_at_sizes(graph, given, "E0201", str(why), why.node)],
                             graph.meta.get("sources")) from failure
        except Exception:  # a rule that cannot take concrete sizes says nothing here
            pass
        failed = failure if getattr(failure, "node", None) is not None else \
            _on_numpy(graph, feeds, weights) if weights is not None else None
        node = getattr(failed, "node", None)  # the NumPy op that failed
        if node is None or node.span is None or os.environ.get("ARCHC_DEBUG"):
            raise
        cause = failed.cause
        raise ArchcError([_at_sizes(
            graph, given, "E0333", f"`{node.op}` failed: {type(cause).__name__}: {cause}", node,
            "if the spec's shapes hold for these sizes, this is a bug in archc: ARCHC_DEBUG=1 "
            "gives the traceback")], graph.meta.get("sources")) from failure


def _on_numpy(graph: Graph, feeds, weights):
    """The NumPy backend's failure on the same run (an InterpreterError naming the op), or
    None when it runs."""
    from archc.backends.numpy_interp import InterpreterError, run_graph

    try:
        run_graph(graph, feeds, weights)
    except InterpreterError as e:
        return e
    except Exception:
        return None
    return None


def _at_sizes(graph: Graph, given: dict, code: str, why: str, node, help: str = "") -> Diagnostic:
    sizes = {d: n for k, t in given.items() for d, n in zip(graph.inputs[k].type.shape, t.shape,
                                                             strict=False) if isinstance(d, str)}
    at = ", ".join(f"{d} = {n}" for d, n in sizes.items())
    return Diagnostic(code, f"at these input sizes ({at}): {why}", node.span,
                      f"`{node.op}` fails here",
                      notes=(f"in `{node.scope}`",) if node.scope else (),
                      help="the spec's shapes hold only for some sizes of its symbolic dims: "
                           "give inputs that fit them, or fix the spec" + (f"; {help}" if help
                                                                           else ""))
