"""The public Python API, re-exported by `archc/__init__.py`."""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np

from archc.backends.numpy_interp import run_bound
from archc.frontend import ast
from archc.frontend import parse as _parse
from archc.inputs import validate
from archc.ir.graph import Graph
from archc.lower import lower
from archc.passes import PIPELINES, run_pipeline
from archc.weights import as_run, check_weights, init_params


def parse(text: str, path: str = "<spec>") -> ast.Module:
    """Parse `.arch` text into its AST (raises ArchcError with rendered diagnostics)."""
    return _parse(text, path)


def parse_file(path: str | Path) -> ast.Module:
    """Parse a spec file; a missing, unreadable or non-UTF-8 file is a diagnostic."""
    from archc.files import read_text

    return _parse(read_text(path, "spec file"), str(path))


def optimize(graph: Graph, level: int = 1, verify: bool = False) -> Graph:
    """Run the pass pipeline of optimisation level 0, 1 or 2 (see archc.passes)."""
    return run_pipeline(graph, PIPELINES[level], verify_each=verify)


def compile(spec: str | Path | ast.Module, level: int = 1, model: str | None = None) -> Graph:
    """Spec (a path, `.arch` text or a parsed module) -> optimized graph."""
    if isinstance(spec, ast.Module):
        module = spec
    elif isinstance(spec, Path) or (isinstance(spec, str) and "\n" not in spec and
                                    spec.endswith(".arch")):
        module = parse_file(spec)
    else:
        module = parse(spec)
    return optimize(lower(module, model), level)


def run(graph: Graph, inputs: dict[str, np.ndarray], weights: dict[str, np.ndarray] | None = None,
        backend: str = "numpy", seed: int = 0) -> dict[str, np.ndarray]:
    """Run `graph` on `inputs` with `weights` (default: seeded init). The inputs are checked
    and converted by `archc.inputs.validate` before either backend runs (extra arrays are
    ignored; `token_type_ids` and masks may be left out), so both backends accept and refuse
    the same inputs with the same error. Either backend is prepared once per graph and weight
    arrays (a bound NumPy plan, an onnxruntime session) and reused: after changing a weight
    array in place, call `archc.backends.ort.clear_session_cache()`."""
    if backend not in ("numpy", "onnxruntime"):
        raise ValueError(f"unknown backend `{backend}` (numpy or onnxruntime)")
    feeds = validate(graph, inputs)
    if weights is None:  # one seeded init per graph and seed, so a session can be reused
        weights = _INITIALISED.setdefault(graph, {}).get(seed)
        if weights is None:
            weights = _INITIALISED[graph][seed] = init_params(graph, seed)
    check_weights(graph, weights, "the given weights")
    weights = as_run(graph, weights)
    from archc.runner import explained

    if backend == "numpy":  # compiled and bound once per graph and weights
        return explained(graph, feeds, lambda: run_bound(graph, feeds, weights))
    from archc.backends.ort import run_cached

    # exported and built once per graph and weights
    return explained(graph, feeds, lambda: run_cached(graph, feeds, weights), weights=weights)


_INITIALISED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


