"""Weights: seeded random init by each param's `init` rule, and safetensors load/save.

Init rules (set by the layer that creates a param): `xavier` (Glorot uniform, attention and
GLU projections), `he` (Kaiming normal, fan-in, for ReLU FFNs), `normal:STD` (embeddings and
heads), `ones` (norm scales), `zeros` (biases, unit-offset norm scales). Each param draws from
its own generator seeded by (seed, crc32(name)), so adding a layer does not change the others.
The init refuses, before allocating, parameters over the `ARCHC_MAX_BYTES` budget.

`load_weights` reads a safetensors file through `archc.tensorfile` (every header field checked;
F32, F16, BF16 and F64 convert to float32, other dtypes are refused by name). NaN or infinite
weights are an `ArchcWarning` (the CLI prints it on stderr), or an error with `strict=True`.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Mapping

import numpy as np

from archc.diagnostics import ArchcError, Diagnostic, render
from archc.ir.graph import Graph
from archc.ir.types import fmt_shape
from archc.limits import check_bytes, nbytes


class ArchcWarning(UserWarning):
    """A diagnostic of severity `warning`: the work goes on, the user should know."""

    def __init__(self, diagnostic: Diagnostic):
        self.diagnostic = diagnostic
        super().__init__(render(diagnostic))


def nonfinite_weights(notes: list[str], source: str, strict: bool) -> None:
    """Report weights with NaN or infinite values (one note per tensor): a warning, or an
    error when `strict`."""
    if not notes:
        return
    diag = Diagnostic("E0309", f"{len(notes)} weight tensor(s) in `{source}` hold NaN or "
                      "infinite values", notes=tuple(notes[:10]) + (
                          (f"and {len(notes) - 10} more",) if len(notes) > 10 else ()),
                      help=None if strict else "run with `--strict` to make this an error",
                      severity="error" if strict else "warning")
    if strict:
        raise ArchcError([diag])
    warnings.warn(ArchcWarning(diag), stacklevel=3)


def check_init_budget(graph: Graph, largest_only: bool = False) -> None:
    for name, p in graph.params.items():
        bad = [d for d in p.type.shape if not isinstance(d, int) or d < 0]
        if bad:
            raise ArchcError([Diagnostic("E0310", f"parameter `{name}` has shape "
                                         f"{fmt_shape(p.type.shape)}: not a list of sizes")])
    largest = max((nbytes(p.type.shape, 8) for p in graph.params.values()), default=0)
    if largest_only:
        if graph.params:  # a spec without parameters has nothing to draw
            name = max(graph.params, key=lambda k: nbytes(graph.params[k].type.shape, 8))
            check_bytes(largest, f"the random init of parameter `{name}` "
                        f"{fmt_shape(graph.params[name].type.shape)} (drawn in float64)")
        return
    total = sum(nbytes(p.type.shape, 4) for p in graph.params.values())
    check_bytes(total + largest, f"the random init of {len(graph.params)} parameters "
                "(float32, drawn in float64 one tensor at a time)")


def init_params(graph: Graph, seed: int = 0, lazy: bool = False):
    """Every parameter's seeded init, as a dict; with `lazy`, a `LazyWeights` mapping that
    draws each tensor when it is read and keeps none (an export streams them one by one)."""
    if lazy:
        check_init_budget(graph, largest_only=True)
        return LazyWeights(graph.params, lambda name: init_param(graph, name, seed))
    check_init_budget(graph)
    return {name: init_param(graph, name, seed) for name in sorted(graph.params)}


def init_param(graph: Graph, name: str, seed: int = 0) -> np.ndarray:
    p = graph.params[name]
    shape = p.type.shape
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    rule = p.attrs["init"]
    if rule == "ones":
        return np.ones(shape, np.float32)
    if rule == "zeros":
        return np.zeros(shape, np.float32)
    if rule == "xavier":
        limit = np.sqrt(6.0 / (shape[0] + shape[-1]))
        w = rng.uniform(-limit, limit, shape)
    elif rule == "he":
        w = rng.normal(0.0, np.sqrt(2.0 / shape[0]), shape)
    elif rule.startswith("normal:"):
        w = rng.normal(0.0, float(rule.split(":")[1]), shape)
    else:
        raise ValueError(f"unknown init rule `{rule}` for `{name}`")
    return w.astype(np.float32)


class LazyWeights(Mapping):
    """name -> array, made by `make(name)` on each read and not kept: weights larger than
    memory flow through an export one tensor at a time."""

    def __init__(self, names, make):
        self._names = sorted(names)
        self._known = frozenset(self._names)
        self._make = make

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._known:
            raise KeyError(name)
        return self._make(name)

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def check_weights(graph: Graph, weights: dict[str, np.ndarray], source: str) -> None:
    """Every param present with its shape, nothing extra; all problems in one error."""
    diags = []
    for name in sorted(graph.params):
        want = graph.params[name].type.shape
        if name not in weights:
            diags.append(Diagnostic("E0300", f"missing weight `{name}` {fmt_shape(want)}",
                                    notes=(f"in {source}",)))
        elif np.issubdtype(have := np.asarray(weights[name]).dtype, np.floating) != \
                graph.params[name].type.dtype.startswith("float"):  # quantized codes: uint8
            kind = "a float" if graph.params[name].type.dtype.startswith("float") else "an integer"
            diags.append(Diagnostic("E0308", f"weight `{name}` is {have}: a "
                                    f"{graph.params[name].type.dtype} parameter needs {kind} "
                                    "array", notes=(f"in {source}",)))
        elif np.shape(weights[name]) != want:  # np.shape: a nested list has one too
            diags.append(Diagnostic("E0301", f"weight `{name}` has shape "
                                    f"{fmt_shape(np.shape(weights[name]))}, the spec needs "
                                    f"{fmt_shape(want)}", notes=(f"in {source}",)))
    for name in sorted(set(weights) - set(graph.params)):
        diags.append(Diagnostic("E0302", f"unexpected weight `{name}` "
                                f"{fmt_shape(np.shape(weights[name]))}: no such parameter",
                                notes=(f"in {source}",)))
    if diags:
        raise ArchcError(diags)


def as_run(graph: Graph, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays a run reads: each parameter's, float32 for a float32 parameter (no copy when
    it already is), as given otherwise (quantized codes stay integers)."""
    return {k: np.asarray(weights[k], np.float32) if p.type.dtype == "float32"
            else np.asarray(weights[k]) for k, p in graph.params.items()}


