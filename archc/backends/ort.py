"""Run an exported model with onnxruntime: CUDA when the installed build offers it, else CPU.

`run_cached(graph, inputs, weights)` exports and builds a session once per (graph, weights) and
reuses it: a repeated call only runs. What a key stands for is in archc/backends/cache.py;
mutating a weight array in place is not seen: call `clear_session_cache()` after doing that.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict

import numpy as np
import onnx

from archc.backends.cache import SESSION_CACHE_SIZE, cache_key
from archc.backends.onnx_export import export_onnx, model_bytes
from archc.ir.graph import Graph


def providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def session(model: onnx.ModelProto | bytes | str, provider: str | None = None,
            threads: int | None = None):
    """An onnxruntime session of a model (a proto, its bytes or a file path), quiet, on
    `provider` (default: CUDA when present, else CPU) with `threads` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    data = model if isinstance(model, bytes | str) else model_bytes(model)
    return ort.InferenceSession(data, opts, providers=[provider] if provider else providers())


def cpu_session(model: onnx.ModelProto | bytes | str, threads: int):
    """`session` on the CPU EP at `threads` threads: what the benchmarks time."""
    return session(model, "CPUExecutionProvider", threads)


def _run(sess, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    wanted = {i.name for i in sess.get_inputs() + sess.get_overridable_initializers()}
    feeds = {k: v for k, v in inputs.items() if k in wanted}
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def run_onnx(model: onnx.ModelProto | bytes, inputs: dict[str, np.ndarray],
             provider: str | None = None) -> dict[str, np.ndarray]:
    return _run(session(model, provider), inputs)


_SESSIONS: OrderedDict[tuple, tuple] = OrderedDict()  # key -> (graph ref, weights, session)


def cached_session(graph: Graph, weights: dict[str, np.ndarray], provider: str | None = None,
                   threads: int | None = None):
    """The onnxruntime session of `graph` with `weights`, exported and built on first use."""
    key = cache_key(graph, weights, provider, threads)
    hit = _SESSIONS.get(key)
    if hit is not None and hit[0]() is graph:
        _SESSIONS.move_to_end(key)
        return hit[2]
    used = {name: weights[name] for name in graph.params}
    sess = session(export_onnx(graph, used), provider, threads)
    _SESSIONS[key] = (weakref.ref(graph), used, sess)
    while len(_SESSIONS) > SESSION_CACHE_SIZE:
        _SESSIONS.popitem(last=False)
    return sess


def run_cached(graph: Graph, inputs: dict[str, np.ndarray], weights: dict[str, np.ndarray],
               provider: str | None = None) -> dict[str, np.ndarray]:
    """`graph` on onnxruntime, reusing the session of an earlier call with the same graph and
    weight arrays (see the module docstring)."""
    return _run(cached_session(graph, weights, provider), inputs)


def clear_session_cache() -> None:
    """Forget every cached session and bound NumPy plan (archc.backends.numpy_interp)."""
    from archc.backends.numpy_interp import _BOUND

    _SESSIONS.clear()
    _BOUND.clear()
