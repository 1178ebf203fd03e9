"""archc/backends/onnx_gate.py on hand-made graphs: what only else branches read moves behind one
If, the numbers stay those of the graph before (both conditions, against NumPy formulas), what a
then branch or the main graph reads stays, and a gate that would close a cycle is not made."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from archc.backends.onnx_gate import gate_else_only, outer_refs

F, B = TensorProto.FLOAT, TensorProto.BOOL


def _branch(name, nodes, out):
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, F, None)])


def _layer(k: int, x: str, cond: str, then_reads: str | None = None) -> onnx.NodeProto:
    """If(cond, x + 1 (+ then_reads), x * big + 1): the else branch reads `big`."""
    extra = [then_reads] if then_reads else []
    then = _branch(f"fast{k}", [helper.make_node("Sum", [x, "one", *extra], [f"t{k}"])], f"t{k}")
    exact = _branch(f"exact{k}", [helper.make_node("Mul", [x, "big"], [f"m{k}"]),
                                  helper.make_node("Add", [f"m{k}", "one"], [f"e{k}"])], f"e{k}")
    return helper.make_node("If", [cond], [f"y{k}"], name=f"layer{k}", then_branch=then,
                            else_branch=exact)


def _model(nodes, extra_inputs=()):
    inputs = [helper.make_tensor_value_info("x", F, [2, 3]),
              helper.make_tensor_value_info("flag", B, []), *extra_inputs]
    inits = [helper.make_tensor("one", F, [], [1.0])]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y1", F, [2, 3])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _gated(model):
    g = model.graph
    known = {v.name: v.type.tensor_type.elem_type for v in g.input}
    known |= {t.name: t.data_type for t in g.initializer}
    nodes = gate_else_only(list(g.node), {o.name for o in g.output}, known)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    onnx.checker.check_model(out, full_check=True)
    return out


def _run(model, **feeds):
    return ort.InferenceSession(model.SerializeToString()).run(["y1"], feeds)[0]


def _two_layers(then_reads=None):
    """big = Exp(x) (a stand-in for the shared bias), read by both layers' exact branches."""
    return [helper.make_node("Exp", ["x"], ["big"], name="exp"),
            helper.make_node("Not", ["flag"], ["c0"], name="not"),  # layer 0's condition
            _layer(0, "x", "c0", then_reads), _layer(1, "y0", "flag", then_reads)]


def test_a_value_only_exact_branches_read_moves_behind_one_gate():
    model = _model(_two_layers())
    gated = _gated(model)
    main = [n.op_type for n in gated.graph.node]
    assert "Exp" not in main and main.count("If") == 3
    (gate,) = [n for n in gated.graph.node if n.name == "gated_values"]
    assert list(gate.output) == ["big"]
    cond = next(n for n in gated.graph.node if n.output[0] == gate.input[0])
    assert cond.op_type == "And" and list(cond.input) == ["c0", "flag"]  # both layers' conditions
    x = np.arange(6, dtype=np.float32).reshape(2, 3) / 6
    for flag in (False, True):  # layer 0 fast and layer 1 exact, then the other way round
        y0 = x * np.exp(x) + 1 if flag else x + 1
        y1 = y0 + 1 if flag else y0 * np.exp(x) + 1
        for m in (model, gated):
            np.testing.assert_allclose(_run(m, x=x, flag=np.array(flag)), y1, rtol=1e-6)


def test_what_a_then_branch_or_the_main_graph_reads_stays():
    model = _model(_two_layers(then_reads="big"))  # the fast branches read it too
    assert _gated(model).graph.node == model.graph.node
    nodes = [*_two_layers(), helper.make_node("Identity", ["big"], ["seen"], name="main")]
    model = _model(nodes)
    assert _gated(model).graph.node == model.graph.node


def test_a_gate_that_would_close_a_cycle_is_not_made():
    """Layer 1's condition comes from layer 0's output, which reads the gated value: the gate
    would need its own reader's result. The nodes stay as they were."""
    nodes = _two_layers()
    nodes[3] = _layer(1, "y0", "late")
    nodes.insert(3, helper.make_node("ReduceMax", ["y0"], ["r"], keepdims=0, name="r"))
    nodes.insert(4, helper.make_node("Greater", ["r", "one"], ["late"], name="late"))
    model = _model(nodes)
    assert _gated(model).graph.node == model.graph.node


def test_a_placeholder_of_unknown_type_leaves_the_graph_alone():
    nodes = _two_layers()
    nodes[0] = helper.make_node("Exp", ["x"], ["big"], name="exp", domain="com.example")
    model = _model(nodes)
    assert gate_else_only(list(model.graph.node), {"y1"}, {"x": F, "flag": B, "one": F}) == \
        list(model.graph.node)


@pytest.mark.parametrize("nested", [False, True])
def test_outer_refs_see_through_nested_branches(nested):
    inner = _layer(9, "u", "flag")
    sub = _branch("outer", [inner] if nested else inner.attribute[0].g.node, "y9" if nested
                  else inner.attribute[0].g.output[0].name)
    assert outer_refs(sub) == ({"u", "flag", "big", "one"} if nested else {"u", "big", "one"})
