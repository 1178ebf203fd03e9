"""Lowering: AST -> IR graph (`lower`). All semantic errors of a spec are collected first.

The blocks a model sees: the standard library (`archc/stdlib/*.arch`), then the blocks of every
file it imports (`import "other.arch"`, relative to the importing file), then its own. A name
defined twice across imports is an error pointing at both; so is an import cycle. A spec may
define a block with a library block's name: its own wins.
"""

from __future__ import annotations

import functools
from pathlib import Path

from archc.diagnostics import ArchcError, Collector, Diagnostic, Span
from archc.frontend import ast, parse
from archc.ir.graph import Graph
from archc.lower.evaluate import Evaluator
from archc.serving import keeps_cache

STDLIB = Path(__file__).resolve().parent.parent / "stdlib"
MAX_IMPORTS = 256


@functools.lru_cache(maxsize=1)
def stdlib() -> tuple[ast.Module, ...]:
    return tuple(parse(p.read_text(encoding="utf-8"), f"<stdlib>/{p.name}")
                 for p in sorted(STDLIB.glob("*.arch")))


def library_block(name: str) -> tuple[ast.BlockDef, str] | None:
    """A standard-library block and the text of its file (for `archc dump --block`)."""
    for m in stdlib():
        for b in m.blocks:
            if b.name == name:
                lines = m.source[:b.span.start].split("\n")[:-1]
                doc = []
                while lines and lines[-1].lstrip().startswith("#"):  # its comment, above it
                    doc.insert(0, lines.pop())
                return b, "\n".join([*doc, m.source[b.span.start:b.span.end]])
    return None


def lower(module: ast.Module, model: str | None = None, cache: bool = False) -> Graph:
    """Lower one model of `module` to a graph. With `cache`, every causal self-attention
    reads `past_key_values.N.key/value` [batch, kv_heads, past, head_dim] and writes
    `present.N.key/value`; `attention_mask` then covers past and new tokens."""
    diags = Collector({module.path: module.source})
    models = {}
    for m in module.models:
        if m.name in models:
            diags.error("E0105", f"model `{m.name}` is defined twice", m.span, "second one")
        models[m.name] = m
    diags.raise_if_any()
    if not models:
        raise ArchcError([Diagnostic("E0107", f"`{module.path}` defines no `model`",
                                     Span(module.path, 0, 0), "expected `model NAME { ... }`")],
                         {module.path: module.source})
    if model is None:
        if len(models) > 1:
            raise ArchcError([Diagnostic("E0107", f"`{module.path}` defines several models; "
                                         f"pick one of {', '.join(sorted(models))}")])
        model = next(iter(models))
    if model not in models:
        raise ArchcError([Diagnostic("E0107", f"no model `{model}` in `{module.path}`")])
    library = stdlib()
    for lib in library:
        diags.sources[lib.path] = lib.source
    blocks = [b for lib in library for b in lib.blocks]
    own = {b.name for b in module.blocks}
    blocks = [b for b in blocks if b.name not in own] + imported_blocks(module, diags)
    ev = Evaluator(blocks, diags, cache, frozenset(lib.path for lib in library))
    try:
        graph = ev.model(models[model])
    except RecursionError:
        diags.error("E0003", "the spec nests too deeply to lower", models[model].span,
                    "in this model", help="split long expressions with intermediate names")
    if cache and diags.diagnostics and not ev.graph.meta.get("cache_layers") and \
            not ev.graph.meta.get("states") and _lowers_without_a_cache(module, model):
        # the spec is sound but keeps no KV cache (an encoder): the errors of the cached lowering
        # are symptoms (its mask widened to past + new tokens), this is the one cause
        diags.diagnostics[:] = [Diagnostic(
            "E0202", f"model `{model}` cannot decode incrementally: no layer keeps a KV cache",
            models[model].span, "this model", help="only causal self-attention is cached; an "
            "encoder runs in one pass: drop `--kv-cache` / `--incremental` / `generate`")]
    diags.raise_if_any()
    graph.param_uses = dict(ev.uses)
    graph.meta["sources"] = diags.sources  # the spec's text, for errors found when it runs
    return graph


def _lowers_without_a_cache(module: ast.Module, model: str) -> bool:
    """Whether `model` lowers cleanly without a cache and keeps neither a KV cache nor a state.
    Asked only after a cached lowering failed: a second lowering, into its own collector, tells
    an encoder asked to decode (E0202) from a spec that is broken either way (its own errors)."""
    try:
        plain = lower(module, model)
    except ArchcError:
        return False
    return not keeps_cache(plain)


def imported_blocks(module: ast.Module, diags: Collector) -> list[ast.BlockDef]:
    """The blocks of `module` and of every file it imports, transitively, each name once."""
    seen: dict[str, ast.BlockDef] = {}
    visiting: list[str] = []
    loaded: set[str] = set()

    def visit(m: ast.Module) -> None:
        key = _key(m.path)
        visiting.append(key)
        for imp in m.imports:
            target = (Path(m.path).parent / imp.path) if m.path != "<spec>" else Path(imp.path)
            tkey = _key(str(target))
            if tkey in visiting:
                diags.error("E0112", f"import cycle: `{imp.path}` imports this file again",
                            imp.span, "cycle", notes=(" -> ".join([*visiting, tkey]),))
                continue
            if tkey in loaded:
                continue
            if len(loaded) >= MAX_IMPORTS:
                diags.error("E0112", f"more than {MAX_IMPORTS} imported files", imp.span, "here")
                continue
            loaded.add(tkey)
            try:
                text = target.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                diags.error("E0112", f"cannot import `{imp.path}`: {_reason(e)}", imp.span,
                            "imported here")
                continue
            try:
                sub = parse(text, str(target))
            except ArchcError as e:
                diags.sources.update(e.sources)
                diags.diagnostics.extend(e.diagnostics)
                continue
            diags.sources[sub.path] = sub.source
            visit(sub)
        for b in m.blocks:
            first = seen.get(b.name)
            if first is not None and first is not b:
                line, col = first.span.line_col(diags.sources[first.span.file])
                diags.error("E0105", f"block `{b.name}` is defined twice", b.span,
                            "second definition",
                            notes=(f"first defined at {first.span.file}:{line}:{col}",))
            seen.setdefault(b.name, b)
        visiting.pop()

    visit(module)
    return list(seen.values())


def _key(path: str) -> str:
    try:
        return str(Path(path).resolve())
    except OSError:
        return path


def _reason(e: Exception) -> str:
    if isinstance(e, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(e, FileNotFoundError):
        return "no such file"
    return e.strerror or type(e).__name__


__all__ = ["library_block", "lower", "stdlib"]
