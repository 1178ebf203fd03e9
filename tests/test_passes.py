"""Each pass on small hand-built graphs: golden IR text of before/after, and the numbers."""

from __future__ import annotations

import numpy as np
from conftest import GOLDEN, check_golden

import archc
from archc.ir.graph import Graph
from archc.ir.printer import print_graph
from archc.ir.types import TensorType
from archc.ir.verify import VerifyError, verify
from archc.passes import PassError, run_pipeline
from archc.passes.cse import eliminate_common_subexpressions
from archc.passes.dce import eliminate_dead_code
from archc.passes.fold_constants import fold_constants
from archc.passes.infer_shapes import infer_node, infer_shapes


def _op(g, name, *inputs, **attrs):
    node = g.add_op(name, inputs, attrs)
    node.type = infer_node(node)
    return node


def _graph():
    g = Graph("demo")
    x = g.add_input("x", TensorType("float32", ("batch", 4)))
    w = g.add_param("w", TensorType("float32", (4, 4)), init="xavier")
    two = g.add_const(np.float32(2.0))
    three = g.add_const(np.float32(3.0))
    six = _op(g, "mul", two, three)  # folds to 6
    a = _op(g, "matmul", x, w)
    b = _op(g, "matmul", x, w)  # same as a: CSE
    c = _op(g, "add", a, six)
    d = _op(g, "add", six, b)  # commutative twin of c once b == a
    _op(g, "tanh", c)  # dead
    g.set_output("y", _op(g, "mul", c, d))
    return g


def _numbers(g):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    w = rng.standard_normal((4, 4)).astype(np.float32)
    return archc.run(g, {"x": x}, {"w": w})["y"]


def test_each_pass_golden_and_numbers():
    before = _numbers(_graph())
    sections = []
    for p in (fold_constants, eliminate_common_subexpressions, eliminate_dead_code):
        g = _graph()
        text_in = print_graph(g)
        result = p(g)
        verify(result.graph)
        assert result.changed
        np.testing.assert_allclose(_numbers(result.graph), before, rtol=1e-6)
        sections.append(f"# title: {p.__name__}\n--- input\n{text_in}--- expected\n"
                        f"{print_graph(result.graph)}")
        assert not p(result.graph).changed or p is fold_constants  # idempotent
    check_golden(GOLDEN / "passes" / "basic.txt", "\n".join(sections))


def test_pipeline_reaches_fixpoint():
    g = run_pipeline(_graph())
    ops = [n.op for n in g.nodes() if n.kind == "op"]
    assert ops == ["matmul", "add", "mul"]  # folded, merged, dead code gone
    np.testing.assert_allclose(_numbers(g), _numbers(_graph()), rtol=1e-6)


def test_fold_does_not_touch_params_or_inputs():
    g = _graph()
    fold_constants(g)
    assert {n.kind for n in g.nodes() if n.op == "matmul"} == {"op"}
    assert "w" in g.params and "x" in g.inputs


def test_verify_catches_broken_graphs_and_names_the_pass():
    g = _graph()
    node = next(n for n in g.nodes() if n.op == "add")
    node.attrs["bogus"] = 1
    try:
        verify(g)
    except VerifyError as e:
        assert "unknown ['bogus']" in str(e)
    else:
        raise AssertionError("verify accepted an unknown attribute")

    def breaks_types(graph):
        from archc.passes import PassResult

        next(n for n in graph.nodes() if n.op == "matmul").type = TensorType("float32", (9,))
        return PassResult(graph, False)

    try:
        run_pipeline(_graph(), (infer_shapes, breaks_types), verify_each=True)
    except PassError as e:
        assert str(e).startswith("after breaks_types (ran: infer_shapes)")
    else:
        raise AssertionError("a broken pass went unnoticed")


def test_erase_node_refuses_used_nodes():
    g = _graph()
    x = g.inputs["x"]
    try:
        g.erase_node(x)
    except ValueError as e:
        assert "still has users" in str(e)
    else:
        raise AssertionError
