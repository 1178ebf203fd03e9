"""Incremental decoding with a KV cache, on the NumPy interpreter or onnxruntime.

A cache graph (`lower(..., cache=True)`) takes `input_ids` for the new tokens, `attention_mask`
for past and new tokens, and `past_key_values.N.key/value`; it returns `logits` for the new
tokens and `present.N.key/value`. `Session` keeps the cache and the mask between calls:

    s = Session(graph, weights, backend="onnxruntime")
    logits = s.prefill(prompt_ids, prompt_mask)     # [B, T, vocab]
    logits = s.step(next_ids)                        # [B, 1, vocab]; the mask grows by ones
"""

from __future__ import annotations

import numpy as np

from archc.ir.graph import Graph


class Session:
    def __init__(self, graph: Graph, weights: dict[str, np.ndarray], backend: str = "numpy"):
        self.graph, self.weights, self.backend = graph, weights, backend
        self.cache_inputs = [n for n in graph.inputs if n.startswith("past_key_values.")]
        if not self.cache_inputs:
            raise ValueError("the graph has no KV cache: lower it with cache=True")
        self._ort = None
        if backend == "onnxruntime":
            from archc.backends.onnx_export import export_onnx
            from archc.backends.ort import session

            self._ort = session(export_onnx(graph, weights))
        elif backend != "numpy":
            raise ValueError(f"unknown backend `{backend}` (numpy or onnxruntime)")
        self.past: dict[str, np.ndarray] = {}
        self.mask: np.ndarray | None = None

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._ort is not None:
            names = [o.name for o in self._ort.get_outputs()]
            return dict(zip(names, self._ort.run(names, feeds)))
        from archc.backends.numpy_interp import run_graph

        return run_graph(self.graph, feeds, self.weights)

    def _empty(self, batch: int) -> dict[str, np.ndarray]:
        out = {}
        for name in self.cache_inputs:
            shape = self.graph.inputs[name].type.shape
            out[name] = np.zeros((batch, shape[1], 0, shape[3]), np.float32)
        return out

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None):
        self.past, self.mask = self._empty(len(input_ids)), None
        return self.step(input_ids, attention_mask)

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None):
        """Run the new tokens `input_ids` [B, T]; `attention_mask` [B, T] marks which of them
        are real (default: all)."""
        input_ids = np.asarray(input_ids, np.int64)
        new = np.ones(input_ids.shape, np.int64) if attention_mask is None else \
            np.asarray(attention_mask, np.int64)
        self.mask = new if self.mask is None else np.concatenate([self.mask, new], axis=1)
        feeds = {"input_ids": input_ids, "attention_mask": self.mask, **self.past}
        out = self._run(feeds)
        self.past = {k.replace("present.", "past_key_values.", 1): v for k, v in out.items()
                     if k.startswith("present.")}
        return out["logits"]


def incremental_logits(graph: Graph, weights, input_ids, attention_mask, prefill: int,
                       backend: str = "numpy") -> np.ndarray:
    """Logits of the whole sequence: a prefill of `prefill` tokens, then one token a step."""
    s = Session(graph, weights, backend)
    mask = np.ones_like(input_ids) if attention_mask is None else attention_mask
    outs = [s.prefill(input_ids[:, :prefill], mask[:, :prefill])]
    for t in range(prefill, input_ids.shape[1]):
        outs.append(s.step(input_ids[:, t:t + 1], mask[:, t:t + 1]))
    return np.concatenate(outs, axis=1)


def generate(graph: Graph, weights, input_ids, steps: int, backend: str = "numpy") -> np.ndarray:
    """Greedy decoding: append the most likely token `steps` times."""
    s = Session(graph, weights, backend)
    ids = np.asarray(input_ids, np.int64)
    logits = s.prefill(ids)
    for _ in range(steps):
        nxt = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
        ids = np.concatenate([ids, nxt], axis=1)
        logits = s.step(nxt)
    return ids
