"""The public Python API, re-exported by `archc/__init__.py`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from archc.backends.numpy_interp import run_graph
from archc.backends.onnx_export import export_onnx
from archc.frontend import ast
from archc.frontend import parse as _parse
from archc.ir.graph import Graph
from archc.lower import lower
from archc.passes import PIPELINES, run_pipeline
from archc.weights import check_weights, init_params


def parse(text: str, path: str = "<spec>") -> ast.Module:
    """Parse `.arch` text into its AST (raises ArchcError with rendered diagnostics)."""
    return _parse(text, path)


def parse_file(path: str | Path) -> ast.Module:
    return _parse(Path(path).read_text(), str(path))


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
    """Run `graph` on `inputs` (extra arrays are ignored) with `weights` (default: seeded init)."""
    weights = init_params(graph, seed) if weights is None else weights
    check_weights(graph, weights, "the given weights")
    missing = [n for n in graph.inputs if n not in inputs]
    if missing:
        raise KeyError(f"missing graph input(s): {', '.join(missing)}")
    feeds = {n: np.asarray(inputs[n]) for n in graph.inputs}
    if backend == "numpy":
        return run_graph(graph, feeds, weights)
    if backend == "onnxruntime":
        from archc.backends.ort import run_onnx

        return run_onnx(export_onnx(graph, weights), feeds)
    raise ValueError(f"unknown backend `{backend}` (numpy or onnxruntime)")


