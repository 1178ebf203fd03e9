"""Graph -> onnx.ModelProto through each op's `onnx` lowering, at one pinned opset.

Symbolic dims (`batch`, `seq`) become ONNX dim_params, so batch and sequence stay dynamic. Params
become initializers when weights are given, and graph inputs when not (a structure-only export).
Every export is checked with `onnx.checker.check_model(full_check=True)`.

The opset is 18 unless an op's lowering asks for more (`b.require_opset(23)`: ONNX `Attention`,
`RMSNormalization`); a `com.microsoft` node adds that domain's import. So O0/O1 exports do not
change when fused ops are added.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from archc.backends.onnx_gate import gate_else_only
from archc.ir.graph import Graph
from archc.ir.types import TensorType
from archc.ops import OPS

OPSET = 18
IR_VERSION = 9  # the newest IR that onnxruntime >= 1.17 loads
IR_FOR_OPSET = {23: 11}  # the IR version onnx pairs with a raised opset (onnx VERSION_TABLE)
_ELEM = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64, "bool": TensorProto.BOOL,
         "float16": TensorProto.FLOAT16, "uint8": TensorProto.UINT8}


class OnnxBuilder:
    """What an op's `onnx` lowering sees: emit nodes, make constants, ask for dims and types."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.types: dict[str, TensorType] = {}
        self._consts: dict[tuple, str] = {}
        self._count = 0
        self.opset = OPSET
        self.outputs_of: dict[str, tuple[str, ...]] = {}  # a multi-output op's results
        self._memo: dict[tuple, object] = {}

    def memo(self, key: tuple, emit):
        """`emit()` once per key; later calls return the first result. For values several
        lowerings derive from one input (each attention layer's view of the shared mask)."""
        if key not in self._memo:
            self._memo[key] = emit()
        return self._memo[key]

    def require_opset(self, version: int) -> None:
        """The lowering emits an op that exists from `version` on; the model imports that."""
        self.opset = max(self.opset, version)

    def fresh(self, hint: str = "t") -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        out = out or self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out],
                                           name=f"{op_type}_{len(self.nodes)}", **attrs))
        return out

    def op_multi(self, op_type: str, *inputs: str, n: int, keep: tuple[int, ...] | None = None,
                 **attrs) -> list[str]:
        """An op with `n` outputs; those not in `keep` (default: all) are left unnamed ("")."""
        outs = [self.fresh(op_type.lower()) if keep is None or i in keep else ""
                for i in range(n)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs,
                                           name=f"{op_type}_{len(self.nodes)}", **attrs))
        return outs

    def const(self, value: np.ndarray) -> str:
        value = np.asarray(value)
        key = (str(value.dtype), value.shape, hashlib.sha256(value.tobytes()).hexdigest())
        if key not in self._consts:
            name = f"const_{len(self._consts)}"
            self.initializers[name] = numpy_helper.from_array(value, name)
            self._consts[key] = name
        return self._consts[key]

    def scalar(self, v: float) -> str:
        return self.const(np.array(v, np.float32))

    def dim(self, x: str, axis: int) -> str:
        """Scalar int64 holding x.shape[axis], read at run time."""
        axis %= self.types[x].rank
        shape = self.op("Shape", x, start=axis, end=axis + 1)
        return self.op("Squeeze", shape, self.const(np.array([0], np.int64)))

    def slice(self, x: str, axis: int, start: int, end: int) -> str:
        ints = [np.array([v], np.int64) for v in (start, end, axis)]
        return self.op("Slice", x, *map(self.const, ints))

    def type_of(self, name: str) -> TensorType:
        return self.types[name]


def _name_in_place(b: OnnxBuilder, result: str, name: str) -> str:
    """Name an earlier node's result (another output of a multi-output op, or a value a later
    node made from) as the graph output `name` where it is made, and in every reader (If
    branches and remembered values too): an Identity would copy it on every run (onnxruntime
    keeps those). A graph input or constant keeps its name (`result` is returned)."""
    made = next((m for m in b.nodes if result in m.output), None)
    if made is None:
        return result
    for m in [*b.nodes, *(m for n in b.nodes for a in n.attribute for m in a.g.node)]:
        for i, x in enumerate(m.input):
            if x == result:
                m.input[i] = name
    made.output[list(made.output).index(result)] = name

    def rename(v):
        return tuple(map(rename, v)) if isinstance(v, tuple) else name if v == result else v
    b.outputs_of = {rename(k): rename(v) for k, v in b.outputs_of.items()}
    b._memo = {k: rename(v) for k, v in b._memo.items()}
    if result in b.types:
        b.types[name] = b.types[result]
    return name


def _value_info(name: str, t: TensorType) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, _ELEM[t.dtype], list(t.shape))


