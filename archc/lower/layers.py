"""The table of Python-defined calls (`LAYERS`): primitives and the few intrinsics.

Each entry pairs a `Signature` (what a spec may write) with a function that lowers one call
into ops through a `LayerBuilder`. The primitives live in `primitives.py` and
`intrinsics.py`; the layers themselves (attention, norms, FFNs, embeddings, MoE) are `.arch`
blocks in `archc/stdlib/`. Entries that own parameters (`owns=True`) get a name (`as NAME`, or
their own name made unique in the enclosing scope).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from archc.ir.graph import Node
from archc.lower.builder import LayerBuilder
from archc.lower.signature import Arg, ModuleRef, Signature


@dataclass(frozen=True)
class Layer:
    sig: Signature
    lower: Callable[..., object]
    owns: bool  # creates parameters, so gets a name


LAYERS: dict[str, Layer] = {}


def layer(name: str, positional: int, *args: Arg, owns: bool = True, doc: str = ""):
    def wrap(fn):
        LAYERS[name] = Layer(Signature(name, args, positional, doc), fn, owns)
        return fn
    return wrap


T = "tensor"
# functions that also compute on compile-time numbers: sqrt(d), exp(1)
NUMERIC = {"sqrt": np.sqrt, "exp": np.exp, "tanh": np.tanh, "log": np.log, "abs": np.abs,
           "sin": np.sin, "cos": np.cos, "floor": np.floor}


def tied_weight(b: LayerBuilder, ref: ModuleRef, shape: tuple[int, ...]) -> Node:
    """The `weight` of another layer (`tied = wte`), checked against the shape needed here."""
    w = b.graph.params.get(f"{ref.prefix}.weight")
    if w is None:
        b.fail("E0106", f"layer `{ref.prefix}` has no `weight` to tie to", "tied here")
    if w.type.shape != shape:
        b.fail("E0201", f"cannot tie to `{w.name}`: it is {list(w.type.shape)}, "
               f"this layer needs {list(shape)}", "tied here")
    return b.reuse(w)


# ---------------------------------------------------------------- intrinsics kept here
@layer("sinusoidal", 2, Arg("x", T), Arg("dim", "int"), owns=False,
       doc="fixed sin/cos positions (Vaswani et al.) for x's seq axis -> [T,dim]")
def sinusoidal(b, x, dim):
    if dim % 2:
        b.fail("E0200", f"sinusoidal positions need an even dim, got {dim}", "odd",
               span=b.at("dim"))
    if dim < 2:
        b.fail("E0200", f"sinusoidal positions need a positive dim, got {dim}", "not positive",
               span=b.at("dim"))
    return b.op("sinusoidal", b.positions(x), dim=dim)
