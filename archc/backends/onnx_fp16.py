"""float32 ONNX model -> a model that computes in float16 (`archc compile --dtype float16`).

A conversion over the exported proto, not a pass over the IR: the IR's ops and NumPy kernels
stay float32, and this changes only what onnxruntime runs. The types of an ONNX graph flow from
its sources, so it rewrites the sources and lets every other op follow:

- every float32 initializer, `Constant` and `ConstantOfShape` value becomes float16, and every
  `Cast(to=FLOAT)` casts to FLOAT16; value_info and If/Loop subgraph outputs follow;
- ranges: float16 tops out at 65504. A constant beyond it saturates (finite values only), so
  archc's masked fill, float32's lowest (-3.4e38, `archc/ops/fused.py` LOWEST), becomes
  float16's lowest, not -inf: a fully masked row then softmaxes to a uniform row, as in float32,
  where -inf would give inf - inf = NaN. The one comparison against it, "a row has a key" =
  max(bias) > LOWEST / 2 (`fused._row_ok`), keeps its margin: LOWEST / 2 becomes -32752, not
  the fill itself. A weight beyond the range is an error (as `--weights-dtype float16`);
- float32 islands: a few values keep float32 where float16 loses them. A node starts an island
  when it squares (`Pow(x, c >= 2)`, `Mul(x, x)`: the variance of a decomposed RMSNorm or
  LayerNorm at -O0/-O1 overflows float16 once |x| > 256; GELU-tanh's x^3), casts an integer to
  float (positions: a RoPE angle pos * inv_freq needs float32 past ~2048 tokens; masks), or has
  no float16 kernel (FLOAT32_ONLY). A cheap op (ISLAND_OPS) joins the island when its float inputs
  are island values or constants. A float16 value read by an island is cast up, an island value
  read elsewhere is cast down, and an island reads its own float32 copy of a constant (so
  eps = 1e-12 survives). So the norm statistics sqrt(mean(x^2) + eps) and the rotary tables are
  float32, and everything heavy (matmuls, attention, the residual stream) is float16. The fused
  norms (-O2) compute in float32 already (stash_type=1; the com.microsoft skip norms likewise).
  onnxruntime's CPU EP happens to run some float16 chains in float32 by itself; the islands
  make it a property of the file, for every EP (tests/test_float16.py: the reference evaluator).
- IO: float graph inputs and outputs stay float32 (a Cast after each float input, before each
  float output), so feeds and `archc run` work unchanged, the KV cache included: its values
  are float16 inside the graph, so the round trip is exact and costs one cast of the cache per
  step. `half_io` names inputs and outputs to leave float16 instead (a serving loop that keeps
  the cache in float16: half the memory).

Names are deterministic (`x.f16`, `x.f32`), so two conversions of one model are byte-identical.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from archc.diagnostics import ArchcError, Diagnostic

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
F16_MAX = float(np.finfo(np.float16).max)  # 65504
F32_LOWEST = float(np.finfo(np.float32).min)
# Ops an island may grow through: elementwise, reductions and data movement, all cheap. Never
# MatMul or attention: those are the work float16 is for.
ISLAND_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Neg", "Abs", "Exp", "Log", "Cos",
    "Sin", "Max", "Min", "ReduceMean", "ReduceSum", "ReduceSumSquare", "Unsqueeze", "Squeeze",
    "Reshape", "Transpose", "Concat", "Tile", "Expand", "Slice", "Gather", "Where", "Identity",
    "Floor", "Ceil", "Clip", "CumSum", "Range"})
FLOAT32_ONLY = frozenset({"Range", "ScatterND", "ScatterElements"})  # no float16 kernel in
# onnxruntime's CPU EP (Scatter*: not with reduction="add", which MoE dispatch uses)
_BOOL_OPS = frozenset({"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or",
                       "Not", "Xor", "IsNaN", "IsInf"})
_INT_OPS = frozenset({"Shape", "Size", "NonZero", "ArgMax", "ArgMin"})


def saturate(a: np.ndarray) -> np.ndarray:
    """float32 values clipped into float16's range (infinities kept); LOWEST / 2, the "row has
    a key" threshold, goes to float16's lowest / 2 so it stays above the masked fill."""
    a = np.asarray(a, np.float32)
    out = np.where(np.isfinite(a), np.clip(a, -F16_MAX, F16_MAX), a)
    return np.where(a == np.float32(F32_LOWEST / 2), np.float32(-F16_MAX / 2), out)


def to_half(a: np.ndarray) -> np.ndarray:
    return saturate(a).astype(np.float16)


