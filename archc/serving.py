"""Serving: a folder onnxruntime-genai loads as is, and a Triton Inference Server model
repository. `archc compile --genai DIR` and `archc compile --triton DIR`; docs/serving.md.

onnxruntime-genai (`cmd_genai`) runs a decoder through its own KV-cache loop. It reads
DIR/genai_config.json, which names the graph's inputs and outputs, so archc's names stay as
they are: `input_ids`, `attention_mask` (past and new tokens), `past_key_values.N.key/value`
[batch, kv_heads, past, head_size] in, `logits` and `present.N.key/value` (past ++ new) out.
The cache is concatenated, not written in place, so `past_present_share_buffer` is false.
Refused, with the reason: encoder-decoders, specs without a KV cache, any other state (a
memory, a running sum), a bounded (sliding-window) cache, layers with different cache shapes,
and inputs or outputs genai does not feed or read.

What a spec's graph does not hold (the tokens that start and end a text, and the context
length of a rotary model) a model states in a `serving` statement, which `archc import-hf`
writes from the checkpoint's config.json and a user may write by hand:

    serving bos_token_id = 1, eos_token_id = [2, 32000], context_length = max_positions

Lowering evaluates its values like a `let`'s, checks them (`check_fact`) and records them in
`graph.meta["serving"]` (the value spans in `graph.meta["serving_at"]`); it changes no IR.
The `# serving: {...}` comment that came before it is refused with the statement to write
(`legacy_comments`). A learned position table bounds the context too: the context length is
the smaller of the statement's and the longest sequence the table covers (found by
`archc.inputs.validate`).

Triton (`cmd_triton`) serves ONNX files with its onnxruntime backend: each model is a folder
`<name>/config.pbtxt` + `<name>/1/model.onnx`. The config is written from the exported ONNX
model itself, so its inputs and outputs cannot drift from the file's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from archc.diagnostics import ArchcError, Diagnostic, Span
from archc.ir.graph import Graph

GENAI_CODE = "E0600"  # the model is not one onnxruntime-genai can serve
FACTS_CODE = "E0601"  # a bad `serving` statement or an old `# serving:` comment; a fact missing
TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")
FACT_KEYS = (*TOKEN_KEYS, "context_length")
_LEGACY = re.compile(r"^[ \t]*(# serving:(.*))$", re.MULTILINE)
_HF_CONTEXT = ("max_position_embeddings", "n_positions", "n_ctx")  # first one present wins
_PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# ---------------------------------------------------------------- the `serving` statement
def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_fact(key: str, value) -> str | None:
    """What serving fact `key` (one of FACT_KEYS) should be, when `value` (a compile-time
    value: an int, or a tuple or list of them) is not that; None when it is."""
    if key == "context_length":  # genai and Triton read int32
        return None if _int(value) and 0 < value < 2**31 else "a positive integer below 2^31"
    ids = value if isinstance(value, tuple | list) else (value,)
    ok = bool(ids) and all(_int(i) and 0 <= i < 2**31 for i in ids)
    return None if ok else "a token id (an integer in 0..2^31-1) or a non-empty list of them"


def literal(v) -> str | None:
    """A compile-time or JSON value as `.arch` source (`[2, 32000]`, `true`); None for a value
    no literal writes (a tensor, a dict)."""
    if v is None or isinstance(v, bool):
        return {None: "none", True: "true", False: "false"}[v]
    if isinstance(v, int | float):
        return repr(v) if v == v and v not in (float("inf"), float("-inf")) else None
    if isinstance(v, str):
        return f'"{v}"' if '"' not in v and "\n" not in v else None
    if isinstance(v, tuple | list):
        items = [literal(i) for i in v]
        return None if None in items else f"[{', '.join(items)}]"
    return None


def statement(facts: dict) -> str | None:
    """`serving k = v, ...` for `facts` in their order; None when there are none or one cannot
    be written."""
    parts = [f"{k} = {literal(v)}" for k, v in facts.items()]
    ok = facts and all(_NAME.fullmatch(str(k)) for k in facts) and \
        all(literal(v) is not None for v in facts.values())
    return "serving " + ", ".join(parts) if ok else None


def hf_facts(config: dict) -> dict:
    """The serving facts of a Hugging Face config.json that `archc import-hf` writes into a
    decoder spec (well-formed values only; a null token id is left out)."""
    facts = {k: config[k] for k in TOKEN_KEYS if check_fact(k, config.get(k)) is None}
    ctx = next((config[k] for k in _HF_CONTEXT if config.get(k) is not None), None)
    if check_fact("context_length", ctx) is None:
        facts["context_length"] = ctx
    return facts


def legacy_comments(path: str, source: str, model: str) -> list[Diagnostic]:
    """An error for each `# serving: {...}` comment, the form before the statement: a comment
    carries no meaning, so it would be dropped silently. The help gives the statement."""
    out = []
    for m in _LEGACY.finditer(source):
        try:
            data = json.loads(m.group(2))
        except json.JSONDecodeError:
            data = None
        text = statement(data) if isinstance(data, dict) else None
        fix = f"`{text}`" if text else "a statement such as `serving eos_token_id = 2, " \
            "context_length = 4096`"
        out.append(Diagnostic(FACTS_CODE, "the `# serving:` comment is no longer read",
                              Span(path, m.start(1), m.end(1)), "a comment carries no meaning",
                              help=f"replace it with {fix} in the body of `model {model}` "
                              "(docs/serving.md)"))
    return out


# ---------------------------------------------------------------- what genai can serve
def _refuse(name: str, why: str, help: str | None = None) -> ArchcError:
    return ArchcError([Diagnostic(GENAI_CODE, f"onnxruntime-genai cannot serve `{name}`: {why}",
                                  help=help)])


def keeps_cache(plain: Graph) -> bool:
    """Whether a spec has a KV cache or a state, read off its plain graph: lowering an encoder
    with `cache=True` fails on its bidirectional masks, so this is asked first."""
    return bool(plain.meta.get("kv_per_token") or plain.meta.get("states")
                or plain.meta.get("cached_states"))


def check_decoder(plain: Graph) -> None:
    """Refuse (`E0600`) what is not a decoder-only model with a cache."""
    if "decoder_input_ids" in plain.inputs:
        raise _refuse(plain.name, "it is an encoder-decoder", help="`--triton DIR --kv-cache` "
                      "writes its encoder and decoder-with-past models")
    if not keeps_cache(plain):
        raise _refuse(plain.name, "it keeps no KV cache (not a decoder)", help="`--triton "
                      "DIR` serves models without a cache")


def genai_layout(graph: Graph) -> dict:
    """The cache layout of a decoder's cache graph as genai_config.json states it: layers,
    kv heads, head size, vocabulary. Raises `E0600` naming the first thing genai cannot
    express."""
    name = graph.name
    states = graph.meta["states"]
    layers: dict[int, dict[str, tuple]] = {}
    for past, present in states.items():
        m = _PAST.fullmatch(past)
        if m is None or present != f"present.{m[1]}.{m[2]}" or \
                graph.inputs[past].type.rank != 4:
            raise _refuse(name, f"its state `{past}` is not a key/value cache (a memory or "
                          "a running sum)", help="genai carries only past_key_values.N.key"
                          "/value between steps")
        shape = graph.inputs[past].type.shape
        if shape[2] != "past":
            raise _refuse(name, f"layer {m[1]} keeps a bounded cache (`{past}` is "
                          f"[{', '.join(map(str, shape))}]: a sliding window)",
                          help="genai's cache grows with the whole sequence in every layer")
        layers.setdefault(int(m[1]), {})[m[2]] = (shape[1], shape[3])
    shapes = {kv for layer in layers.values() for kv in layer.values()}
    if sorted(layers) != list(range(len(layers))) or \
            any(len(layer) != 2 for layer in layers.values()) or len(shapes) != 1:
        raise _refuse(name, "its layers' caches differ in shape (heads, head size) or miss a "
                      "key or value", help="genai_config.json has one head count and one "
                      "head size for every layer")
    extra = sorted(set(graph.inputs) - set(states) - {"input_ids", "attention_mask"})
    if extra or "input_ids" not in graph.inputs or "attention_mask" not in graph.inputs:
        what = f"input `{extra[0]}`" if extra else "`input_ids` and `attention_mask` inputs"
        raise _refuse(name, f"genai feeds only token ids, the mask and the cache, and the "
                      f"model has {'an ' if extra else 'no '}{what}")
    outs = [k for k in graph.outputs if k not in states.values()]
    logits = graph.outputs.get("logits")
    if outs != ["logits"] or logits.type.rank != 3 or not isinstance(logits.type.shape[2], int):
        raise _refuse(name, "genai reads one output, `logits` [batch, seq, vocab] with a "
                      f"static vocabulary; the model's are {', '.join(f'`{o}`' for o in outs)}")
    (kv_heads, head_size), = shapes
    return {"layers": len(layers), "kv_heads": kv_heads, "head_size": head_size,
            "vocab": logits.type.shape[2]}


def _call_arg(graph: Graph, block: str, arg: str) -> int | None:
    """An integer argument of the first call of a library block, from the lowering record."""
    for rec in graph.meta.get("calls", []):
        value = rec.get("args", {}).get(arg) if rec.get("block") == block else None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def position_limit(plain: Graph) -> int | None:
    """The longest sequence the plain graph's position tables cover: a binary search over
    `validate`, which refuses a computed index outside its table. None without such tables."""
    from archc.inputs import validate

    rows = [n.inputs[0].type.shape[0] for n in plain.nodes()
            if n.kind == "op" and n.op == "gather" and n.inputs[0].kind == "param"
            and n.inputs[1].kind != "input" and isinstance(n.inputs[0].type.shape[0], int)]
    if not rows or "input_ids" not in plain.inputs:
        return None
    import numpy as np

    def fits(n: int) -> bool:
        try:  # E0315: an index out of its table; other errors (the memory budget) are not
            validate(plain, {"input_ids": np.zeros((1, n), np.int64)})  # about positions
        except ArchcError as e:
            return all(d.code != "E0315" for d in e.diagnostics)
        return True

    low, high = 0, max(rows)  # fits(low) holds (vacuously for 0); find the largest
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low or None


def genai_config(graph: Graph, plain: Graph, sources: dict[str, str] | None = None) -> dict:
    """genai_config.json for the cache graph; the facts are the plain graph's `serving`
    statement, as lowering recorded it (`sources`: the spec's text, to point at a value)."""
    layout = genai_layout(graph)
    facts, spans = plain.meta.get("serving", {}), plain.meta.get("serving_at", {})
    limits = [v for v in (facts.get("context_length"), position_limit(plain)) if v]
    if not limits:
        raise ArchcError([Diagnostic(FACTS_CODE, f"the context length of `{graph.name}` is "
                                     "unknown (no position table and no `context_length`)",
                                     help=f"add `serving context_length = N` to `model "
                                     f"{graph.name}`; `archc import-hf` writes it from "
                                     "max_position_embeddings")])
    context = min(limits)
    for key in TOKEN_KEYS:
        ids = facts.get(key, [])
        bad = [i for i in (ids if isinstance(ids, list) else [ids]) if i >= layout["vocab"]]
        if bad:
            raise ArchcError([Diagnostic(FACTS_CODE, f"serving fact `{key}` = {bad[0]} is not "
                                         f"in the vocabulary (ids 0..{layout['vocab'] - 1})",
                                         spans.get(key), "not a token of this model",
                                         help=f"correct `{key}` in the `serving` statement of "
                                         f"`model {graph.name}`")], sources)
    heads = _call_arg(graph, "attention", "heads") or layout["kv_heads"]
    tokens = {k: facts[k] for k in TOKEN_KEYS if k in facts}
    eos = tokens.get("eos_token_id")
    if "pad_token_id" not in tokens and eos is not None:
        tokens["pad_token_id"] = eos[0] if isinstance(eos, list) else eos
    n = layout["layers"]
    decoder = {
        "filename": "model.onnx", "head_size": layout["head_size"],
        "hidden_size": _call_arg(graph, "embed", "dim") or heads * layout["head_size"],
        "num_attention_heads": heads, "num_hidden_layers": n,
        "num_key_value_heads": layout["kv_heads"],
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                   "past_key_names": "past_key_values.%d.key",
                   "past_value_names": "past_key_values.%d.value"},
        "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value"}}
    search = {"do_sample": False, "num_beams": 1, "num_return_sequences": 1, "top_k": 1,
              "top_p": 1.0, "temperature": 1.0, "repetition_penalty": 1.0, "min_length": 0,
              "max_length": context, "early_stopping": True, "length_penalty": 1.0,
              "no_repeat_ngram_size": 0, "diversity_penalty": 0.0,
              "past_present_share_buffer": False}
    # "decoder": genai's generic decoder-only type; nothing family-specific is assumed
    model = {"type": "decoder", "context_length": context, "vocab_size": layout["vocab"],
             "decoder": decoder, **tokens}
    return {"model": model, "search": search}


