"""The `archc` commands that look at a model rather than run it: explain, stats, viz, diff
and fmt, with their arguments. `archc.cli` adds them to its parser."""

from __future__ import annotations

import importlib
import json
import sys

from archc import api
from archc.diagnostics import ArchcError, Diagnostic, did_you_mean
from archc.files import write_file


def spec_module(args):
    """The parsed `args.spec`, parsed once per command (archc.cli shares it)."""
    if getattr(args, "module", None) is None:
        args.module = api.parse_file(args.spec)
    return args.module


def cmd_stats(args) -> int:  # counts and FLOPs from the lowered graph; activations after -O
    from archc.lower import lower
    from archc.stats import format_stats, full_stats

    stats = full_stats(lower(spec_module(args), args.model), args.seq, args.batch,
                       args.opt)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


def cmd_explain(args) -> int:
    from archc.explain import as_json, explain, render
    from archc.lower import lower

    if args.seq < 1 or args.depth < 1:
        raise ArchcError([Diagnostic("E0400", "`--seq` and `--depth` must be at least 1")])
    lines = explain(lower(spec_module(args), args.model), args.seq)
    sys.stdout.write(json.dumps(as_json(lines), indent=2) + "\n" if args.json
                     else render(lines, args.depth))
    return 0


def cmd_viz(args) -> int:
    from archc import viz
    from archc.lower import lower

    if not args.output.endswith((".svg", ".html")):
        raise ArchcError([Diagnostic("E0400", f"`-o {args.output}`: write a .svg or .html file")])
    if args.after and not args.ir:
        raise ArchcError([Diagnostic("E0400", "`--after` draws the IR: it needs `--ir`")])
    page = args.output.endswith(".html")
    graph = lower(spec_module(args), args.model)
    if args.ir:
        graph = ir_after(graph, args.after)
        text = viz.html_ir(graph) if page else viz.svg_ir(graph)
    else:
        text = viz.html(graph) if page else viz.svg(graph)
    write_file(args.output, text.encode("utf-8"))
    print(f"wrote {args.output}")
    return 0


def ir_after(graph, after: str | None):
    """The graph after the pass `after` of the -O2 pipeline run once, or after -O1."""
    from archc.passes import PASSES, PIPELINES, run_pipeline

    if after is None:
        return api.optimize(graph, 1)
    if after not in PASSES:
        raise ArchcError([Diagnostic("E0400", f"unknown pass `{after}`",
                                     help=did_you_mean(after, PASSES) or
                                     f"passes: {', '.join(PASSES)}")])
    upto = list(PASSES).index(after)
    return run_pipeline(graph, PIPELINES[2][: upto + 1], fixpoint_steps=1)


def lazy(module: str, name: str):
    """A command function imported when it runs, so `archc --help` stays fast."""
    def run(args) -> int:
        return getattr(importlib.import_module(module), name)(args)

    return run


def add_commands(sub, command, count) -> None:
    """Add explain, viz, stats, diff and fmt to the subparsers `sub`; `command` is
    `archc.cli`'s helper that adds a spec command, `count` its integer argument type."""
    x = command("explain", cmd_explain, "the spec's layers with shapes, parameters and "
                "FLOPs per token", opt=False)
    x.add_argument("--seq", type=int, default=128, help="sequence length for FLOPs")
    x.add_argument("--depth", type=int, default=2, help="how many levels of nesting to show")
    x.add_argument("--json", action="store_true")
    v = command("viz", cmd_viz, "an architecture diagram (SVG, or HTML around it)", opt=False)
    v.add_argument("-o", "--output", required=True, help="a .svg or .html file to write")
    v.add_argument("--ir", action="store_true", help="draw the IR's dataflow graph, grouped "
                   "by layer, instead of the block diagram")
    v.add_argument("--after", help="with --ir: the graph after this pass (default: -O1's)")
    s = command("stats", cmd_stats, "exact parameter counts, FLOPs per token, weight, KV-cache "
                "and peak activation bytes")
    s.add_argument("--seq", type=count(1), default=2048, help="context length (default 2048)")
    s.add_argument("--batch", type=count(1), default=1, help="batch for the KV cache and "
                   "activations (default 1)")
    s.add_argument("--json", action="store_true")
    d = command("diff", lazy("archc.diff", "cmd_diff"), "what changed between two designs: "
                "layers, options, parameters, FLOPs and KV cache", opt=False)
    d.add_argument("other", help="the second .arch file")
    d.add_argument("--other-model", help="which model of the second file")
    d.add_argument("--seq", type=count(1), default=2048, help="context length for FLOPs and "
                   "the KV cache (default 2048)")
    d.add_argument("--json", action="store_true")
    f = sub.add_parser("fmt", help="format .arch files in place (one canonical layout)")
    f.add_argument("files", nargs="+", help=".arch files")
    f.add_argument("--check", action="store_true", help="change nothing; exit 1 and name "
                   "the files that are not formatted")
    f.add_argument("--diff", action="store_true", help="change nothing; print a unified diff")
    f.set_defaults(fn=lazy("archc.fmt", "cmd_fmt"))
