"""Run an exported model with onnxruntime: CUDA when the installed build offers it, else CPU."""

from __future__ import annotations

import numpy as np
import onnx

from archc.backends.onnx_export import model_bytes


def providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def session(model: onnx.ModelProto | bytes, provider: str | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    data = model if isinstance(model, bytes) else model_bytes(model)
    return ort.InferenceSession(data, opts, providers=[provider] if provider else providers())


def run_onnx(model: onnx.ModelProto | bytes, inputs: dict[str, np.ndarray],
             provider: str | None = None) -> dict[str, np.ndarray]:
    sess = session(model, provider)
    wanted = {i.name for i in sess.get_inputs()}
    feeds = {k: v for k, v in inputs.items() if k in wanted}
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))