# ---------------------------------------------------------------- element types
def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [a.g for a in node.attribute if a.type == AttributeProto.GRAPH] + \
        [g for a in node.attribute if a.type == AttributeProto.GRAPHS for g in a.graphs]


def _attr(node: onnx.NodeProto, name: str):
    a = next((a for a in node.attribute if a.name == name), None)
    return None if a is None else helper.get_attribute_value(a)


def _elem_types(graph: onnx.GraphProto, types: dict[str, int]) -> None:
    """name -> ONNX element type of every value, by the rule "like the first input" and its
    exceptions. onnx's shape inference does not know the com.microsoft ops; this needs only
    element types, and every op archc emits follows these rules."""
    for v in [*graph.input, *graph.output, *graph.value_info]:
        if v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    types.update({t.name: t.data_type for t in graph.initializer})
    for node in graph.node:
        for sub in _subgraphs(node):
            _elem_types(sub, types)
        op, ins = node.op_type, [x for x in node.input if x]
        if op == "Cast":
            kinds = [_attr(node, "to")] * len(node.output)
        elif op in _INT_OPS:
            kinds = [TensorProto.INT64]
        elif op in _BOOL_OPS:
            kinds = [TensorProto.BOOL]
        elif op in ("Constant", "ConstantOfShape"):
            value = _attr(node, "value")
            kinds = [value.data_type if value is not None else
                     FLOAT if op == "ConstantOfShape" or _attr(node, "value_float") is not None
                     or _attr(node, "value_floats") is not None else TensorProto.INT64]
        elif op in ("If", "Loop"):
            branch = _subgraphs(node)[0]
            outs = list(branch.output)[-len(node.output):]
            kinds = [o.type.tensor_type.elem_type or types.get(o.name, 0) for o in outs]
        elif op == "TopK":
            kinds = [types.get(ins[0], 0), TensorProto.INT64]
        else:  # the data input decides: Where's x, GatherBlockQuantized's scales
            first = {"Where": 1, "GatherBlockQuantized": 2, "DequantizeLinear": 1}.get(op, 0)
            kinds = [types.get(node.input[first], 0)] if len(node.input) > first else [0]
        for i, out in enumerate(node.output):
            if out:
                types[out] = kinds[min(i, len(kinds) - 1)]


def _is_float(t: int) -> bool:
    return t in (FLOAT, HALF)