def export_onnx(graph: Graph, weights: dict[str, np.ndarray] | None = None,
                check: bool = True, external: tuple[str, dict] | None = None
                ) -> onnx.ModelProto:
    """The ONNX model of `graph`. With `external` = (a file name beside the model, its
    `external_layout`) every parameter is an initializer whose data lies in that file,
    and no weight is read: `archc.backends.onnx_save` streams them there."""
    b = OnnxBuilder()
    location, layout = external or (None, {})
    names: dict[int, str] = {}
    out_of = {node.id: name for name, node in graph.outputs.items()}
    graph_inputs = []
    defaults = _defaulted(graph)
    for n in graph.nodes():
        if n.kind == "input":
            names[n.id] = n.name
            graph_inputs.append(_value_info(n.name, n.type))
            if n.name in defaults:
                names[n.id] = _default(b, n, *defaults[n.name])
        elif n.kind == "param":
            names[n.id] = n.name
            if weights is None:
                graph_inputs.append(_value_info(n.name, n.type))
            elif external:
                b.initializers[n.name] = _external(n.name, location, *layout[n.name])
            else:
                b.initializers[n.name] = numpy_helper.from_array(weights[n.name], n.name)
        elif n.kind == "const":
            names[n.id] = b.const(n.value)
        else:
            b.types.update({names[i.id]: i.type for i in n.inputs})
            result = OPS[n.op].onnx(b, *(names[i.id] for i in n.inputs), **n.attrs)
            if n.id in out_of and result not in names.values() and b.nodes and \
                    b.nodes[-1].output[0] == result:
                b.nodes[-1].output[0] = result = out_of[n.id]  # name the output in place
            elif n.id in out_of and result not in names.values():
                result = _name_in_place(b, result, out_of[n.id])
            names[n.id] = result
    outputs = []
    for name, node in graph.outputs.items():
        if names[node.id] != name:
            b.op("Identity", names[node.id], out=name)
        outputs.append(_value_info(name, node.type))
    inits = [b.initializers[k] for k in sorted(b.initializers)]
    known = {v.name: v.type.tensor_type.elem_type for v in graph_inputs}
    b.nodes = gate_else_only(b.nodes, {o.name for o in outputs},
                             {**known, **{t.name: t.data_type for t in inits}})
    onnx_graph = helper.make_graph(b.nodes, graph.name, graph_inputs, outputs, inits)
    imports = [helper.make_opsetid("", b.opset)]
    domains = {n.domain for n in b.nodes} | {m.domain for n in b.nodes for a in n.attribute
                                             if a.g.node for m in a.g.node}  # If branches
    imports += [helper.make_opsetid(d, 1) for d in sorted(domains - {""})]
    model = helper.make_model(onnx_graph, opset_imports=imports, producer_name="archc",
                              ir_version=IR_FOR_OPSET.get(b.opset, IR_VERSION))
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


ALIGN = 64  # each external tensor starts at a multiple of this (mmap-friendly)


def external_layout(graph: Graph, weights) -> dict[str, tuple]:
    """name -> (dtype, shape, offset, length) of each parameter in the external data file:
    sorted by name, each aligned to ALIGN bytes. A `LazyWeights` mapping is not read: its
    tensors are float32 in the graph's shapes."""
    from archc.weights import LazyWeights

    layout, offset = {}, 0
    for name in sorted(graph.params):
        if isinstance(weights, LazyWeights):
            dtype, shape = np.float32, graph.params[name].type.shape
        else:
            dtype, shape = np.asarray(weights[name]).dtype, np.shape(weights[name])
        length = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        layout[name] = (np.dtype(dtype), tuple(shape), offset, length)
        offset += -(-length // ALIGN) * ALIGN
    return layout


def _external(name: str, location: str, dtype, shape, offset: int, length: int):
    t = onnx.TensorProto()
    t.name = name
    t.data_type = helper.np_dtype_to_tensor_dtype(dtype)
    t.dims.extend(shape)
    t.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        entry = t.external_data.add()
        entry.key, entry.value = key, str(value)
    return t


def _defaulted(graph: Graph) -> dict[str, tuple[int, list]]:
    """The int64 inputs a caller may leave out (`archc.inputs.default_value`: token types 0,
    masks 1) whose every dim another, required input carries: name -> (fill, [(input, axis)
    or size per dim])."""
    from archc.inputs import default_value

    fills = {k: default_value(k) for k, n in graph.inputs.items() if n.type.dtype == "int64"}
    fills = {k: v for k, v in fills.items() if v is not None}
    found = {}
    for name, node in graph.inputs.items():
        if name not in fills:
            continue
        dims = []
        for d in node.type.shape:
            source = d if isinstance(d, int) else next(
                ((other, axis) for other, o in graph.inputs.items() if other not in fills
                 for axis, e in enumerate(o.type.shape) if e == d), None)
            dims.append(source)
        if None not in dims:
            found[name] = (fills[name], dims)
    return found


def _default(b: OnnxBuilder, node, fill: int, dims: list) -> str:
    """An optional input: an overridable initializer holding `fill`, size 1 on symbolic axes,
    expanded to the shape the other inputs give, so leaving it out runs as the NumPy backend
    does. (The graph reads only the expanded value, never the initializer's own shape.)"""
    b.initializers[node.name] = numpy_helper.from_array(
        np.full([d if isinstance(d, int) else 1 for d in dims], fill, np.int64), node.name)
    parts = [b.const(np.array([d], np.int64)) if isinstance(d, int) else
             b.op("Shape", d[0], start=d[1], end=d[1] + 1) for d in dims]
    shape = b.op("Concat", *parts, axis=0) if len(parts) > 1 else parts[0]
    return b.op("Expand", node.name, shape, out=f"{node.name}.value")


def model_bytes(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString(deterministic=True)
