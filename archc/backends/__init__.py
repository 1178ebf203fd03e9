"""Backends: `numpy_interp` (the reference interpreter), `onnx_export` and `ort` (onnxruntime)."""
