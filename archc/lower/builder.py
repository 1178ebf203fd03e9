"""LayerBuilder: what a layer sees while it lowers itself into ops.

It emits op nodes with their types inferred on the spot (a shape rule's complaint becomes a
diagnostic that names the layer and points at the call), and creates or reuses parameters
under the layer's name.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from archc.diagnostics import Collector, Span
from archc.ir.graph import Graph, Node
from archc.ir.types import ShapeError, TensorType, fmt_shape
from archc.limits import ENV, fmt_bytes, max_bytes, nbytes
from archc.lower.signature import POISON
from archc.ops import OPS


class LayerFailed(Exception):
    """Raised inside a layer after its diagnostic is recorded; the call evaluates to POISON."""


class Abort(Exception):
    """A failed `require`: the enclosing block stops and evaluates to POISON."""


@dataclass
class LayerBuilder:
    graph: Graph
    diags: Collector
    scope: str  # parameter-name prefix of this layer (`h.0.attn`)
    span: Span  # the call being lowered
    shared: tuple[str, ...]  # prefixes of the shared repeats we are inside
    uses: Counter
    arg_spans: dict = field(default_factory=dict)  # argument name -> where it was written
    ev: Any = None  # the evaluator, for primitives that read the spec's state (param names)

    def at(self, arg: str) -> Span:
        """The span of one argument of the call (the whole call when it was not written)."""
        return self.arg_spans.get(arg, self.span)

    def op(self, name: str, *inputs: Node, **attrs) -> Node:
        try:
            t = OPS[name].infer(*(i.type for i in inputs), **attrs)
        except ShapeError as e:
            where = f" in `{self.scope}`" if self.scope else ""
            self.fail("E0201", f"shape mismatch{where}: {e}", "in this layer")
        return self.graph.add_op(name, inputs, attrs, type=t, scope=self.scope, span=self.span)

    def const(self, value, dtype=np.float32) -> Node:
        return self.graph.add_const(np.asarray(value, dtype=dtype), scope=self.scope)

    def param(self, local: str, shape: tuple[int, ...], init: str, role: str = "other") -> Node:
        name = f"{self.scope}.{local}" if self.scope else local
        existing = self.graph.params.get(name)
        step = self.ev.step_params if self.ev is not None else set()
        if existing is not None:
            if not any(name.startswith(p + ".") for p in self.shared) or name in step:
                self.fail("E0105", f"parameter `{name}` is defined twice", "second definition",
                          help="give one of the layers another name with `as`")
            if existing.type.shape != tuple(shape):
                self.fail("E0201", f"shared parameter `{name}` is {fmt_shape(existing.type.shape)}"
                          f" in one layer and {fmt_shape(tuple(shape))} in another", "here")
            self.uses[name] += 1
            step.add(name)
            return existing
        step.add(name)
        self.uses[name] += 1
        attrs = {"init": init} if role == "other" else {"init": init, "role": role}
        return self.graph.add_param(name, TensorType("float32", tuple(shape)), **attrs)

    def const_budget(self, shape: tuple[int, ...], itemsize: int, arg: str) -> None:
        """Refuse, at the argument `arg`, a compile-time constant over the memory budget
        (`ones(10 ** 12)`), before it is allocated."""
        size = nbytes(shape, itemsize)
        if size > max_bytes():
            self.fail("E0200", f"a constant {list(shape)} would take {fmt_bytes(size)}, over "
                      f"the limit of {fmt_bytes(max_bytes())}", "too large",
                      span=self.at(arg), help=f"{ENV} sets the limit")

    def reuse(self, param: Node) -> Node:
        """Use an existing parameter again (tied weights): counted, not created."""
        self.uses[param.name] += 1
        return param

    def fail(self, code: str, message: str, label: str, span: Span | None = None,
             help: str | None = None):
        self.diags.error(code, message, span or self.span, label, help=help)
        raise LayerFailed

    @property
    def cache(self) -> bool:
        """Lowering for incremental decoding (see `archc.lower.lower(cache=True)`)."""
        return bool(self.graph.meta.get("cache"))

    def positions(self, x: Node, axis: int = 1) -> Node:
        """Absolute positions of x's entries along `axis`, read from the graph input that
        defines that dim's symbol when it has one, so that every layer's positions (and masks)
        are one node. With a KV cache, new tokens start after the past ones."""
        if not -x.type.rank <= axis < x.type.rank:  # `sinusoidal(ids)` of ids [batch]
            self.fail("E0201", f"positions along axis {axis} of {x.type}: it has no such axis",
                      "this needs a sequence axis", help="token ids are [batch, seq]")
        axis %= x.type.rank
        d = x.type.shape[axis]
        for inp in self.graph.inputs.values():
            if isinstance(d, str) and d in inp.type.shape:
                x, axis = inp, inp.type.shape.index(d)
                break
        pos = self.op("positions", x, axis=axis % x.type.rank)  # x may be the input now
        past = self.past_length(d) if self.cache and isinstance(d, str) else None
        return pos if past is None else self.op("add", pos, past)

    def past_mask(self, symbol) -> Node | None:
        """The mask input covering past and new tokens of the sequence `symbol` (a KV cache
        declares it `[batch, past+symbol]`); None for a sequence without a cache."""
        return next((i for i in self.graph.inputs.values() if self.cache and i.type.rank == 2
                     and i.type.shape[1] == f"past+{symbol}"), None)

    def key_positions(self, x: Node, axis: int = 1) -> Node:
        """Positions of every key x's tokens attend to: with a KV cache, past and new ones
        (read from the mask that covers both), else x's own positions."""
        mask = self.past_mask(x.type.shape[axis])
        return self.positions(x, axis) if mask is None else self.op("positions", mask, axis=1)

    def past_length(self, symbol: str) -> Node | None:
        """Cached tokens = the mask's length (past + new) - the new tokens; None for a sequence
        without a cache (an encoder's)."""
        mask = self.past_mask(symbol)
        new = next((i for i in self.graph.inputs.values() if symbol in i.type.shape), None)
        if mask is None or new is None:
            return None
        total = self.op("dim_size", mask, axis=1)
        return self.op("sub", total, self.op("dim_size", new, axis=new.type.shape.index(symbol)))

    def dim(self, x: Node, axis: int = -1) -> int:
        d = x.type.shape[axis]
        if not isinstance(d, int):
            self.fail("E0201", f"`{self.scope}` needs a static feature dim, got `{d}`", "here")
        return d


__all__ = ["POISON", "Abort", "LayerBuilder", "LayerFailed"]
