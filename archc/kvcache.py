"""Incremental decoding with a KV cache, on the NumPy interpreter or onnxruntime.

Encoder-decoders (a spec with `decoder_input_ids`) split into two graphs (`split_seq2seq`):
the encoder maps `input_ids`, `attention_mask` to every decoder layer's cross-attention keys
and values (`encoder_key_values.N.key/value`, computed once), and the decoder-with-past
graph takes those, the decoder tokens, and its own `past_key_values.N.*`. `Seq2SeqSession`
drives the pair.

A cache graph (`lower(..., cache=True)`) takes `input_ids` for the new tokens, `attention_mask`
for past and new tokens, and `past_key_values.N.key/value`; it returns `logits` for the new
tokens and `present.N.key/value`. `Session` keeps the cache and the mask between calls:

    s = Session(graph, weights, backend="onnxruntime")
    logits = s.prefill(prompt_ids, prompt_mask)     # [B, T, vocab]
    logits = s.step(next_ids)                        # [B, 1, vocab]; the mask grows by ones
"""

from __future__ import annotations

import warnings

import numpy as np

from archc.diagnostics import ArchcError, Diagnostic
from archc.frontend import ast
from archc.ir.graph import Graph
from archc.runner import Runner
from archc.weights import ArchcWarning


class Session:
    """Drives every state of a graph across calls: the KV cache (`past_key_values.N.*` ->
    `present.N.*`) and the spec's own `state NAME` (-> `next.NAME`). A state starts empty: its
    symbolic dims other than `batch` are 0, its static dims as declared (zeros)."""

    ids_name, mask_name = "input_ids", "attention_mask"

    def __init__(self, graph: Graph, weights: dict[str, np.ndarray], backend: str = "numpy"):
        self.states: dict[str, str] = dict(graph.meta.get("states", {}))
        if not self.states:
            raise ValueError("the graph carries no state: lower it with cache=True, or declare "
                             "a `state` in the spec")
        self.graph, self.run = graph, Runner(graph, weights, backend)
        self.output = next(k for k in graph.outputs if k not in self.states.values())
        self.context: dict[str, np.ndarray] = {}  # inputs that stay fixed across steps
        self.past: dict[str, np.ndarray] = {}
        self.mask: np.ndarray | None = None
        self.context_length = graph.meta.get("serving", {}).get("context_length")
        self._warned = False

    def _empty(self, batch: int) -> dict[str, np.ndarray]:
        out = {}
        for name in self.states:
            t = self.graph.inputs[name].type
            shape = tuple(d if isinstance(d, int) else batch if d == "batch" else 0
                          for d in t.shape)
            out[name] = np.zeros(shape, {"float32": np.float32, "int64": np.int64,
                                         "bool": np.bool_}[t.dtype])
        return out

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None):
        input_ids = np.asarray(input_ids)  # a scalar or None: refused by `step`'s checks
        self.past, self.mask = self._empty(len(input_ids) if input_ids.ndim else 1), None
        return self.step(input_ids, attention_mask)

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None):
        """Run the new tokens `input_ids` [B, T]; `attention_mask` [B, T] marks which of them
        are real (default: all). Returns the graph's first output for them."""
        if not self.past:
            raise ValueError("`step` before `prefill`: the session has no cache yet; call "
                             "`prefill(input_ids)` first")
        input_ids = np.asarray(input_ids)  # converted (or refused) by `validate`
        new = np.ones(input_ids.shape, np.int64) if attention_mask is None else \
            np.asarray(attention_mask)  # a 0.5 is refused by `validate`, not truncated to 0
        self._check_step(input_ids, new)
        mask = new if self.mask is None else np.concatenate([self.mask, new], axis=1)
        feeds = {self.ids_name: input_ids, **self.context}
        if self.mask_name in self.graph.inputs:
            feeds[self.mask_name] = mask
        from archc.inputs import validate  # the same checks as a full run, states aside

        feeds = {k: v for k, v in validate(self.graph, feeds, "the session's inputs",
                                           self.states, self.run.facts).items()
                 if k not in self.states}
        out = self.run.run_checked({**feeds, **self.past})
        self.mask = feeds.get(self.mask_name, mask)  # only a step that ran moves it on
        self._past_context(self.mask.shape[1])
        self.past = {name: out[result] for name, result in self.states.items()}
        return out[self.output]

    def _past_context(self, length: int) -> None:
        """Warn once when the session runs past the spec's `serving context_length`: a rotary
        model still runs there, on positions it never saw in training (as transformers warns)."""
        if self.context_length and length > self.context_length and not self._warned:
            self._warned = True
            warnings.warn(ArchcWarning(Diagnostic(
                "E0601", f"{length} tokens are past the model's context length "
                f"({self.context_length}, from its `serving` statement)", severity="warning",
                help="the model runs on, on positions it was not trained for")), stacklevel=4)

    def _check_step(self, ids: np.ndarray, new: np.ndarray) -> None:
        """What `validate` cannot see once the mask is joined to the past one: the new mask
        is not the new tokens' shape, or the batch is not the one `prefill` started."""
        ids_name, mask_name = self.ids_name, self.mask_name
        why = None
        if ids.ndim != 2:
            why = "E0313", f"input `{ids_name}` has rank {ids.ndim} {list(ids.shape)}; a " \
                f"session takes [batch, new tokens]", None
        elif new.shape != ids.shape:
            why = "E0314", f"`{mask_name}` has shape {list(new.shape)}, `{ids_name}` " \
                f"{list(ids.shape)}", "a call's mask marks its new tokens: one entry each"
        elif self.mask is not None and len(ids) != len(self.mask):
            why = "E0314", f"input `{ids_name}` has batch {len(ids)}; the session's batch " \
                f"is {len(self.mask)} since `prefill`", "call `prefill` to start a new batch"
        if why:
            raise ArchcError([Diagnostic(why[0], why[1], notes=("in the session's inputs",),
                                         help=why[2])])