# ---------------------------------------------------------------- islands
class _Converter:
    def __init__(self, model: onnx.ModelProto, half_io: Iterable[str]):
        self.model, self.half_io = model, set(half_io)
        self.types: dict[str, int] = {}
        _elem_types(model.graph, self.types)
        self.consts: dict[str, np.ndarray] = {}  # float constants, as float32
        self._gather_consts(model.graph)
        self.island: set[str] = {i.name for i in model.graph.input if self.types.get(
            i.name) == FLOAT and i.name not in self.half_io}  # float32 IO: cast at the edge
        self.copies: dict[str, str] = {}  # constant -> its float32 copy's name
        self._island_nodes: set[tuple[str, ...]] = set()  # by outputs: proto wrappers come
        # and go, so id() would not name a node
        self._scopes = 0  # subgraphs rewritten: their casts' names differ from the outer ones

    def _gather_consts(self, graph: onnx.GraphProto) -> None:
        for t in graph.initializer:
            if _is_float(t.data_type):
                self.consts[t.name] = numpy_helper.to_array(t).astype(np.float32)
        for node in graph.node:
            value = _attr(node, "value") if node.op_type == "Constant" else None
            if value is not None and _is_float(value.data_type):
                self.consts[node.output[0]] = numpy_helper.to_array(value).astype(np.float32)
            for sub in _subgraphs(node):
                self._gather_consts(sub)

    def _starts_island(self, node: onnx.NodeProto) -> bool:
        op, ins = node.op_type, list(node.input)
        if op == "Cast":  # an integer or bool made float: positions, masks
            return _attr(node, "to") == FLOAT and not _is_float(self.types.get(ins[0], 0))
        if op == "Pow" and ins[1] in self.consts:
            e = self.consts[ins[1]]
            return e.size == 1 and float(e.reshape(())) >= 2
        if op == "Mul":
            return ins[0] == ins[1] and _is_float(self.types.get(ins[0], 0))
        return op in FLOAT32_ONLY and any(_is_float(self.types.get(x, 0)) for x in ins if x)

    def mark(self, graph: onnx.GraphProto) -> None:
        """Find the island nodes and values, in topological order (subgraphs at their node)."""
        for node in graph.node:
            for sub in _subgraphs(node):
                self.mark(sub)
            floats = [x for x in node.input if x and _is_float(self.types.get(x, 0))]
            grows = node.op_type in ISLAND_OPS and any(x in self.island for x in floats) and \
                all(x in self.island or x in self.consts for x in floats)
            if self._starts_island(node) or grows:
                self._island_nodes.add(tuple(node.output))
                self.island.update(x for x in node.output if _is_float(self.types.get(x, 0)))

    # ------------------------------------------------------------ rewriting
    def rewrite(self, graph: onnx.GraphProto, top: bool = False) -> None:
        casts: dict[str, str] = {}  # this graph's casts: value -> cast value
        nodes: list[onnx.NodeProto] = []
        self._scopes += 0 if top else 1
        scope = "" if top else f".{self._scopes}"

        def cast(x: str, to: int) -> str:
            name = (f"{x}.f16" if to == HALF else f"{x}.f32") + scope
            if name not in casts:
                casts[name] = name
                nodes.append(helper.make_node("Cast", [x], [name], to=to, name=f"Cast_{name}"))
            return name

        for node in graph.node:
            for sub in _subgraphs(node):
                self.rewrite(sub)
            inside = tuple(node.output) in self._island_nodes
            for i, x in enumerate(node.input):
                if not x or not _is_float(self.types.get(x, 0)):
                    continue
                if inside and x in self.consts:
                    node.input[i] = self._copy(x)
                elif inside and x not in self.island:
                    node.input[i] = cast(x, FLOAT)
                elif not inside and x in self.island:
                    node.input[i] = cast(x, HALF)
            if not inside:
                self._halve_attrs(node)
            nodes.append(node)
        for out in graph.output:  # a subgraph's outputs are float16: both branches agree
            if not top and out.name in self.island:
                out.name = cast(out.name, HALF)
        graph.ClearField("node")
        graph.node.extend(nodes)
        self._retype(graph, top)

    def _copy(self, x: str) -> str:
        """The float32 copy of constant `x` an island reads (a top-level initializer, which
        every subgraph sees)."""
        if x not in self.copies:
            self.copies[x] = f"{x}.f32"
            self.model.graph.initializer.append(
                numpy_helper.from_array(saturate(self.consts[x]), f"{x}.f32"))
        return self.copies[x]

    def _halve_attrs(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        for a in node.attribute:
            if op == "Cast" and a.name == "to" and a.i == FLOAT:
                a.i = HALF
            elif op in ("Constant", "ConstantOfShape") and a.name == "value" and \
                    a.t.data_type == FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(to_half(numpy_helper.to_array(a.t)),
                                                     a.t.name))
            elif op == "Constant" and a.name in ("value_float", "value_floats"):
                value = np.array(a.f if a.name == "value_float" else list(a.floats))
                node.ClearField("attribute")
                node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(
                    to_half(value))))
                return

    def _retype(self, graph: onnx.GraphProto, top: bool) -> None:
        for i, t in enumerate(graph.initializer):
            if t.data_type == FLOAT and t.name not in self.copies.values():
                graph.initializer[i].CopyFrom(numpy_helper.from_array(
                    to_half(numpy_helper.to_array(t)), t.name))
        for v in [*graph.value_info, *([] if top else [*graph.input, *graph.output])]:
            if v.type.tensor_type.elem_type == FLOAT and v.name not in self.island:
                v.type.tensor_type.elem_type = HALF
        if top:
            for v in [*graph.input, *graph.output]:
                if v.name in self.half_io and v.type.tensor_type.elem_type == FLOAT:
                    v.type.tensor_type.elem_type = HALF

    def float32_outputs(self) -> None:
        """Each float output that the graph computes in float16: made under `NAME.f16`, and
        cast to float32 as `NAME`."""
        g = self.model.graph
        for out in g.output:
            name = out.name
            if out.type.tensor_type.elem_type != FLOAT or name in self.island:
                continue
            _rename(g, name, f"{name}.f16", top=True)
            g.node.append(helper.make_node("Cast", [f"{name}.f16"], [name], to=FLOAT,
                                           name=f"Cast_{name}"))


def _rename(graph: onnx.GraphProto, old: str, new: str, top: bool = False) -> None:
    """`old` -> `new` wherever a node makes or reads it, and as a subgraph's output (a top-level
    output keeps its name: a Cast makes it)."""
    for node in graph.node:
        for field in (node.input, node.output):
            for i, x in enumerate(field):
                if x == old:
                    field[i] = new
        for sub in _subgraphs(node):
            _rename(sub, old, new)
    for out in [] if top else graph.output:
        if out.name == old:
            out.name = new


