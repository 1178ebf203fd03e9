"""Lowering: AST -> IR graph (`lower`). All semantic errors of a spec are collected first."""

from __future__ import annotations

from archc.diagnostics import ArchcError, Collector, Diagnostic
from archc.frontend import ast
from archc.ir.graph import Graph
from archc.lower.evaluate import Evaluator


def lower(module: ast.Module, model: str | None = None, cache: bool = False) -> Graph:
    """Lower one model of `module` to a graph. With `cache`, every causal self-attention
    reads `past_key_values.N.key/value` [batch, kv_heads, past, head_dim] and writes
    `present.N.key/value`; `attention_mask` then covers past and new tokens."""
    diags = Collector({module.path: module.source})
    models = {m.name: m for m in module.models}
    if not models:
        raise ArchcError([Diagnostic("E0107", f"`{module.path}` defines no `model`")])
    if model is None:
        if len(models) > 1:
            raise ArchcError([Diagnostic("E0107", f"`{module.path}` defines several models; "
                                         f"pick one of {', '.join(sorted(models))}")])
        model = next(iter(models))
    if model not in models:
        raise ArchcError([Diagnostic("E0107", f"no model `{model}` in `{module.path}`")])
    ev = Evaluator(module, diags, cache)
    graph = ev.model(models[model])
    diags.raise_if_any()
    graph.param_uses = dict(ev.uses)
    return graph


__all__ = ["lower"]