def _mkdir(path: Path) -> None:
    from archc.files import cannot_write

    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise cannot_write(path, (e.strerror or str(e)).lower()) from None


def _export(args, graph, weights, half_cache: bool = False):
    """The model as `compile` writes it: `--weights-dtype`, and with `--dtype float16` computing
    in float16. Its inputs and outputs stay float32 but for, with `half_cache`, the KV cache
    (genai keeps the cache itself, in the file's own type: half the memory, no cast a step)."""
    from archc.backends.onnx_export import export_onnx
    from archc.cli import _stored

    if getattr(args, "dtype", "float32") == "float16":
        from archc.backends.onnx_fp16 import export_float16

        cache = [n for n in (*graph.inputs, *graph.outputs)
                 if n.startswith(("past_key_values.", "present."))] if half_cache else []
        return export_float16(*_stored(args, graph, weights), half_io=cache)
    return export_onnx(*_stored(args, graph, weights))


def cmd_genai(args) -> int:
    from archc.backends.onnx_export import model_bytes
    from archc.cli import _graph, _weights
    from archc.cli_view import spec_module as _module
    from archc.files import write_files

    plain = _graph(args, level=0)
    check_decoder(plain)
    module = _module(args)
    graph = _graph(args, cache=True)
    config = genai_config(graph, plain, {module.path: module.source})
    model = _export(args, graph, _weights(args, graph), half_cache=True)
    out = Path(args.genai)
    _mkdir(out)
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    write_files({out / "model.onnx": model_bytes(model),  # both or neither
                 out / "genai_config.json": text.encode()})
    d = config["model"]["decoder"]
    print(f"wrote {out / 'model.onnx'} and {out / 'genai_config.json'} ({d['num_hidden_layers']} "
          f"layers, {d['num_key_value_heads']} kv heads of {d['head_size']}, context "
          f"{config['model']['context_length']})")
    return 0