def _reads(graph: onnx.GraphProto) -> set[str]:
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for sub in _subgraphs(node):
            names |= _reads(sub)
    return names


def convert_float16(model: onnx.ModelProto, half_io: Iterable[str] = ()) -> onnx.ModelProto:
    """A copy of `model` that computes in float16 (see the module docstring); the float inputs
    and outputs stay float32 except those named in `half_io`."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    c = _Converter(model, half_io)
    c.mark(model.graph)
    c.rewrite(model.graph, top=True)
    c.float32_outputs()
    # a constant only islands read is read as its float32 copy now (inputs' defaults stay)
    read = _reads(model.graph) | {i.name for i in model.graph.input}
    kept = [t for t in model.graph.initializer if t.name in read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model


# ---------------------------------------------------------------- export and save
class _Half(Mapping):
    """The weights as the float16 file stores them, converted one tensor at a time as the
    export reads it (a `LazyWeights` stays lazy). Integer tensors (quantized codes) pass."""

    def __init__(self, weights: Mapping[str, np.ndarray]):
        self._weights = weights

    def __getitem__(self, name: str) -> np.ndarray:
        a = np.asarray(self._weights[name])
        if a.dtype not in (np.float32, np.float64):
            return a
        if np.abs(a).max(initial=0) > F16_MAX:
            raise ArchcError([Diagnostic("E0400", f"weight `{name}` exceeds float16's range "
                                         f"(|w| up to {np.abs(a).max():.4g} > 65504)",
                                         help="compile with `--dtype float32`")])
        return a.astype(np.float16)

    def __iter__(self):
        return iter(self._weights)

    def __len__(self) -> int:
        return len(self._weights)


def export_float16(graph, weights, half_io: Iterable[str] = (), check: bool = True
                   ) -> onnx.ModelProto:
    """`export_onnx` of `graph`, computing in float16. The weights are converted as they are
    read, so the float32 copy of the file never exists."""
    from archc.backends.onnx_export import export_onnx

    model = convert_float16(export_onnx(graph, _Half(weights), check=False), half_io)
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def save_float16(models, half_io: Iterable[str] = ()) -> tuple[list[onnx.ModelProto], list[str]]:
    """`onnx_save.save_models` for float16: export each `(graph, weights, path)`, all files or
    none. Past the external-data limit (ARCHC_EXTERNAL_DATA_BYTES, float16 bytes) a model keeps
    its initializers in `FILE.onnx.data`, each at a multiple of ALIGN bytes."""
    from archc.backends.onnx_export import model_bytes
    from archc.backends.onnx_save import EXTERNAL_OVER
    from archc.files import write_files

    limit = int(os.environ.get("ARCHC_EXTERNAL_DATA_BYTES", EXTERNAL_OVER))
    protos, files, unchecked = [], {}, []
    for graph, weights, path in models:
        model = export_float16(graph, weights, half_io, check=False)
        path, size = Path(path), sum(len(t.raw_data) for t in model.graph.initializer)
        if size < 2**31 - 2**27:  # protobuf's limit, with room for the graph
            onnx.checker.check_model(model, full_check=True)
        else:  # checked from its files once written
            unchecked.append(path)
        if size > limit:
            data = path.with_name(path.name + ".data")
            files[data] = _externalize(model, data.name)
        protos.append(model)
        files[path] = model_bytes(model)
    write_files(files)
    for path in unchecked:
        onnx.checker.check_model(str(path), full_check=True)
    return protos, [str(p) for p in sorted(files, key=lambda p: str(p).endswith(".data"))]


def _externalize(model: onnx.ModelProto, location: str):
    """Move the initializers' bytes out of `model` (in place), all but small constants;
    returns the writer of the data file."""
    from archc.backends.onnx_export import ALIGN

    chunks, offset = [], 0
    inputs = {i.name for i in model.graph.input}  # overridable defaults stay inline
    for t in sorted(model.graph.initializer, key=lambda t: t.name):
        if t.name in inputs or len(t.raw_data) < 1024:
            continue
        raw = t.raw_data  # numpy_helper.from_array writes raw_data, never the typed fields
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", offset), ("length", len(raw))):
            entry = t.external_data.add()
            entry.key, entry.value = key, str(value)
        chunks.append((offset, raw))
        offset += -(-len(raw) // ALIGN) * ALIGN

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            for at, raw in chunks:
                f.seek(at)
                f.write(raw)
            f.truncate(-(-f.tell() // ALIGN) * ALIGN)

    return write
