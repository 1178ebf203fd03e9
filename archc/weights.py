"""Weights: seeded random init by each param's `init` rule, and safetensors load/save.

Init rules (set by the layer that creates a param): `xavier` (Glorot uniform, attention and
GLU projections), `he` (Kaiming normal, fan-in, for ReLU FFNs), `normal:STD` (embeddings and
heads), `ones` (norm scales), `zeros` (biases, unit-offset norm scales). Each param draws from
its own generator seeded by (seed, crc32(name)), so adding a layer does not change the others.
"""

from __future__ import annotations

import zlib

import numpy as np

from archc.diagnostics import ArchcError, Diagnostic
from archc.ir.graph import Graph
from archc.ir.types import fmt_shape


def init_params(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    out = {}
    for name in sorted(graph.params):
        p = graph.params[name]
        shape = p.type.shape
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        rule = p.attrs["init"]
        if rule == "ones":
            w = np.ones(shape)
        elif rule == "zeros":
            w = np.zeros(shape)
        elif rule == "xavier":
            limit = np.sqrt(6.0 / (shape[0] + shape[-1]))
            w = rng.uniform(-limit, limit, shape)
        elif rule == "he":
            w = rng.normal(0.0, np.sqrt(2.0 / shape[0]), shape)
        elif rule.startswith("normal:"):
            w = rng.normal(0.0, float(rule.split(":")[1]), shape)
        else:
            raise ValueError(f"unknown init rule `{rule}` for `{name}`")
        out[name] = w.astype(np.float32)
    return out


def check_weights(graph: Graph, weights: dict[str, np.ndarray], source: str) -> None:
    """Every param present with its shape, nothing extra; all problems in one error."""
    diags = []
    for name in sorted(graph.params):
        want = graph.params[name].type.shape
        if name not in weights:
            diags.append(Diagnostic("E0300", f"missing weight `{name}` {fmt_shape(want)}",
                                    notes=(f"in {source}",)))
        elif tuple(weights[name].shape) != want:
            diags.append(Diagnostic("E0301", f"weight `{name}` has shape "
                                    f"{fmt_shape(tuple(weights[name].shape))}, the spec needs "
                                    f"{fmt_shape(want)}", notes=(f"in {source}",)))
    for name in sorted(set(weights) - set(graph.params)):
        diags.append(Diagnostic("E0302", f"unexpected weight `{name}` "
                                f"{fmt_shape(tuple(weights[name].shape))}: no such parameter",
                                notes=(f"in {source}",)))
    if diags:
        raise ArchcError(diags)


def load_weights(graph: Graph, path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    weights = {k: v.astype(np.float32) for k, v in load_file(path).items()}
    check_weights(graph, weights, path)
    return weights


def save_weights(weights: dict[str, np.ndarray], path: str) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in sorted(weights.items())}, path)