# ---------------------------------------------------------------- Triton
TRITON_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 16: "TYPE_BF16", 7: "TYPE_INT64",
                6: "TYPE_INT32", 9: "TYPE_BOOL"}  # onnx.TensorProto element type -> Triton


def _tensors(values) -> list[str]:
    blocks = []
    for v in values:
        t = v.type.tensor_type
        dims = ", ".join(str(d.dim_value) if d.HasField("dim_value") else "-1"
                         for d in t.shape.dim)
        blocks.append(f"  {{\n    name: \"{v.name}\"\n    data_type: "
                      f"{TRITON_TYPES[t.elem_type]}\n    dims: [ {dims} ]\n  }}")
    return blocks


def pbtxt(name: str, model) -> str:
    """A Triton config.pbtxt for an ONNX model: every input and output with its type and
    dims (-1 for a symbolic dim); `max_batch_size: 0` because the batch is the first of the
    dims, as exported."""
    lines = [f"name: \"{name}\"", "platform: \"onnxruntime_onnx\"", "max_batch_size: 0"]
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        lines += [f"{kind} [", ",\n".join(_tensors(values)), "]"]
    return "\n".join(lines) + "\n"


def triton_models(args) -> dict[str, tuple[Graph, dict]]:
    """Model name -> (graph, weights): the plain model, and with `--kv-cache` the
    decoder-with-past (a decoder) or the encoder and decoder-with-past (an encoder-decoder)."""
    from archc.cli import _graph, _weights
    from archc.cli_view import spec_module as _module

    plain = _graph(args)
    weights = _weights(args, plain)
    models = {plain.name: (plain, weights)}
    if args.kv_cache and not keeps_cache(plain):
        raise ArchcError([Diagnostic("E0400", f"`--kv-cache`: `{plain.name}` keeps no KV "
                                     "cache", help="leave out `--kv-cache`")])
    if args.kv_cache:
        if "decoder_input_ids" in plain.inputs:
            from archc.kvcache import split_seq2seq

            encoder, decoder = split_seq2seq(_module(args), args.model)
            models[f"{plain.name}_encoder"] = (encoder, weights)
            models[f"{plain.name}_decoder_with_past"] = (decoder, weights)
        else:
            models[f"{plain.name}_with_past"] = (_graph(args, cache=True), weights)
    return models


def cmd_triton(args) -> int:
    from archc.backends.onnx_export import model_bytes
    from archc.files import write_files

    root = Path(args.triton)
    files: dict = {}
    for name, (graph, weights) in triton_models(args).items():
        model = _export(args, graph, weights)
        files[root / name / "config.pbtxt"] = pbtxt(name, model).encode()
        files[root / name / "1" / "model.onnx"] = model_bytes(model)
    for path in files:
        _mkdir(path.parent)
    write_files(files)  # every model of the repository, or none
    for path in files:
        print(f"wrote {path}")
    return 0
