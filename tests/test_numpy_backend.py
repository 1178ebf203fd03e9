"""The NumPy backend's compiled plan (archc.backends.numpy_interp): the same numbers as the
plain Autodidax loop over the graph, values dropped right after their last reader, one compile
per `Runner`, errors and traces that still name the node; and the kernels rewritten for speed
give the numbers of the formulas they replace."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ROOT, perturbed_params

import archc
from archc.backends import numpy_interp
from archc.backends.numpy_interp import (
    InterpreterError,
    aligned_copy,
    bind,
    compile_graph,
    run_graph,
    run_plan,
)
from archc.cli import random_inputs
from archc.inputs import validate
from archc.ir.graph import Graph
from archc.ir.types import TensorType
from archc.kvcache import Session
from archc.lower import lower
from archc.ops import OPS

SPECS = ["llama_tiny", "gpt2_small", "t5_small_style", "moe_general", "transformer_xl"]


def plain_loop(graph: Graph, inputs: dict, params: dict) -> dict:
    """The reference: `eval_jaxpr` as Autodidax writes it, every value kept to the end."""
    env = {}
    for n in graph.nodes():
        if n.kind == "input":
            env[n.id] = inputs[n.name]
        elif n.kind == "param":
            env[n.id] = params[n.name]
        elif n.kind == "const":
            env[n.id] = n.value
        else:
            out = OPS[n.op].numpy(*(env[i.id] for i in n.inputs), **n.attrs)
            env[n.id] = out if isinstance(out, tuple) else np.asarray(out)
    return {name: env[n.id] for name, n in graph.outputs.items()}


def _case(name: str, level: int):
    g = archc.optimize(lower(archc.parse_file(ROOT / "specs" / f"{name}.arch")), level)
    return g, perturbed_params(g), validate(g, random_inputs(g, batch=2, seq=5, seed=1))


@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("name", SPECS)
def test_plan_gives_the_plain_loops_numbers_bit_for_bit(name, level):
    g, w, feeds = _case(name, level)
    want, got = plain_loop(g, feeds, w), run_graph(g, feeds, w)
    assert set(got) == set(want) == set(g.outputs)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    plan = compile_graph(g)
    again = run_plan(plan, feeds, w)  # a plan is reusable: nothing of a run stays in it
    assert all(v is None or any(v is n.value for n in g.nodes()) for v in plan.values)
    for k in want:
        np.testing.assert_array_equal(again[k], want[k], err_msg=k)


def test_values_are_dropped_after_their_last_reader(monkeypatch):
    g, w, feeds = _case("llama_tiny", 2)
    order = g.nodes()
    last = {i.id: k for k, n in enumerate(order) for i in n.inputs}
    outputs = {n.id for n in g.outputs.values()}
    live_after: list[set[int]] = []
    evaluate = numpy_interp._evaluate

    def spy(step, values):
        out = evaluate(step, values)
        live_after.append((step.out, {k for k, v in enumerate(values) if v is not None}))
        return out

    monkeypatch.setattr(numpy_interp, "_evaluate", spy)
    got = run_graph(g, feeds, w)
    ops = [k for k, n in enumerate(order) if n.kind == "op"]
    assert [k for k, _ in live_after] == ops
    for (k, live), prev in zip(live_after[1:], ops):
        # before step k runs: every value made so far that a later node (k or after) reads,
        # or that is an output, and nothing else (consts and unused feeds aside)
        made = {j for j, n in enumerate(order) if j <= prev and n.kind == "op"}
        want = {j for j in made if order[j].id in outputs or last.get(order[j].id, k) >= k}
        assert live & made == want, f"before {order[k]}"
    np.testing.assert_array_equal(got["logits"], plain_loop(g, feeds, w)["logits"])


def test_a_runner_compiles_its_graph_once(monkeypatch):
    g = archc.optimize(lower(archc.parse_file(ROOT / "specs" / "llama_tiny.arch"), cache=True), 2)
    w = perturbed_params(g)
    s = Session(g, w, "numpy")
    calls = []
    monkeypatch.setattr(numpy_interp, "compile_graph", lambda *a: calls.append(a))
    ids = np.array([[3, 1, 4, 1]])
    steps = [s.prefill(ids[:, :2]), s.step(ids[:, 2:3]), s.step(ids[:, 3:])]
    assert calls == []
    monkeypatch.undo()
    whole = run_graph(g, {"input_ids": ids, "attention_mask": np.ones_like(ids),
                          **Session(g, w)._empty(1)}, w)["logits"]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), whole, atol=1e-5, rtol=0)


def test_bind_lays_out_a_transposed_weight_once():
    g, w, feeds = _case("gpt2_small", 2)  # the LM head reads the tied table transposed
    plan = compile_graph(g)
    bound = bind(plan, w)
    hoisted = [s for s in plan.steps if s not in bound.steps]
    assert {s.node.op for s in hoisted} == {"transpose", "concat"}  # concat: packed Q/K/V
    hoisted = [s for s in hoisted if s.node.op == "transpose"]
    assert len(hoisted) == 1
    table = bound.values[hoisted[0].out]
    assert table.flags.c_contiguous and np.array_equal(table, w["wte.weight"].T)
    assert table.ctypes.data % 64 == 0
    assert bound.feeds == tuple(f for f in plan.feeds if f[1] == "input")
    want = plain_loop(g, feeds, w)["logits"]
    for _ in range(2):  # the bound plan is reusable, the weights need not be passed again
        np.testing.assert_allclose(run_plan(bound, feeds, {})["logits"], want, rtol=1e-6,
                                   atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("shape", [(3,), (5, 7), (64, 33, 2)])
def test_aligned_copy_is_a_contiguous_copy_on_a_cache_line(shape):
    a = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    for view in (a, a.T, a[::-1]):
        out = aligned_copy(view)
        assert out.ctypes.data % 64 == 0 and out.flags.c_contiguous and out.dtype == a.dtype
        assert np.array_equal(out, view) and not np.shares_memory(out, a)


def _broken() -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType("float32", ("n",)))
    y = g.add_op("reshape", (x,), {"shape": (3, -1)}, TensorType("float32", (3, "m")))
    g.set_output("y", g.add_op("neg", (y,), type=y.type))
    return g


def test_a_failing_kernel_is_reported_with_its_node():
    with pytest.raises(InterpreterError, match=r"while executing %1:f32\[3,m\] = reshape\(%0\)"):
        run_graph(_broken(), {"x": np.ones(4, np.float32)}, {})
    assert run_graph(_broken(), {"x": np.ones(6, np.float32)}, {})["y"].shape == (3, 2)


def test_an_unknown_op_is_reported_with_its_node():
    g = _broken()
    g.nodes()[-1].op = "negate"
    with pytest.raises(InterpreterError, match=r"while executing %2.* = negate\(%1\)"):
        run_graph(g, {"x": np.ones(6, np.float32)}, {})


def test_debug_2_traces_every_node(monkeypatch, capsys):
    monkeypatch.setenv("ARCHC_DEBUG", "2")
    run_graph(_broken(), {"x": np.ones(6, np.float32)}, {})
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("%1:f32[3,m] = reshape(%0)") and lines[0].endswith("-> (3, 2)")
    assert lines[1].startswith("%2:f32[3,m] = neg(%1)") and len(lines) == 2


def test_gelu_tanh_is_the_formula_written_out():
    x = np.concatenate([np.linspace(-12, 12, 20001), np.random.default_rng(0).normal(0, 3, 9999)])
    x = x.astype(np.float32)
    x64 = x.astype(np.float64)
    want = (0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3))))
    got = OPS["gelu"].numpy(x, approximate="tanh")
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("op", ["relu", "sigmoid", "silu", "log", "cumsum", "softmax"])
def test_kernels_return_new_arrays(op):
    x = np.abs(np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)) + 0.1
    attrs = {"axis": -1} if op in ("cumsum", "softmax") else {}
    out = OPS[op].numpy(x, **attrs)
    assert out.dtype == np.float32 and not np.shares_memory(out, x)


def test_archc_run_binds_a_plan_once_per_graph_and_weights(monkeypatch):
    """archc.run on NumPy binds once (packed weights concatenated once, not every call), and
    new weight arrays make a new plan; the numbers equal a fresh unbound run."""
    graph = archc.compile(ROOT / "specs" / "llama_tiny.arch", level=2)
    w = archc.init_params(graph, 0)
    ids = np.random.default_rng(1).integers(0, 1024, (2, 5))
    calls = []
    real = numpy_interp.bind
    monkeypatch.setattr(numpy_interp, "bind", lambda p, w: calls.append(1) or real(p, w))
    outs = [archc.run(graph, {"input_ids": ids}, w)["logits"] for _ in range(3)]
    assert len(calls) == 1
    other = {k: v * 1.5 for k, v in w.items()}
    moved = archc.run(graph, {"input_ids": ids}, other)["logits"]
    assert len(calls) == 2 and np.abs(moved - outs[0]).max() > 1e-3
    fresh = numpy_interp.run_graph(graph, validate(graph, {"input_ids": ids}), w)["logits"]
    for out in outs:
        np.testing.assert_array_equal(out, fresh)
