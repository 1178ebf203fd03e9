"""`archc verify`: the plain graph on NumPy against the fused, exported one on onnxruntime, on
inputs that make every feature of the spec observable (archc/verify_inputs.py).

The reference is the NumPy interpreter at -O0 (the IR exactly as lowered: no fusion, no
export). What is checked against it, output by output:

- full: the -O2 graph (every fusion rule that fires) exported to ONNX and run on onnxruntime
  over the whole sequence; every position is compared, padding included (both sides compute
  it, so both must agree there too).
- incremental (models with a KV cache, `lower(..., cache=True)`; encoder-decoders through
  `split_seq2seq`): the -O2 cache graph on onnxruntime, prefilled with K tokens and then fed
  one token a step through `archc.kvcache`'s sessions, against the same one-pass reference on
  the real (unpadded) tokens: a padded query has no meaning there, since a fully masked query
  averages whatever values it was shown.
- steps (only when incremental differs): NumPy -O0 on the cache graph through the same steps.
  When NumPy's own steps differ from its one pass (RoPE scaled by the length seen so far:
  transformers' cached decoding differs from its one pass there too), the model is not
  step-invariant and `steps` is the check that counts; otherwise incremental's failure stands.

Per check: max abs diff, max rel diff (the max abs diff over the reference's largest
magnitude), the fraction of positions whose argmax over the last axis agrees, and the cosine
similarity of the flattened outputs. A check passes when its max abs diff is within `tol`
(1e-4 by default, for float32), infinities sit in the same places and the reference holds no
NaN (there nothing can be compared); an export or onnxruntime error is a failed check, not a
crash. Mixtures of experts: the reference run reads every router's picks, and new, longer
inputs are drawn until each router has picked every expert (or the report says which did not).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field

import numpy as np

from archc import api
from archc.diagnostics import ArchcError, Diagnostic
from archc.frontend import ast
from archc.ir.graph import Graph, Node
from archc.verify_inputs import Plan, derive

TOL = 1e-4
DRAWS = 5  # attempts at inputs that hit every expert (8 to 128 tokens a row)
_ROUTER = "verify.router."  # extra outputs of the reference run: the routers' picks


@dataclass
class Check:
    mode: str  # "full", "incremental" or "steps"
    output: str
    shape: tuple[int, ...]
    compared: int  # elements compared
    max_abs: float
    max_rel: float
    argmax: float | None  # fraction of positions whose argmax agrees; None for a scalar
    cosine: float
    tol: float
    problem: str = ""  # a shape or NaN mismatch

    @property
    def passed(self) -> bool:
        return not self.problem and self.max_abs <= self.tol


@dataclass
class Report:
    spec: str
    model: str
    plan: Plan
    tol: float
    checks: list[Check] = field(default_factory=list)
    fusions: dict[str, dict[str, int]] = field(default_factory=dict)  # mode -> rule -> count
    skipped: dict[str, str] = field(default_factory=dict)  # mode -> why it did not run

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def as_json(self) -> dict:
        def num(x):
            return None if x is None or not math.isfinite(x) else float(x)

        return {"spec": self.spec, "model": self.model, "passed": self.passed,
                "tolerance": self.tol,
                "inputs": {"batch": self.plan.batch, "seq": self.plan.seq,
                           "prefill": self.plan.prefill if "incremental" in self.fusions
                           else None,
                           "shapes": {k: list(v.shape) for k, v in self.plan.inputs.items()}},
                "features": self.plan.features, "not_exercised": self.plan.gaps,
                "fusions": self.fusions, "skipped": self.skipped,
                "checks": [{"mode": c.mode, "output": c.output, "shape": list(c.shape),
                            "compared": c.compared, "max_abs": num(c.max_abs),
                            "max_rel": num(c.max_rel), "argmax": num(c.argmax),
                            "cosine": num(c.cosine), "passed": c.passed,
                            **({"problem": c.problem} if c.problem else {})}
                           for c in self.checks]}

    def render(self) -> str:
        p = self.plan
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in p.inputs.items())
        lines = [f"verify {self.spec} (model `{self.model}`): NumPy -O0 against onnxruntime -O2",
                 f"inputs    batch {p.batch}, seq {p.seq}" + (
                     f", prefill {p.prefill}" if "incremental" in self.fusions else "") +
                 f": {shapes}"]
        lines += [f"exercises {f}" for f in p.features]
        lines += [f"misses    {g}" for g in p.gaps]
        for mode, fired in self.fusions.items():
            rules = ", ".join(f"{k} x{v}" for k, v in fired.items()) or "none"
            lines.append(f"fusions   {mode}: {rules}")
        lines += [f"skipped   {mode}: {why}" for mode, why in self.skipped.items()]
        if "incremental" in self.fusions:
            lines.append(f"modes     full: one pass; incremental: prefill {p.prefill} + a token "
                         "a step (KV cache) vs NumPy's one pass, on real tokens; steps: vs "
                         "NumPy's same steps")
        head = ("mode", "output", "max abs", "max rel", "argmax", "cosine", "")
        rows = [(c.mode, c.output, f"{c.max_abs:.3g}", f"{c.max_rel:.3g}",
                 "-" if c.argmax is None else f"{c.argmax:.3f}", f"{c.cosine:.7f}",
                 ("PASS" if c.passed else "FAIL") + (f" ({c.problem})" if c.problem else ""))
                for c in self.checks]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines += ["  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip()
                  for r in [head, *rows]]
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(f"{verdict}: {sum(c.passed for c in self.checks)}/{len(self.checks)} "
                     f"checks within {self.tol:g} (max abs diff)")
        return "\n".join(lines) + "\n"

    def diagnostic(self) -> Diagnostic:
        bad = [c for c in self.checks if not c.passed] or [None]
        fired = sorted({r for f in self.fusions.values() for r in f})
        return Diagnostic("E0610", f"onnxruntime -O2 differs from NumPy -O0: {_why(bad[0])}",
                          notes=tuple(f"also {_why(c)}" for c in bad[1:6]),
                          help=f"the -O2 graphs fired {', '.join(fired) or 'no fusion rule'}; "
                          "`archc compile --explain` says what each rule did")


def _why(c: Check | None) -> str:
    if c is None:
        return "nothing was compared"
    return f"`{c.output}` ({c.mode}): " + (c.problem or f"max abs diff {c.max_abs:.3g} > "
                                             f"{c.tol:g}")


# ---------------------------------------------------------------- comparing
def compare(mode: str, name: str, ref: np.ndarray, got: np.ndarray, tol: float,
            real: np.ndarray | None = None) -> Check:
    """One output: `real` [B, T] (incremental) keeps only the unpadded positions."""
    ref, got = np.asarray(ref), np.asarray(got)
    if ref.shape != got.shape:
        return Check(mode, name, got.shape, 0, math.inf, math.inf, None, 0.0, tol,
                     f"shape {list(got.shape)}, expected {list(ref.shape)}")
    shape = ref.shape
    if real is not None:
        ref, got = ref[real], got[real]
    a, b = ref.astype(np.float64), got.astype(np.float64)
    same = np.isfinite(a) & np.isfinite(b)
    problem = "" if (same | (a == b)).all() else "NaN or infinite values differ"
    if np.isnan(a).any():  # nothing can be told apart where the reference itself is NaN
        problem = "the NumPy reference holds NaN"
    diff = np.abs(a[same] - b[same])
    max_abs = float(diff.max(initial=0.0))
    scale = float(np.abs(a[same]).max(initial=0.0))
    max_rel = max_abs / scale if scale else (0.0 if max_abs == 0 else math.inf)
    argmax = None
    if a.ndim >= 2 and a.shape[-1] > 1:
        argmax = float((a.argmax(-1) == b.argmax(-1)).mean())
    x, y = np.where(same, a, 0).ravel(), np.where(same, b, 0).ravel()
    norms = float(np.linalg.norm(x) * np.linalg.norm(y))
    cosine = float(x @ y) / norms if norms else (1.0 if not x.any() and not y.any() else 0.0)
    return Check(mode, name, shape, int(a.size), max_abs, max_rel, argmax, cosine, tol, problem)


# ---------------------------------------------------------------- running
def verify(module: ast.Module, model: str | None = None,
           weights: dict[str, np.ndarray] | str | None = None, seed: int = 0, tol: float = TOL,
           seq: int | None = None, prefill: int | None = None, strict: bool = False) -> Report:
    """Verify one model of `module`. `weights`: arrays, a safetensors path, or None for the
    seeded init. `seq`/`prefill` override the derived lengths."""
    from archc.lower import lower
    from archc.runner import Runner  # a session of its own: freed when verify returns
    from archc.weights import init_params, load_weights

    if not (isinstance(tol, int | float) and math.isfinite(tol) and tol >= 0):
        raise ArchcError([Diagnostic("E0400", f"`--tol {tol}` must be a finite number >= 0")])
    plain = api.optimize(lower(module, model), 0)
    if isinstance(weights, str):
        weights = load_weights(plain, weights, strict=strict)
    elif weights is None:
        weights = init_params(plain, seed)
    fused = api.optimize(lower(module, model), 2)
    cache, why = _cache_graphs(module, model, plain)
    outputs = list(plain.outputs)
    plan, ref = _reference(plain, cache[1] if cache else None, weights, seed, seq, prefill)
    report = Report(module.path, plain.name, plan, tol)
    report.fusions["full"] = _fired(fused)
    got = _on_ort(lambda: Runner(fused, weights, "onnxruntime")(plan.inputs))
    report.checks += [_refused("full", k, got, tol) if isinstance(got, str) else
                      compare("full", k, ref[k], got[k], tol) for k in outputs]
    if cache is None:
        report.skipped["incremental"] = why
        return report
    _check_cache(report, module, model, plain, cache, weights, ref)
    return report


def _check_cache(report: Report, module, model, plain: Graph, cache, weights, ref) -> None:
    """Prefill and steps on onnxruntime -O2 against NumPy -O0's one pass; when they differ,
    also NumPy -O0 through the same steps, which tells an export bug (NumPy's steps agree
    with its one pass) from a model whose steps differ from one pass by design (RoPE scaled
    by the length seen so far: transformers' own cached decoding differs there too)."""
    plan, tol = report.plan, report.tol
    report.fusions["incremental"] = _fired(*(g for g in cache if g is not None))
    dec = cache[1]
    name = next(k for k in dec.outputs if k not in dec.meta["states"].values())
    steps = _on_ort(lambda: _incremental(cache, weights, plan, "onnxruntime"))
    if isinstance(steps, str):
        report.checks.append(_refused("incremental", name, steps, tol))
        return
    got, real = steps
    check = compare("incremental", name, ref[name], got, tol, real)
    if check.passed:
        report.checks.append(check)
        return
    same_steps, _ = _incremental(_cache_graphs(module, model, plain, level=0)[0], weights, plan,
                                 "numpy")
    drift = compare("", name, ref[name], same_steps, tol, real)
    if drift.passed:  # NumPy's steps agree with its one pass: onnxruntime's do not
        report.checks.append(check)
    else:
        report.skipped["incremental"] = (
            "the model itself decodes step by step differently from one pass (NumPy -O0: max "
            f"abs diff {drift.max_abs:.3g} on real tokens), so `steps` is the reference")
    report.checks.append(compare("steps", name, same_steps, got, tol))


def _on_ort(run):
    """`run()`, or the message of the exception onnxruntime (or the export) raised."""
    try:
        return run()
    except ArchcError:
        raise
    except Exception as e:
        return f"export or onnxruntime failed: {type(e).__name__}: {str(e).strip()[:300]}"


def _refused(mode: str, name: str, why: str, tol: float) -> Check:
    return Check(mode, name, (), 0, math.inf, math.inf, None, 0.0, tol, why)


def _fired(*graphs: Graph) -> dict[str, int]:
    total: dict[str, int] = {}
    for g in graphs:
        report = g.meta.get("fusions")
        for rule, n in (report.fired.items() if report else ()):
            total[rule] = total.get(rule, 0) + n
    return dict(sorted(total.items()))


def _cache_graphs(module, model, plain: Graph, level: int = 2) -> tuple[tuple | None, str]:
    """(encoder or None, decoder-with-past) at `level`, or None and why not. An
    encoder-decoder's pair comes from `split_seq2seq`, which prunes them at -O1."""
    from archc.kvcache import split_seq2seq
    from archc.lower import lower
    from archc.passes import PIPELINES, run_pipeline

    if "kv_per_token" not in plain.meta:
        return None, "the model keeps no KV cache"
    try:
        if "decoder_input_ids" in plain.inputs:
            enc, dec = (run_pipeline(g, PIPELINES[level]) for g in split_seq2seq(module, model))
        else:
            enc, dec = None, api.optimize(lower(module, model, cache=True), level)
    except (ArchcError, ValueError) as e:
        first = e.diagnostics[0].message if isinstance(e, ArchcError) else str(e)
        return None, f"it does not lower with a KV cache ({first})"
    ids, mask = ("decoder_input_ids", "decoder_attention_mask") if enc else \
        ("input_ids", "attention_mask")
    fed = {ids, mask, *dec.meta["states"], *(enc.outputs if enc else ()),
           *(("attention_mask",) if enc else ())}
    extra = sorted(set(dec.inputs) - fed)
    if extra:
        return None, (f"the cache graph also takes {', '.join(f'`{x}`' for x in extra)}, "
                      "which a decoding session does not feed")
    return (enc, dec), ""


def _reference(plain: Graph, dec: Graph | None, weights, seed: int, seq, prefill):
    """The inputs and the NumPy -O0 outputs; for a mixture of experts, inputs that hit every
    expert of every router: up to DRAWS draws of new ids, each twice as long as the last
    (within the position tables)."""
    routers = _routers(plain)
    outputs = list(plain.outputs)
    for i, (node, _) in enumerate(routers):
        plain.set_output(f"{_ROUTER}{i}", node)
    plan = None
    try:
        for draw in range(DRAWS if routers else 1):
            longer = 2 * plan.seq if plan is not None and seq is None else 0
            plan = derive(plain, dec, seed + 7919 * draw, seq, prefill, at_least=longer)
            ref = api.run(plain, plan.inputs, weights)
            picked = [(node, _hit(ref[f"{_ROUTER}{i}"], node, experts), experts)
                      for i, (node, experts) in enumerate(routers)]
            if all(len(hit) == experts for _, hit, experts in picked):
                break
    finally:
        for i in range(len(routers)):
            del plain.outputs[f"{_ROUTER}{i}"]
    if routers:
        full = sum(len(hit) == e for _, hit, e in picked)
        sizes = ", ".join(sorted({f"{e} experts" for *_, e in picked}))
        plan.features += [f"every expert hit in {full}/{len(routers)} routers ({sizes})"] * \
            bool(full)
        plan.gaps += [f"router `{n.scope or n}` picked {len(hit)}/{e} experts in {DRAWS} "
                      "draws of ids" for n, hit, e in picked if len(hit) < e]
    plan.features += _softcaps(plain)
    return plan, {k: ref[k] for k in outputs}


def _routers(graph: Graph) -> list[tuple[Node, int]]:
    """The nodes that pick experts: a top-k over a mixture's expert axis, or its gates."""
    counts = {int(m["experts"]) for m in graph.meta.get("moe", ())}
    return [(n, n.inputs[0].type.shape[-1]) for n in graph.nodes()
            if n.kind == "op" and n.op in ("topk_indices", "moe_gates") and
            n.inputs[0].type.shape[-1] in counts]


def _hit(value: np.ndarray, node: Node, experts: int) -> set[int]:
    if node.op == "moe_gates":  # [..., E] gates, zero where not picked
        return {int(e) for e in np.flatnonzero(value.reshape(-1, experts).any(axis=0))}
    return {int(e) for e in np.unique(value)}


def _softcaps(plain: Graph) -> list[str]:
    """The softcaps c of `tanh(x / c) * c` (attention scores, final logits), for the report:
    they show at any length, so they only need listing."""
    caps = sorted({n.inputs[1].value.item() for n in plain.nodes() if n.kind == "op" and
                   n.op == "div" and n.inputs[1].kind == "const" and n.inputs[1].value.size == 1
                   and any(u.op == "tanh" for u in plain.users(n))})
    return [f"softcap {c:g} (tanh(x / c) * c)" for c in caps]


def _incremental(cache, weights, plan: Plan, backend: str):
    """Prefill K tokens, then one a step: (the first output, real tokens [B, T])."""
    from archc.kvcache import Seq2SeqSession, Session

    enc, dec = cache
    feeds = plan.inputs
    if enc is None:
        s = Session(dec, weights, backend)
        s.context_length = None  # verify runs past it on purpose (dynamic rope): no warning
        ids, mask = feeds["input_ids"], feeds.get("attention_mask")
    else:
        s = Seq2SeqSession(enc, dec, weights, backend)
        s.encode(feeds["input_ids"], feeds.get("attention_mask"))
        ids, mask = feeds["decoder_input_ids"], feeds.get("decoder_attention_mask")
    mask = np.ones_like(ids) if mask is None else mask
    k = plan.prefill
    outs = [s.prefill(ids[:, :k], mask[:, :k])]
    outs += [s.step(ids[:, t:t + 1], mask[:, t:t + 1]) for t in range(k, ids.shape[1])]
    return np.concatenate(outs, axis=1), mask.astype(bool)


# ---------------------------------------------------------------- the command
def cmd_verify(args) -> int:
    module = api.parse_file(args.spec)
    report = verify(module, args.model, args.weights, args.seed, getattr(args, "tol", TOL),
                    strict=args.strict)
    sys.stdout.write(json.dumps(report.as_json(), indent=2) + "\n" if args.json
                     else report.render())
    if not report.passed:
        raise ArchcError([report.diagnostic()])
    return 0