def incremental_logits(graph: Graph, weights, input_ids, attention_mask, prefill: int,
                       backend: str = "numpy") -> np.ndarray:
    """Logits of the whole sequence: a prefill of `prefill` tokens, then one token a step."""
    return _replay(Session(graph, weights, backend), input_ids, attention_mask, prefill)


def _replay(s: Session, ids: np.ndarray, mask: np.ndarray | None, prefill: int) -> np.ndarray:
    mask = np.ones_like(ids) if mask is None else mask
    outs = [s.prefill(ids[:, :prefill], mask[:, :prefill])]
    for t in range(prefill, ids.shape[1]):
        outs.append(s.step(ids[:, t:t + 1], mask[:, t:t + 1]))
    return np.concatenate(outs, axis=1)


def generate(graph: Graph, weights, input_ids, steps: int, backend: str = "numpy") -> np.ndarray:
    """Greedy decoding: append the most likely token `steps` times."""
    return _greedy(Session(graph, weights, backend), np.asarray(input_ids, np.int64), steps)


def _greedy(s: Session, prompt: np.ndarray, steps: int) -> np.ndarray:
    from archc.progress import bar

    if not isinstance(steps, int | np.integer) or steps < 0:
        raise ValueError(f"`steps` must be an integer >= 0, got {steps!r}")
    ids, logits = prompt, s.prefill(prompt)
    with bar(steps, "generating", "tok") as b:
        for _ in range(steps):
            nxt = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
            ids = np.concatenate([ids, nxt], axis=1)
            logits = s.step(nxt)
            b.update()
    return ids


def _prune(graph: Graph) -> Graph:
    """Drop what the outputs no longer need, inputs and parameters included."""
    from archc.passes import PIPELINES, run_pipeline

    graph = run_pipeline(graph, PIPELINES[1])
    for node in list(graph.inputs.values()) + list(graph.params.values()):
        if not graph.users(node) and not graph.is_output(node):
            graph.erase_node(node)
    return graph


def split_seq2seq(module: ast.Module, model: str | None = None) -> tuple[Graph, Graph]:
    """(encoder graph, decoder-with-past graph) of an encoder-decoder spec."""
    from archc.lower import lower

    encoder = lower(module, model, cache=True)
    cross = encoder.meta.get("cross_kv", [])
    if not cross:
        raise ValueError("the model has no cross-attention to split at")
    encoder.outputs = {}
    for name, k, v in cross:
        encoder.set_output(f"{name}.key", k)
        encoder.set_output(f"{name}.value", v)
    decoder = lower(module, model, cache=True)
    for name, k, v in decoder.meta["cross_kv"]:
        for kind, node in (("key", k), ("value", v)):
            decoder.replace_all_uses_with(node, decoder.add_input(f"{name}.{kind}", node.type))
    encoder.name, decoder.name = f"{encoder.name}_encoder", f"{decoder.name}_decoder"
    return _prune(encoder), _prune(decoder)


class Seq2SeqSession(Session):
    """`encode` once, then `prefill` / `step` decoder tokens as in `Session`."""

    ids_name, mask_name = "decoder_input_ids", "decoder_attention_mask"

    def __init__(self, encoder: Graph, decoder: Graph, weights, backend: str = "numpy"):
        super().__init__(decoder, weights, backend)
        self.encoder = Runner(encoder, weights, backend)

    def encode(self, input_ids, attention_mask=None) -> None:
        ids = np.asarray(input_ids, np.int64)
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        feeds = {"input_ids": ids, "attention_mask": mask.astype(np.int64)}
        self.context = {**self.encoder(feeds), "attention_mask": feeds["attention_mask"]}


def seq2seq_incremental_logits(module: ast.Module, weights, inputs: dict, prefill: int,
                               backend: str = "numpy") -> np.ndarray:
    """Encode once; prefill `prefill` decoder tokens; then one decoder token a step."""
    s = Seq2SeqSession(*split_seq2seq(module), weights, backend)
    s.encode(inputs["input_ids"], inputs.get("attention_mask"))
    return _replay(s, inputs["decoder_input_ids"], inputs.get("decoder_attention_mask"), prefill)


def generate_seq2seq(module: ast.Module, weights, input_ids, steps: int, start: int = 0,
                     backend: str = "numpy") -> np.ndarray:
    """Greedy decoding of an encoder-decoder: encode `input_ids` once, then feed the decoder
    `start` and each most likely token in turn; returns the decoder tokens."""
    s = Seq2SeqSession(*split_seq2seq(module), weights, backend)
    ids = np.asarray(input_ids, np.int64)
    s.encode(ids)
    return _greedy(s, np.full((len(ids), 1), start, np.int64), steps)
