"""Packed projections (issue 13): matmuls of one activation by 2-D parameters (Q/K/V, SwiGLU's
gate and up) become one matmul by the weights' concat, then slices; biases are packed too when
every matmul has one. Checked: what fired and where it must not (with the reason), -O2 against
-O1 within 1e-5 on NumPy and onnxruntime, full and through the KV cache, on llama_tiny and an
imported transformers LLaMA; the concat costs nothing per call (folded by onnxruntime at load,
computed once by the NumPy interpreter's `bind`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import ROOT, perturbed_params
from safetensors.numpy import load_file
from test_fusions import G

import archc
from archc.backends.numpy_interp import bind, compile_graph, run_graph
from archc.backends.onnx_export import export_onnx, model_bytes
from archc.backends.ort import run_onnx
from archc.hf import import_hf
from archc.ir.types import TensorType
from archc.ir.verify import verify
from archc.kvcache import incremental_logits
from archc.lower import lower
from archc.passes.fusions import RULESETS
from archc.passes.fusions.packing import PackProjections
from archc.passes.rewrite import apply_rules

rng = np.random.default_rng(13)


def _param(b: G, params: dict, name: str, *shape) -> object:
    params[name] = rng.standard_normal(shape).astype(np.float32)
    return b.g.add_param(name, TensorType("float32", shape))


def _fuse(b: G, params: dict, outs: dict, expect: dict) -> dict[str, str]:
    for name, y in outs.items():
        b.g.set_output(name, y)
    before = run_graph(b.g, b.feeds, params)
    why: dict[str, str] = {}
    fired = apply_rules(b.g, RULESETS, why_not=why)
    verify(b.g)
    assert fired == Counter(expect), (fired, why)
    after = run_graph(b.g, b.feeds, params)
    theirs = run_onnx(export_onnx(b.g, params), b.feeds)
    for name in outs:
        np.testing.assert_allclose(after[name], before[name], atol=1e-5, rtol=0)
        np.testing.assert_allclose(theirs[name], before[name], atol=1e-5, rtol=0)
    return why


def _ops(g) -> Counter:
    return Counter(n.op for n in g.nodes() if n.kind == "op")


@pytest.mark.parametrize("bias", ["all", "some", "none"])
def test_projections_of_one_x_pack_with_their_biases_when_all_have_one(bias):
    b, params = G(), {}
    x = b.f32("x", 2, 3, 8)
    outs = {}
    for i, n in enumerate((8, 4, 4)):
        y = b.matmul(x, _param(b, params, f"w{i}", 8, n))
        if bias == "all" or (bias == "some" and i == 0):
            y = b.add(y, _param(b, params, f"b{i}", n))
        outs[f"y{i}"] = y
    _fuse(b, params, outs, {"pack_projections": 1})
    ops = _ops(b.g)
    assert ops["matmul"] == 1 and ops["slice"] == 3
    assert ops["concat"] == (2 if bias == "all" else 1)
    assert ops["add"] == {"all": 1, "some": 1, "none": 0}[bias]


def test_weights_that_are_not_2d_parameters_do_not_pack():
    b, params = G(), {}
    x = b.f32("x", 2, 3, 8)
    act = b.f32("act", 8, 4)  # an activation, not a parameter
    bank = _param(b, params, "bank", 2, 8, 4)  # a 3-D weight (an expert bank)
    w = _param(b, params, "w", 8, 4)
    outs = {"a": b.matmul(x, act), "b": b.matmul(x, bank), "c": b.matmul(x, w)}
    why = _fuse(b, params, outs, {})
    assert "pack_projections" in why
    rule = PackProjections()
    reasons = [str(rule.try_match(b.g, outs[k])) for k in "abc"]
    assert reasons == [f"the weight {act!r} is an input, not a parameter (at {act!r})",
                       f"the weight {bank!r} is f32[2,8,4], not a 2-D [in, out] parameter "
                       f"(at {bank!r})",
                       f"{x!r} has no other matmul by a 2-D parameter to pack with "
                       f"{outs['c']!r} (at {x!r})"]


def test_concat_of_weights_is_free_per_call_on_both_backends(tmp_path: Path):
    spec = (ROOT / "specs" / "llama_tiny.arch").read_text()
    g = archc.compile(archc.parse(spec, "l.arch"), level=2)
    w = archc.init_params(g, 0)
    plan = bind(compile_graph(g), w)  # the NumPy interpreter concatenates once, at bind
    assert not any(s.node.op == "concat" for s in plan.steps)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(model_bytes(export_onnx(g, w)), opts,
                         providers=["CPUExecutionProvider"])
    m = onnx.load(str(tmp_path / "opt.onnx"))
    inits = {i.name for i in m.graph.initializer}
    assert not [n for n in m.graph.node if n.op_type == "Concat"
                and all(i in inits for i in n.input)]


@pytest.fixture(scope="module")
def llama():
    module = archc.parse((ROOT / "specs" / "llama_tiny.arch").read_text(), "llama_tiny.arch")
    o1 = archc.optimize(lower(module), 1)
    o2 = archc.optimize(lower(module), 2)
    c1 = archc.optimize(lower(module, cache=True), 1)
    c2 = archc.optimize(lower(module, cache=True), 2)
    return o1, o2, c1, c2, perturbed_params(o1)


def test_llama_tiny_packs_qkv_and_gate_up_and_equals_o1(llama):
    o1, o2, c1, c2, w = llama
    for g in (o2, c2):  # 4 layers: Q/K/V and gate/up
        assert g.meta["fusions"].fired["pack_projections"] == 8
        assert _ops(g)["matmul"] == 4 * 4 + 1  # per layer: qkv, o, gate_up, down
    ids = np.random.default_rng(1).integers(0, 1024, (2, 9))
    mask = np.ones_like(ids)
    mask[1, :2] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    for backend in ("numpy", "onnxruntime"):
        ref = archc.run(o1, feeds, w, backend=backend)["logits"]
        got = archc.run(o2, feeds, w, backend=backend)["logits"]
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
        ref = incremental_logits(c1, w, ids, mask, 4, backend)
        got = incremental_logits(c2, w, ids, mask, 4, backend)
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_imported_llama_packs_and_equals_o1(tmp_path: Path):
    spec = import_hf(ROOT / "tests" / "fixtures" / "hf" / "llama", tmp_path).spec
    w = load_file(str(tmp_path / "model.safetensors"))
    ref = np.load(ROOT / "tests" / "fixtures" / "hf" / "llama" / "reference.npz")
    feeds = {"input_ids": ref["input_ids"], "attention_mask": ref["attention_mask"]}
    o1, o2 = archc.compile(spec, level=1), archc.compile(spec, level=2)
    c1 = archc.optimize(lower(archc.parse(spec), cache=True), 1)
    c2 = archc.optimize(lower(archc.parse(spec), cache=True), 2)
    layers = _ops(o2)["sdpa"]
    assert layers >= 2
    assert o2.meta["fusions"].fired["pack_projections"] == 2 * layers
    assert c2.meta["fusions"].fired["pack_projections"] == 2 * layers
    prefill = int(ref["prefill"])
    for backend in ("numpy", "onnxruntime"):
        np.testing.assert_allclose(archc.run(o2, feeds, w, backend=backend)["logits"],
                                   archc.run(o1, feeds, w, backend=backend)["logits"],
                                   atol=1e-5, rtol=0)
        np.testing.assert_allclose(
            incremental_logits(c2, w, ref["input_ids"], ref["attention_mask"], prefill, backend),
            incremental_logits(c1, w, ref["input_ids"], ref["attention_mask"], prefill, backend),
            atol=1e-5, rtol=0)


def test_rewritten_nodes_keep_the_lowered_node_they_stand_for():
    """Provenance (`graph.meta["origin"]`): every node the packing made maps to a node lowering
    made in the same repeat step, so a shared repeat's steps stay apart (archc/viz/ir.py)."""
    graph = archc.compile(ROOT / "specs" / "universal_shared.arch", level=1)
    lowered = max(n.id for n in graph.nodes())
    steps = [r["nodes"] for r in graph.meta["calls"] if r["block"] == "repeat"]
    fired = apply_rules(graph, RULESETS)
    assert fired["pack_projections"] == 6, fired  # Q/K/V once a step
    origin = graph.meta["origin"]
    made = [n for n in graph.nodes() if n.id > lowered]
    assert made and all(origin[n.id] <= lowered for n in made)
    packed = [n for n in made if n.kind == "op" and n.op == "matmul"
              and n.inputs[1].op == "concat"]
    found = [next(i for i, (lo, hi) in enumerate(steps) if lo <= origin[n.id] < hi)
             for n in packed]
    assert sorted(found) == list(range(6))
