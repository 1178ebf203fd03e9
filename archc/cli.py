"""The `archc` command line. Bad input prints diagnostics and exits 1; never a traceback.

Exit codes: 0 done, 1 a diagnostic about the input (or a resource limit), 2 a usage error
(argparse), 70 an internal error (a bug in archc: the message says so, and `ARCHC_DEBUG=1`
shows the traceback), 130 interrupted. Every file is written atomically (archc.files).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np

from archc import api
from archc.cli_view import add_commands, lazy, spec_module
from archc.diagnostics import ArchcError, Diagnostic, did_you_mean, render
from archc.files import write_file
from archc.inputs import check_shapes, load_npz, random_inputs, validate
from archc.weights import ArchcWarning

USAGE_ERROR = 2
INTERNAL_ERROR = 70  # sysexits' EX_SOFTWARE


def _graph(args, level: int | None = None, cache: bool = False):
    from archc.lower import lower

    graph = lower(spec_module(args), getattr(args, "model", None), cache=cache)
    return api.optimize(graph, args.opt if level is None else level)


def _weights(args, graph, lazy: bool = False):
    """`--weights`, or the seeded init (`lazy`: drawn one tensor at a time as it is read)."""
    from archc.weights import init_params, load_weights

    if args.weights:
        return load_weights(graph, args.weights, strict=args.strict)
    return init_params(graph, args.seed, lazy=lazy)


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

    if args.block:
        return _dump_block(args.block)
    if args.spec is None:
        raise ArchcError([Diagnostic("E0400", "`archc dump` needs a spec or `--block NAME`")])
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


def _dump_block(name: str) -> int:
    from archc.lower import library_block, stdlib

    found = library_block(name)
    if found is None:
        names = [b.name for m in stdlib() for b in m.blocks]
        raise ArchcError([Diagnostic("E0400", f"no library block `{name}`",
                                     help=did_you_mean(name, names))])
    block, text = found
    sys.stdout.write(f"# {block.span.file}\n{text}\n")
    return 0


def _compile_flags(args) -> None:
    """One destination, not empty; no flag that would be ignored: quantization options
    without `--weights-dtype int8|int4`, `--explain` away from `-o`."""
    def usage(message: str, help: str | None = None):
        return ArchcError([Diagnostic("E0400", message, help=help)])
    dests = [(f, v) for f, v in (("-o", args.output), ("--genai", args.genai),
                                 ("--triton", args.triton)) if v is not None]
    quant = [f for f in ("--block-size", "--symmetric", "--activations", "--float-embeddings")
             if getattr(args, f[2:].replace("-", "_")) not in (None, False)]
    if not dests or any(not v for _, v in dests):
        raise usage("`archc compile` needs `-o FILE.onnx` (or `--genai DIR` or `--triton DIR`)"
                    + ("" if not dests else ", not an empty path"))
    if len(dests) > 1:
        raise usage(f"`{dests[0][0]}` and `{dests[1][0]}` cannot be given together: compile "
                    "writes one of them", help="run `archc compile` once for each")
    if quant and args.weights_dtype not in ("int8", "int4"):
        raise usage(f"`{quant[0]}` applies only to `--weights-dtype int8` or `int4`, not "
                    f"{args.weights_dtype}", help=f"add `--weights-dtype int8`, or leave out "
                    f"`{quant[0]}`")
    if args.explain and args.output is None:
        raise usage("`--explain` applies only to `-o FILE.onnx`", help="leave out `--explain`")


def cmd_compile(args) -> int:
    from archc.backends.onnx_save import save_models

    _compile_flags(args)
    if args.dtype == "float16":  # the graph computes in float16 (archc/backends/onnx_fp16.py)
        from archc.backends.onnx_fp16 import save_float16 as save_models
    if args.genai:  # the KV-cache decoder and its genai_config.json, in one folder
        return lazy("archc.serving", "cmd_genai")(args)
    if args.triton:  # a Triton model repository
        return lazy("archc.serving", "cmd_triton")(args)
    graph = _graph(args, cache=args.kv_cache)
    if args.explain:
        from archc.passes.fusions import explain

        sys.stderr.write(explain(graph))
    weights = _weights(args, graph, lazy=True)
    if args.kv_cache and "decoder_input_ids" in graph.inputs:
        from archc.kvcache import split_seq2seq

        stem = args.output[:-5] if args.output.endswith(".onnx") else args.output
        parts = zip(("encoder", "decoder_with_past"), split_seq2seq(spec_module(args), args.model))
        # both or neither: never a new encoder beside an old decoder
        _, files = save_models([(*_stored(args, g, weights), f"{stem}.{part}.onnx")
                                for part, g in parts])
        for path in files:
            print(f"wrote {path}")
        return 0
    (model,), files = save_models([(*_stored(args, graph, weights), args.output)])
    extra = f", weights in {files[1]}" if len(files) > 1 else ""
    print(f"wrote {args.output} ({len(model.graph.node)} ONNX nodes, opset "
          f"{model.opset_import[0].version}{extra})")
    return 0


def _stored(args, graph, weights):
    """The graph and its weights as they are stored in the file: `--weights-dtype`
    (`float16` is what `--dtype float16` stores anyway)."""
    if args.weights_dtype == "float32" or args.weights_dtype == getattr(args, "dtype", None):
        return graph, weights
    from archc.quantize import quantize

    return quantize(graph, weights, args.weights_dtype, block=args.block_size or 32,
                    symmetric=args.symmetric, embeddings=not args.float_embeddings,
                    accuracy_level={"int8": 4, "float32": 0}[args.activations or "int8"])


def cmd_run(args) -> int:
    graph = _graph(args, cache=args.incremental is not None)
    full = graph if args.incremental is None else _graph(args, level=0)
    if args.inputs:
        states = full.meta["states"] if args.incremental is not None else ()
        inputs = validate(full, load_npz(args.inputs), f"`{args.inputs}`", states)
    else:
        inputs = random_inputs(full, args.batch, args.seq, args.seed)
    weights = _weights(args, graph)
    if args.incremental is not None and "decoder_input_ids" in graph.inputs:
        from archc.kvcache import seq2seq_incremental_logits

        k, n = args.incremental, inputs["decoder_input_ids"].shape[1]
        if not 0 < k <= n:
            raise ArchcError([Diagnostic("E0304", f"`--incremental {k}` must be in 1..{n} "
                                         "(the decoder length)")])
        outputs = {"logits": seq2seq_incremental_logits(spec_module(args), weights, inputs, k,
                                                        args.backend)}
    elif args.incremental is not None:
        from archc.kvcache import incremental_logits

        ids = inputs["input_ids"]
        if not 0 < args.incremental <= ids.shape[1]:
            raise ArchcError([Diagnostic("E0304", f"`--incremental {args.incremental}` must be "
                                         f"in 1..{ids.shape[1]} (the sequence length)")])
        outputs = {"logits": incremental_logits(graph, weights, ids,
                                                inputs.get("attention_mask"), args.incremental,
                                                args.backend)}
    else:
        outputs = api.run(graph, inputs, weights, backend=args.backend)

    def save(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **outputs)

    write_file(args.out, save)
    for name, value in outputs.items():
        print(f"{name}: {value.dtype}{list(value.shape)} mean {value.mean():.6g} "
              f"std {value.std():.6g}")
    print(f"wrote {args.out}")
    return 0


def cmd_generate(args) -> int:
    from archc.kvcache import generate

    ids = _token_ids(args.ids)
    graph = _graph(args, cache=True)
    seq2seq = "decoder_input_ids" in graph.inputs
    # the whole run's inputs, checked on the plain graph: ids in the vocabulary, and the
    # prompt plus every generated token within the position table; their sizes first, so
    # `--steps 1000000000` is refused by arithmetic, not by the OOM killer
    plain, total = _graph(args, level=0), args.steps + 1 if seq2seq else ids.shape[1] + args.steps
    check_shapes(plain, {"input_ids": ids.shape, "decoder_input_ids": (1, total)} if seq2seq
                 else {"input_ids": (1, total)}, "`--ids` and `--steps`")
    grown = np.zeros((1, total), np.int64)
    grown[0, :1] = args.start
    feeds = {"input_ids": ids, "decoder_input_ids": grown} if seq2seq else \
        {"input_ids": np.concatenate([ids, grown[:, ids.shape[1]:]], axis=1)}
    validate(plain, feeds, "`--ids`, `--start` and `--steps`")
    if seq2seq:  # encoder-decoder: --ids is the encoder's input
        from archc.kvcache import generate_seq2seq

        out = generate_seq2seq(spec_module(args), _weights(args, graph), ids, args.steps,
                               args.start, args.backend)
    else:
        out = generate(graph, _weights(args, graph), ids, args.steps, args.backend)
    print(",".join(str(t) for t in out[0]))
    return 0


def _token_ids(text: str) -> np.ndarray:
    try:
        ids = [int(t) for t in text.split(",")]
    except ValueError:
        raise ArchcError([Diagnostic("E0305", f"`--ids {text}` is not a comma-separated "
                                     "list of token ids")]) from None
    big = next((i for i in ids if not -2**63 <= i < 2**63), None)
    if big is not None:
        raise ArchcError([Diagnostic("E0315", f"`--ids`: token id {big} is beyond int64")])
    return np.array([ids], np.int64)


def cmd_import_hf(args) -> int:
    from archc.hf import import_hf

    result = import_hf(args.checkpoint, args.output, config_only=args.config_only,
                       strict=args.strict)
    wrote = ["model.arch"] + ([] if result.weights is None else ["model.safetensors"])
    print(f"wrote {', '.join(f'{args.output}/{w}' for w in wrote)}")
    return 0


def _count(low: int):
    """An argparse type: an integer >= `low`, else a usage error that says so."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"`{text}` is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="archc", description="architecture compiler for "
                                "transformer models")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, fn, help: str, opt: bool = True, spec: str | None = None):
        c = sub.add_parser(name, help=help)
        c.add_argument("spec", help="an .arch file", nargs=spec)
        c.add_argument("--model", help="which model, when the file has several")
        if opt:
            c.add_argument("-O", dest="opt", type=int, choices=(0, 1, 2), default=1,
                           help="optimisation level (default 1)")
        c.set_defaults(fn=fn)
        return c

    def weights(c):
        c.add_argument("--weights", help="a .safetensors file keyed by archc parameter names")
        c.add_argument("--seed", type=_count(0), default=0, help="seed of the random init "
                       "and inputs")
        c.add_argument("--strict", action="store_true", help="NaN or infinite weights are an "
                       "error, not a warning")

    command("check", cmd_check, "parse, check, lower and infer shapes", opt=False)
    d = command("dump", cmd_dump, "print the IR text, or a library block's source", spec="?")
    d.add_argument("--after", help="stop after this pass")
    d.add_argument("--block", help="print this standard-library block's .arch source")
    c = command("compile", cmd_compile, "export an ONNX model")
    c.add_argument("-o", "--output", help="the .onnx file to write")
    c.add_argument("--kv-cache", action="store_true", help="export the decoder-with-past "
                   "graph (past_key_values.* inputs, present.* outputs)")
    c.add_argument("--explain", action="store_true", help="print the fusion rules that fired "
                   "and, for the others, the first reason why not")
    c.add_argument("--weights-dtype", choices=("float32", "float16", "int8", "int4"),
                   default="float32", help="store matmul weights in this type (int8/int4: "
                   "block-wise weight-only quantization)")
    c.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="what the ONNX graph computes in (float16: weights, activations and "
                   "the KV cache; inputs and outputs stay float32)")
    c.add_argument("--block-size", type=int, choices=(32, 64, 128),
                   help="int8/int4 quantization block size (default 32)")
    c.add_argument("--symmetric", action="store_true", help="int8/int4 without zero points")
    c.add_argument("--activations", choices=("int8", "float32"),
                   help="int8/int4: what MatMulNBits computes the activations in (int8, the "
                   "default: fastest; float32: matches the NumPy backend to 1e-4)")
    c.add_argument("--float-embeddings", action="store_true", help="int8/int4: keep "
                   "embedding tables float32 (a decode step reads one row of them)")
    c.add_argument("--genai", metavar="DIR", help="write DIR/model.onnx with the KV cache and "
                   "the genai_config.json that onnxruntime-genai reads (decoders)")
    c.add_argument("--triton", metavar="DIR", help="write a Triton Inference Server model "
                   "repository (config.pbtxt and 1/model.onnx per model) to DIR")
    r = command("run", cmd_run, "run on the NumPy or onnxruntime backend")
    for cmd in (c, r):
        weights(cmd)
    r.add_argument("--inputs", help="an .npz with the graph inputs by name")
    r.add_argument("--batch", type=_count(1), default=1)
    r.add_argument("--seq", type=_count(1), default=8)
    r.add_argument("--out", required=True, help="an .npz to write every output to")
    r.add_argument("--backend", choices=("numpy", "onnxruntime"), default="numpy")
    r.add_argument("--incremental", type=_count(1), metavar="K", help="prefill K tokens, then "
                   "decode one token at a time through the KV cache; writes the concatenated "
                   "logits")
    gen = command("generate", cmd_generate, "greedy decoding from token ids with the KV cache")
    gen.add_argument("--ids", required=True, help="prompt token ids, e.g. 1,2,3")
    gen.add_argument("--steps", type=_count(0), default=8)
    gen.add_argument("--start", type=_count(0), default=0, help="encoder-decoders: the "
                     "decoder's start token id (T5: 0, BART: 2)")
    weights(gen)
    gen.add_argument("--backend", choices=("numpy", "onnxruntime"), default="numpy")
    h = sub.add_parser("import-hf", help="import a Hugging Face checkpoint folder")
    h.add_argument("checkpoint", help="a folder with config.json and model.safetensors")
    h.add_argument("-o", "--output", required=True, help="folder to write model.arch (and "
                   "model.safetensors) to")
    h.add_argument("--config-only", action="store_true", help="read only config.json; write "
                   "only the spec")
    h.add_argument("--strict", action="store_true", help="NaN or infinite weights are an "
                   "error, not a warning")
    h.set_defaults(fn=cmd_import_hf)
    add_commands(sub, command, _count)
    ver = command("verify", lazy("archc.verify", "cmd_verify"), "NumPy -O0 against "
                  "onnxruntime -O2 on inputs that make every feature observable", opt=False)
    weights(ver)
    ver.add_argument("--json", action="store_true", help="print the report as JSON")
    ver.add_argument("--tol", type=float, default=1e-4, help="the largest max abs diff that "
                     "passes (default 1e-4)")
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if isinstance(message, ArchcWarning):
        sys.stderr.write(render(message.diagnostic))
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("always", ArchcWarning)
        warnings.showwarning = _show_warning
        try:
            return args.fn(args)
        except ArchcError as e:
            sys.stderr.write(e.render())
            return 1
        except FileNotFoundError as e:
            sys.stderr.write(render(Diagnostic("E0004", f"cannot read `{e.filename}`: no such "
                                               "file")))
            return 1
        except MemoryError:
            sys.stderr.write(render(Diagnostic("E0332", "out of memory", help="a smaller "
                                               "`--batch`/`--seq` or model; ARCHC_MAX_BYTES "
                                               "sets the budget archc checks before "
                                               "allocating")))
            return 1
        except OSError as e:
            where = f" `{e.filename}`" if e.filename else ""
            sys.stderr.write(render(Diagnostic("E0004", f"cannot read or write{where}: "
                                               f"{(e.strerror or str(e)).lower()}")))
            return 1
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            return 130
        except Exception as e:  # a bug in archc: say so in one located line, not a traceback
            if os.environ.get("ARCHC_DEBUG"):
                raise
            sys.stderr.write(render(Diagnostic(
                "E0900", f"internal error: {type(e).__name__}: {str(e)[:500]}",
                notes=("this is a bug in archc, not in your input",),
                help="run with ARCHC_DEBUG=1 for the traceback, and report it")))
            return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