def load_weights(graph: Graph, path: str, strict: bool = False) -> dict[str, np.ndarray]:
    """The weights of `graph` from a safetensors file, as float32, checked against the graph's
    parameters (names, shapes, dtypes); NaN/Inf is a warning, or an error when `strict`."""
    from archc.tensorfile import TensorFile, nonfinite

    f = TensorFile(path)
    diags = [d for d in map(f.refusal, sorted(set(f.entries) & set(graph.params))) if d]
    shapes = {n: np.broadcast_to(np.float32(0), e.shape) for n, e in f.entries.items()}
    try:
        check_weights(graph, shapes, path)  # names and shapes, from the header alone
    except ArchcError as e:
        diags += e.diagnostics
    if diags:
        raise ArchcError(diags)
    weights = {name: f.float32(name) for name in graph.params}
    nonfinite_weights([n for n in (nonfinite(k, v) for k, v in weights.items()) if n], path,
                      strict)
    return weights


def safetensors_writer(weights: dict[str, np.ndarray]):
    """A writer for archc.files: the weights as a safetensors file at the path it is given."""
    from safetensors.numpy import save_file

    tensors = {k: np.ascontiguousarray(v) for k, v in sorted(weights.items())}
    return lambda path: save_file(tensors, str(path))


def save_weights(weights: dict[str, np.ndarray], path: str) -> None:
    """Write a safetensors file atomically (see archc.files)."""
    from archc.files import write_file

    write_file(path, safetensors_writer(weights))
