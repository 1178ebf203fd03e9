"""Write exported models to disk: each one `.onnx` file, or, past the protobuf limit, the model
with its weights in `FILE.onnx.data` beside it (ONNX external data).

Protobuf cannot serialise a message over 2 GiB, so a model whose parameters exceed
`EXTERNAL_OVER` bytes (`ARCHC_EXTERNAL_DATA_BYTES` sets it) keeps every weight outside the
proto. The weights are streamed: each tensor is read from the mapping (a `LazyWeights` draws or
loads it then), written, and dropped, so there are never two copies of the weights in memory,
and with lazy weights not even one. Every file of one call is written atomically together
(`archc.files.write_files`): a failure leaves the earlier files as they were. A model with
external data is checked by `onnx.checker` from its staged path before it replaces anything.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx

from archc.backends.onnx_export import ALIGN, export_onnx, external_layout, model_bytes
from archc.files import write_files
from archc.ir.graph import Graph
from archc.limits import nbytes
from archc.progress import bar

EXTERNAL_OVER = 2**31 - 2**27  # 1.875 GiB of weights: the rest of the 2 GiB is the graph


def save_onnx(graph: Graph, weights, path: str | Path) -> tuple[onnx.ModelProto, list[str]]:
    """Export `graph` with `weights` to `path`: the model proto (without external data) and
    the files written."""
    (model,), files = save_models([(graph, weights, path)])
    return model, files


def save_models(models) -> tuple[list[onnx.ModelProto], list[str]]:
    """Export each `(graph, weights, path)`; all files or none."""
    limit = int(os.environ.get("ARCHC_EXTERNAL_DATA_BYTES", EXTERNAL_OVER))
    protos, inline, external = [], {}, {}
    for graph, weights, path in models:
        path = Path(path)
        if sum(nbytes(p.type.shape, 4) for p in graph.params.values()) <= limit:
            protos.append(export_onnx(graph, weights))
            inline[path] = model_bytes(protos[-1])
            continue
        data = path.with_name(path.name + ".data")
        layout = external_layout(graph, weights)
        protos.append(export_onnx(graph, weights, check=False, external=(data.name, layout)))
        external[path] = (model_bytes(protos[-1]), data, _streamer(weights, layout, data.name))
    if not external:
        write_files(inline)
        return protos, [str(p) for p in inline]
    parent = next(iter(external)).parent
    if not parent.is_dir():
        write_files({next(iter(external)): b""})  # the diagnostic any write there gives
    stage = Path(tempfile.mkdtemp(prefix=".archc-export.", dir=parent))
    try:  # written and checked in a folder beside the target, under the final names
        staged = {}
        for path, (proto, data, stream) in external.items():
            write_files({stage / path.name: proto, stage / data.name: stream})
            onnx.checker.check_model(str(stage / path.name), full_check=True)
            staged[path], staged[data] = stage / path.name, stage / data.name
        moves = {dst: (lambda tmp, src=src: os.replace(src, tmp)) for dst, src in staged.items()}
        write_files({**inline, **moves})
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return protos, [str(p) for p in (*inline, *staged)]


def _streamer(weights, layout: dict, name: str):

    def stream(tmp: Path) -> None:
        total = sum(length for *_, length in layout.values())
        with open(tmp, "wb") as f, bar(total, f"writing {name}", "B") as b:
            for key, (dtype, shape, offset, length) in layout.items():
                a = np.ascontiguousarray(weights[key], dtype=dtype.newbyteorder("<"))
                if a.shape != shape:
                    raise ValueError(f"weight `{key}` has shape {a.shape}, expected {shape}")
                f.seek(offset)
                f.write(memoryview(a).cast("B"))
                b.update(length)
                del a
            f.truncate(-(-f.tell() // ALIGN) * ALIGN)

    return stream
