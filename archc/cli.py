"""The `archc` command line. Bad input prints diagnostics and exits 1; never a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from archc import api
from archc.diagnostics import ArchcError, Diagnostic, render

USAGE_ERROR = 2


def _graph(args, level: int | None = None, cache: bool = False):
    module = api.parse_file(args.spec)
    from archc.lower import lower

    graph = lower(module, getattr(args, "model", None), cache=cache)
    return api.optimize(graph, args.opt if level is None else level)


def _weights(args, graph):
    from archc.weights import init_params, load_weights

    return load_weights(graph, args.weights) if args.weights else init_params(graph, args.seed)


def cmd_check(args) -> int:
    graph = _graph(args, level=0)
    from archc.ir.verify import verify

    verify(graph)
    print(f"{args.spec}: ok (model `{graph.name}`, {len(graph)} nodes, "
          f"{len(graph.params)} parameter tensors)")
    return 0


def cmd_dump(args) -> int:
    from archc.ir.printer import print_graph
    from archc.lower import lower
    from archc.passes import PASSES, PIPELINES, run_pipeline

    graph = lower(api.parse_file(args.spec), args.model)
    if args.after:
        if args.after not in PASSES:
            raise ArchcError([Diagnostic("E0400", f"unknown pass `{args.after}`",
                                         help=f"passes: {', '.join(PASSES)}")])
        pipeline = PIPELINES[2]
        upto = next(i for i, p in enumerate(pipeline) if p.__name__ == args.after)
        graph = run_pipeline(graph, pipeline[: upto + 1], fixpoint_steps=1)
    else:
        graph = api.optimize(graph, args.opt)
    sys.stdout.write(print_graph(graph))
    return 0


def cmd_compile(args) -> int:
    from archc.backends.onnx_export import export_onnx, model_bytes

    graph = _graph(args, cache=args.kv_cache)
    if args.kv_cache and "decoder_input_ids" in graph.inputs:
        from archc.kvcache import split_seq2seq

        weights = _weights(args, graph)
        stem = args.output[:-5] if args.output.endswith(".onnx") else args.output
        for part, g in zip(("encoder", "decoder_with_past"),
                           split_seq2seq(api.parse_file(args.spec), args.model)):
            path = f"{stem}.{part}.onnx"
            Path(path).write_bytes(model_bytes(export_onnx(g, {k: weights[k] for k in g.params})))
            print(f"wrote {path}")
        return 0
    model = export_onnx(graph, _weights(args, graph))
    Path(args.output).write_bytes(model_bytes(model))
    print(f"wrote {args.output} ({len(model.graph.node)} ONNX nodes, opset "
          f"{model.opset_import[0].version})")
    return 0


def random_inputs(graph, batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded inputs: ids within the table they index, masks of ones (a global-attention mask
    flags only the first token), floats from N(0, 1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, node in graph.inputs.items():
        shape = tuple(batch if d == "batch" else seq if isinstance(d, str) else d
                      for d in node.type.shape)
        if node.type.dtype == "int64":
            if "mask" in name:
                out[name] = np.ones(shape, np.int64)
                if name.startswith("global"):
                    out[name][:, 1:] = 0
                continue
            rows = [u.inputs[0].type.shape[0] for u in graph.users(node) if u.op == "gather"
                    and u.inputs[1] is node]
            out[name] = rng.integers(0, min(rows) if rows else 2, shape, dtype=np.int64)
        else:
            out[name] = rng.standard_normal(shape).astype(np.float32)
    return out


def cmd_run(args) -> int:
    graph = _graph(args, cache=args.incremental is not None)
    if args.inputs:
        with np.load(args.inputs) as f:
            inputs = {k: f[k] for k in f.files}
        missing = [n for n in graph.inputs if n not in inputs and not n.startswith("past_")]
        if missing:
            raise ArchcError([Diagnostic("E0303", f"`{args.inputs}` lacks graph input "
                                         f"`{missing[0]}`",
                                         help=f"the graph inputs are {', '.join(graph.inputs)}")])
    else:
        inputs = random_inputs(graph, args.batch, args.seq, args.seed)
        inputs = {k: v for k, v in inputs.items() if not k.startswith("past_")}
    if args.incremental is not None and "decoder_input_ids" in graph.inputs:
        from archc.kvcache import seq2seq_incremental_logits

        k, n = args.incremental, inputs["decoder_input_ids"].shape[1]
        if not 0 < k <= n:
            raise ArchcError([Diagnostic("E0304", f"`--incremental {k}` must be in 1..{n} "
                                         "(the decoder length)")])
        outputs = {"logits": seq2seq_incremental_logits(
            api.parse_file(args.spec), _weights(args, graph), inputs, k, args.backend)}
    elif args.incremental is not None:
        from archc.kvcache import incremental_logits

        ids = inputs["input_ids"]
        if not 0 < args.incremental <= ids.shape[1]:
            raise ArchcError([Diagnostic("E0304", f"`--incremental {args.incremental}` must be "
                                         f"in 1..{ids.shape[1]} (the sequence length)")])
        outputs = {"logits": incremental_logits(graph, _weights(args, graph), ids,
                                                inputs.get("attention_mask"), args.incremental,
                                                args.backend)}
    else:
        outputs = api.run(graph, inputs, _weights(args, graph), backend=args.backend)
    np.savez(args.out, **outputs)
    for name, value in outputs.items():
        print(f"{name}: {value.dtype}{list(value.shape)} mean {value.mean():.6g} "
              f"std {value.std():.6g}")
    print(f"wrote {args.out}")
    return 0


def cmd_generate(args) -> int:
    from archc.kvcache import generate

    graph = _graph(args, cache=True)
    try:
        ids = np.array([[int(t) for t in args.ids.split(",")]], np.int64)
    except ValueError:
        raise ArchcError([Diagnostic("E0305", f"`--ids {args.ids}` is not a comma-separated "
                                     "list of token ids")]) from None
    if "decoder_input_ids" in graph.inputs:  # encoder-decoder: --ids is the encoder's input
        from archc.kvcache import generate_seq2seq

        out = generate_seq2seq(api.parse_file(args.spec), _weights(args, graph), ids,
                               args.steps, args.start, args.backend)
    else:
        out = generate(graph, _weights(args, graph), ids, args.steps, args.backend)
    print(",".join(str(t) for t in out[0]))
    return 0


def cmd_stats(args) -> int:  # counts come from the lowered graph: no passes, no weights
    from archc.lower import lower
    from archc.stats import format_stats, param_stats

    stats = param_stats(lower(api.parse_file(args.spec), args.model))
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


def cmd_import_hf(args) -> int:
    from archc.hf import import_hf

    result = import_hf(args.checkpoint, args.output, config_only=args.config_only)
    wrote = ["model.arch"] + ([] if result.weights is None else ["model.safetensors"])
    print(f"wrote {', '.join(f'{args.output}/{w}' for w in wrote)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="archc", description="architecture compiler for "
                                "transformer models")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, fn, help: str, opt: bool = True):
        c = sub.add_parser(name, help=help)
        c.add_argument("spec", help="an .arch file")
        c.add_argument("--model", help="which model, when the file has several")
        if opt:
            c.add_argument("-O", dest="opt", type=int, choices=(0, 1, 2), default=1,
                           help="optimisation level (default 1)")
        c.set_defaults(fn=fn)
        return c

    command("check", cmd_check, "parse, check, lower and infer shapes", opt=False)
    d = command("dump", cmd_dump, "print the IR text")
    d.add_argument("--after", help="stop after this pass")
    c = command("compile", cmd_compile, "export an ONNX model")
    c.add_argument("-o", "--output", required=True)
    c.add_argument("--kv-cache", action="store_true", help="export the decoder-with-past "
                   "graph (past_key_values.* inputs, present.* outputs)")
    r = command("run", cmd_run, "run on the NumPy or onnxruntime backend")
    for cmd in (c, r):
        cmd.add_argument("--weights", help="a .safetensors file keyed by archc parameter names")
        cmd.add_argument("--seed", type=int, default=0, help="seed of the random init and inputs")
    r.add_argument("--inputs", help="an .npz with the graph inputs by name")
    r.add_argument("--batch", type=int, default=1)
    r.add_argument("--seq", type=int, default=8)
    r.add_argument("--out", required=True, help="an .npz to write every output to")
    r.add_argument("--backend", choices=("numpy", "onnxruntime"), default="numpy")
    r.add_argument("--incremental", type=int, metavar="K", help="prefill K tokens, then decode "
                   "one token at a time through the KV cache; writes the concatenated logits")
    gen = command("generate", cmd_generate, "greedy decoding from token ids with the KV cache")
    gen.add_argument("--ids", required=True, help="prompt token ids, e.g. 1,2,3")
    gen.add_argument("--steps", type=int, default=8)
    gen.add_argument("--start", type=int, default=0, help="encoder-decoders: the decoder's "
                     "start token id (T5: 0, BART: 2)")
    gen.add_argument("--weights")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--backend", choices=("numpy", "onnxruntime"), default="numpy")
    h = sub.add_parser("import-hf", help="import a Hugging Face checkpoint folder")
    h.add_argument("checkpoint", help="a folder with config.json and model.safetensors")
    h.add_argument("-o", "--output", required=True, help="folder to write model.arch (and "
                   "model.safetensors) to")
    h.add_argument("--config-only", action="store_true", help="read only config.json; write "
                   "only the spec")
    h.set_defaults(fn=cmd_import_hf)
    s = command("stats", cmd_stats, "exact parameter counts", opt=False)
    s.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ArchcError as e:
        sys.stderr.write(e.render())
        return 1
    except FileNotFoundError as e:
        sys.stderr.write(render(Diagnostic("E0004", f"cannot read `{e.filename}`: no such file")))
        return 1
    except OSError as e:
        sys.stderr.write(render(Diagnostic("E0004", f"cannot read or write a file: {e}")))
        return 1


if __name__ == "__main__":
    sys.exit(main())
