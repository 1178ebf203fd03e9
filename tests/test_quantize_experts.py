"""Quantized expert banks: `--weights-dtype int8|int4` stores the 3-D [E, K, N] weights of a
mixture of experts block-wise quantized, each expert as MatMulNBits' tensors stacked on E: the
sparse `moe_experts` op (-O2) becomes `moe_experts_nbits` (archc/ops/moe.py), the dense form's
batched matmul (-O1) `matmul_nbits_bank` (archc/ops/quant.py); one MatMulNBits per expert in
ONNX.

Checked: both ops against onnxruntime and against the float computation over the dequantized
weights; on a bundled spec (moe_general: top-2 of 8 GLU experts plus a one-expert shared bank)
and imported fixtures (Mixtral; GPT-OSS with expert biases and the clamped SwiGLU; Switch's
ReLU experts with capacity), that every bank is quantized, NumPy against onnxruntime (<= 1e-4,
float32 activations), and the quantized model against the float32 model run with the
dequantized weights substituted (<= 1e-4: the only difference to float32 is then the weights,
each within half a quantization step of its float32 value, a whole one symmetric, which
`_substituted` asserts), through the KV cache too; the file sizes; a bank read some other way.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import onnx
import pytest
from conftest import ROOT, perturbed_params
from test_moe_sparse import _f32, _gates  # one random-gates maker
from test_quantize import one_op  # one single-op graph maker

import archc
from archc.backends.numpy_interp import run_graph
from archc.backends.onnx_export import export_onnx, model_bytes
from archc.backends.ort import run_onnx
from archc.cli import main
from archc.hf import import_checkpoint
from archc.ir.graph import Graph
from archc.ir.types import ShapeError
from archc.ir.verify import verify
from archc.kvcache import incremental_logits
from archc.lower import lower
from archc.ops import OPS
from archc.ops.quant import dequantize, n_blocks
from archc.passes.infer_shapes import infer_node
from archc.quantize import quantize, quantize_weight

TOL = 1e-4  # a whole model, NumPy vs onnxruntime at accuracy_level 0 (tests/test_quantize.py)


def _bank(w: np.ndarray, bits: int, block: int, symmetric: bool) -> list[np.ndarray]:
    """W [E, K, N] -> its parts, each expert quantized as MatMulNBits' [N, K], stacked."""
    per = [quantize_weight(we.T, bits, block, symmetric) for we in w]
    return [np.stack([p[i] for p in per]) for i in range(2 if symmetric else 3)]


def _case(x, gates, mats, vecs, attrs, bits, block, symmetric, level=0):
    """moe_experts_nbits' arrays and attributes, and the float weights they came from."""
    parts = [a for w in mats for a in _bank(w, bits, block, symmetric)]
    return [x, gates, *parts, *vecs], {**attrs, "bits": bits, "block_size": block,
                                       "accuracy_level": level}


# moe_experts_nbits' differential cases (x, gates, W1's parts, [W3's], W2's, [biases]), attrs:
# gated SiLU int4 with zero points and an expert no token picks (K = 40 pads a block), ReLU
# MLP with biases int8 symmetric, GPT-OSS's clamped SwiGLU int4 symmetric, tanh GELU int8
# with zero points and 2-D x, and int4 with int8 activations (accuracy_level 4)
SILU = {"act": "silu", "gated": True, "bias": False}
OP_CASES = {"moe_experts_nbits": [
    _case(_f32(2, 5, 40), _gates(2, 5, 4, 2, dead=(3,)), [_f32(4, 40, 24), _f32(4, 40, 24),
          _f32(4, 24, 40)], [], SILU, 4, 32, False),
    _case(_f32(2, 5, 32), _gates(2, 5, 4, 1), [_f32(4, 32, 64), _f32(4, 64, 16)],
          [_f32(4, 64), _f32(4, 16)], {"act": "relu", "gated": False, "bias": True}, 8, 64,
          True),
    _case(_f32(1, 6, 32), _gates(1, 6, 4, 2), [_f32(4, 32, 32, scale=2), _f32(4, 32, 32, scale=2),
          _f32(4, 32, 32)], [_f32(4, 32), _f32(4, 32), _f32(4, 32)],
          {"act": "silu", "gated": True, "bias": True, "limit": 1.5, "alpha": 1.702}, 4, 32,
          True),
    _case(_f32(7, 64), _gates(1, 7, 3, 3)[0], [_f32(3, 64, 32), _f32(3, 32, 64)], [],
          {"act": "gelu_tanh", "gated": False, "bias": False}, 8, 128, False),
    _case(_f32(2, 5, 64), _gates(2, 5, 4, 2), [_f32(4, 64, 32), _f32(4, 64, 32),
          _f32(4, 32, 64)], [], SILU, 4, 32, False, 4),
]}


def _bank_case(x, w, bits, block, symmetric, level=0):
    return [x, *_bank(w, bits, block, symmetric)], {
        "K": w.shape[1], "N": w.shape[2], "bits": bits, "block_size": block,
        "accuracy_level": level}


# matmul_nbits_bank (the dense form: x [..., E or 1, M, K] @ W [E, K, N]): x broadcast over the
# experts (K = 40 pads), x per expert, a rank-3 x, int8 activations
OP_CASES["matmul_nbits_bank"] = [
    _bank_case(_f32(2, 3, 1, 1, 40), _f32(4, 40, 24), 4, 32, False),
    _bank_case(_f32(2, 4, 3, 64), _f32(4, 64, 16), 8, 64, True),
    _bank_case(_f32(1, 5, 32), _f32(3, 32, 8), 4, 32, True),
    _bank_case(_f32(2, 1, 2, 64), _f32(3, 64, 8), 4, 32, False, 4)]


def _one_op(arrays, attrs, op: str = "moe_experts_nbits") -> tuple[Graph, dict, dict]:
    return one_op(arrays, attrs, op)


def _dequantized_bank(parts, k: int, bits: int, block: int) -> np.ndarray:
    """The float32 [E, K, N] a bank's stacked MatMulNBits parts stand for."""
    q, s, zp = (*parts, None)[:3]
    return np.stack([dequantize(q[e], s[e], None if zp is None else zp[e], k, q.shape[1], bits,
                                block).T for e in range(q.shape[0])])


@pytest.mark.parametrize("case", range(len(OP_CASES["moe_experts_nbits"])))
def test_kernel_matches_onnxruntime_and_the_float_op(case):
    arrays, attrs = OP_CASES["moe_experts_nbits"][case]
    g, feeds, params = _one_op(arrays, attrs)
    ours = run_graph(g, feeds, params)["y"]
    theirs = run_onnx(export_onnx(g, params), feeds)["y"]
    assert ours.shape == theirs.shape == g.outputs["y"].type.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    # the float op over the dequantized banks (itself checked against an einsum over every
    # expert in tests/test_moe_sparse.py)
    n = 3 if attrs["gated"] else 2
    per = (len(arrays) - 2 - (n if attrs["bias"] else 0)) // n  # 2 parts symmetric, else 3
    banks = []
    for j in range(n):
        k = banks[0].shape[-1] if j == n - 1 else arrays[0].shape[-1]  # W2 reads the hidden
        parts = arrays[2 + j * per:2 + (j + 1) * per]
        banks.append(_dequantized_bank(parts, k, attrs["bits"], attrs["block_size"]))
    floats = {a: v for a, v in attrs.items() if a not in ("bits", "block_size", "accuracy_level")}
    want = OPS["moe_experts"].numpy(*arrays[:2], *banks, *arrays[2 + n * per:], **floats)
    if attrs["accuracy_level"] == 0:
        np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-5)
    else:  # int8 activations: near, but measurably not float32 (onnxruntime prepacked them)
        assert 1e-3 < np.abs(ours - want).max() < 0.05 * np.abs(want).max()


@pytest.mark.parametrize("case", range(len(OP_CASES["matmul_nbits_bank"])))
def test_bank_kernel_matches_onnxruntime_and_the_dequantized_product(case):
    arrays, attrs = OP_CASES["matmul_nbits_bank"][case]
    g, feeds, params = _one_op(arrays, attrs, "matmul_nbits_bank")
    ours = run_graph(g, feeds, params)["y"]
    theirs = run_onnx(export_onnx(g, params), feeds)["y"]
    w = _dequantized_bank(arrays[1:], attrs["K"], attrs["bits"], attrs["block_size"])
    exact = arrays[0].astype(np.float64) @ w
    assert ours.shape == theirs.shape == exact.shape == g.outputs["y"].type.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    if attrs["accuracy_level"] == 0:
        np.testing.assert_allclose(ours, exact, atol=1e-5)
    else:  # int8 activations: near, but measurably not float32
        assert 1e-3 < np.abs(ours - exact).max() < 0.05 * np.abs(exact).max()


# ---------------------------------------------------------------- whole models
FIXTURES = ROOT / "tests" / "fixtures" / "hf"
SPEC = ROOT / "specs"


@functools.cache
def _model(name: str):
    """(module, weights, feeds, MoE layers)."""
    if name in ("moe_general", "switch"):
        module = archc.parse_file(SPEC / f"{name}.arch")
        ids = np.random.default_rng(3).integers(0, 512, (2, 9))
        mask = np.ones_like(ids)
        mask[1, :3] = 0  # left padding: routed nowhere by moe_ffn's router
        weights = perturbed_params(archc.optimize(lower(module), 1), 3)
        feeds = {"input_ids": ids, "attention_mask": mask}
    else:
        imported = import_checkpoint(FIXTURES / name)
        module = archc.parse(imported.spec, f"<{name}>")
        ref = np.load(FIXTURES / name / "reference.npz")
        weights, feeds = imported.weights, {k: ref[k] for k in ("input_ids", "attention_mask")}
    layers = len(archc.optimize(lower(module), 1).meta["moe"])
    return module, weights, feeds, layers


@functools.cache
def _optimized(name: str, level: int = 2, cache: bool = False) -> Graph:
    return archc.optimize(lower(_model(name)[0], cache=cache), level)


def _quantized(name, dtype, block, symmetric, level=2, cache=False):
    g = copy.deepcopy(_optimized(name, level, cache))
    w = {k: v for k, v in _model(name)[1].items() if k in g.params}
    return quantize(g, w, dtype, block, symmetric, accuracy_level=0, embeddings=False)


def _substituted(graph: Graph, weights: dict, wq: dict, bits: int, block: int) -> dict:
    """The float32 weights of `graph` with each quantized one replaced by what its codes stand
    for: NAME.{qweight,scales,zero_points} of a [K, N] weight, a one-expert bank [1, K, N] or
    an expert bank [E, K, N]."""
    out = {}
    for name, p in graph.params.items():
        if name in wq:
            out[name] = wq[name]
            continue
        parts = [wq[f"{name}.{part}"] for part in ("qweight", "scales", "zero_points")
                 if f"{name}.{part}" in wq]
        shape = p.type.shape
        if parts[0].ndim == 4:
            out[name] = _dequantized_bank(parts, shape[-2], bits, block)
            # each weight within half a step of its float32 value (a whole one symmetric:
            # the clipped top level), the step its block's scale
            k, steps = shape[-2], np.abs(parts[1]).reshape(shape[0], shape[2], -1)
            step = np.repeat(steps, block, axis=-1)[..., :k].transpose(0, 2, 1)
            err = np.abs(out[name] - weights[name])
            assert np.all(err <= step * (0.5 if len(parts) == 3 else 1.0) * (1 + 1e-5) + 1e-7)
        else:
            out[name] = dequantize(*[*parts, None][:3], shape[-2], shape[-1], bits,
                                   block).T.reshape(shape)
        assert np.abs(out[name] - weights[name]).max() > 0  # it really was quantized
    return out


@pytest.mark.parametrize(("name", "dtype", "block", "symmetric"), [
    ("moe_general", "int4", 32, False), ("moe_general", "int8", 64, True),
    ("switch", "int4", 64, True), ("mixtral", "int4", 32, False), ("gpt_oss", "int8", 32, False),
    ("gpt_oss", "int4", 32, True)])
def test_whole_model_quantizes_every_bank_and_keeps_the_numbers(name, dtype, block, symmetric):
    _, weights, feeds, layers = _model(name)
    graph = _optimized(name)
    g, wq = _quantized(name, dtype, block, symmetric)
    verify(g)
    ops = [n.op for n in g.nodes() if n.kind == "op"]
    assert ops.count("moe_experts_nbits") == layers and "moe_experts" not in ops
    banks = [p for bank in graph.meta["moe"] for p in bank["params"]
             if graph.params[p].type.rank == 3]  # not the biases [E, n]: they stay float32
    assert banks and not set(banks) & set(g.params)  # the float banks are gone
    parts = 2 if symmetric else 3
    for p in banks:
        e = graph.params[p].type.shape[0]
        assert [wq[f"{p}.{s}"].shape[0] for s in ("qweight", "scales", "zero_points")
                [:parts]] == [e] * parts
    assert not [p for p in g.params.values() if p.type.rank == 3 and p.type.dtype == "float32"]
    assert g.meta["quantize"] == {"kept": {}}
    ours = run_graph(g, feeds, wq)
    model = export_onnx(g, wq)
    nbits = sum(n.op_type == "MatMulNBits" for n in model.graph.node)
    # one MatMulNBits per expert matrix, and one per 2-D weight (or one-expert bank)
    assert nbits == len(banks) * graph.meta["moe"][0]["experts"] + ops.count("matmul_nbits")
    theirs = run_onnx(model, feeds)
    real = feeds["attention_mask"].astype(bool)
    for out in ours:
        np.testing.assert_allclose(ours[out], theirs[out], atol=TOL, rtol=0, err_msg=out)
    # against the float32 graph with the dequantized weights substituted
    want = run_graph(graph, feeds, _substituted(graph, weights, wq, int(dtype[3:]), block))
    for out in want:
        diff = np.abs(ours[out] - want[out])
        assert (diff[real] if diff.shape[:2] == real.shape else diff).max() <= TOL, out


@pytest.mark.parametrize(("name", "dtype", "symmetric", "level"), [
    ("mixtral", "int4", False, 2), ("gpt_oss", "int8", True, 2), ("mixtral", "int4", True, 1)])
def test_kv_cache_decode_matches_the_full_quantized_run(name, dtype, symmetric, level):
    """Prefill 3 tokens, then one a step: a decode step routes one token, so most experts
    see no row (an empty gather before their MatMulNBits). (moe_general does not lower with
    a KV cache yet: its balance loss broadcasts the gates [B, T, E] with the cache-length
    mask [B, past + T, 1].)"""
    _, _, feeds, layers = _model(name)
    full, wq = _quantized(name, dtype, 32, symmetric, level)
    cached, wc = _quantized(name, dtype, 32, symmetric, level, cache=True)
    op = "moe_experts_nbits" if level == 2 else "matmul_nbits_bank"  # -O1: the dense form
    assert [n.op for n in cached.nodes()].count(op) == layers * (1 if level == 2 else 3)
    assert set(wq) == set(wc) and all(np.array_equal(wq[k], wc[k]) for k in wc)
    want = run_graph(full, feeds, wq)["logits"]
    real = feeds["attention_mask"].astype(bool)
    for backend in ("numpy", "onnxruntime"):
        got = incremental_logits(cached, wc, feeds["input_ids"], feeds["attention_mask"], 3,
                                 backend=backend)
        assert np.abs(got - want)[real].max() <= TOL, backend


def test_float16_stores_the_banks_too():
    g, w16 = _quantized("moe_general", "float16", 32, False)
    banks = [p for p in g.params.values() if p.type.rank == 3]
    assert banks and all(w16[p.name].dtype == np.float16 for p in banks)
    assert {u.op for p in banks for u in g.users(p)} == {"cast"}
    feeds = _model("moe_general")[2]
    want = run_graph(_optimized("moe_general"), feeds,
                     {k: v.astype(np.float32) for k, v in w16.items()})
    got = run_onnx(export_onnx(g, w16), feeds)
    np.testing.assert_allclose(got["logits"], want["logits"], atol=TOL, rtol=0)


@pytest.mark.parametrize(("name", "dtype", "symmetric"), [("moe_general", "int4", False),
                                                          ("gpt_oss", "int8", True)])
def test_dense_form_quantizes_its_banks_too(name, dtype, symmetric):
    """-O1 (the CLI's default) keeps the dense form: x5 [B,T,1,1,d] @ W1 [E,d,h] and
    h [B,T,E,1,h] @ W2 [E,h,d] -> `matmul_nbits_bank`; a one-expert bank (moe_general's shared
    expert) is x @ W[0], a plain `matmul_nbits`."""
    _, weights, feeds, _ = _model(name)
    graph = _optimized(name, 1)
    g, wq = _quantized(name, dtype, 32, symmetric, level=1)
    verify(g)
    banks = [p for bank in graph.meta["moe"] for p in bank["params"]
             if graph.params[p].type.rank == 3]
    ops = [n.op for n in g.nodes() if n.kind == "op"]
    big = [p for p in banks if graph.params[p].type.shape[0] > 1]
    assert ops.count("matmul_nbits_bank") == len(big) and not set(banks) & set(g.params)
    assert g.meta["quantize"] == {"kept": {}}
    ours = run_graph(g, feeds, wq)
    theirs = run_onnx(export_onnx(g, wq), feeds)
    want = run_graph(graph, feeds, _substituted(graph, weights, wq, int(dtype[3:]), 32))
    real = feeds["attention_mask"].astype(bool)
    for out in ours:
        np.testing.assert_allclose(ours[out], theirs[out], atol=TOL, rtol=0, err_msg=out)
        diff = np.abs(ours[out] - want[out])
        assert (diff[real] if diff.shape[:2] == real.shape else diff).max() <= TOL, out


def test_a_bank_read_otherwise_stays_float32_and_says_so():
    """A bank behind another op (here an identity transpose) is not `x @ W`: it stays float32,
    named with its readers in `graph.meta["quantize"]["kept"]` and in a warning."""
    g = copy.deepcopy(_optimized("mixtral", 1))
    mm = next(n for n in g.nodes() if n.kind == "op" and n.op == "matmul" and
              n.inputs[1].kind == "param" and n.inputs[1].type.rank == 3)
    bank = mm.inputs[1]
    t = g.add_op("transpose", (bank,), {"perm": (0, 1, 2)})
    t.type = infer_node(t)
    g.set_inputs(mm, (mm.inputs[0], t))
    w = {k: v for k, v in _model("mixtral")[1].items() if k in g.params}
    with pytest.warns(archc.weights.ArchcWarning, match=r"1 expert weight bank\(s\) stay "
                      rf"float32, first `{bank.name}` \(read by `transpose`\)"):
        g, wq = quantize(g, w, "int4", 32, False, accuracy_level=0)
    assert g.meta["quantize"] == {"kept": {bank.name: "read by `transpose`"}}
    assert wq[bank.name] is w[bank.name] and g.params[bank.name].type.dtype == "float32"
    feeds = _model("mixtral")[2]
    np.testing.assert_allclose(run_graph(g, feeds, wq)["logits"],
                               run_onnx(export_onnx(g, wq), feeds)["logits"], atol=TOL)


def _bank_bytes(e: int, k: int, n: int, bits: int, block: int, symmetric: bool) -> int:
    """What MatMulNBits stores for a bank [E, K, N]: codes, float32 scales, packed zero points."""
    nb = n_blocks(k, block)
    zp = 0 if symmetric else n_blocks(nb * bits, 8)
    return e * n * (nb * block * bits // 8 + 4 * nb + zp)


def test_cli_files_shrink_by_what_the_banks_store(tmp_path, capsys):
    spec = str(SPEC / "moe_general.arch")
    sizes, models = {}, {}
    for dtype in ("float32", "int8", "int4"):
        out = tmp_path / f"{dtype}.onnx"
        assert main(["compile", spec, "-O2", "-o", str(out), "--weights-dtype", dtype]) == 0
        sizes[dtype], models[dtype] = out.stat().st_size, onnx.load(str(out))
    inits = {d: {i.name: len(i.raw_data) for i in m.graph.initializer}
             for d, m in models.items()}
    graph = _optimized("moe_general")
    banks = [p for p in graph.params.values() if p.type.rank == 3 and p.type.shape[0] > 1]
    assert len(banks) == 6
    for dtype, bits in (("int8", 8), ("int4", 4)):
        for p in banks:
            stored = sum(inits[dtype][f"{p.name}.{s}"] for s in ("qweight", "scales",
                                                                  "zero_points"))
            assert stored == _bank_bytes(*p.type.shape, bits, 32, False)
            assert inits["float32"][p.name] == 4 * int(np.prod(p.type.shape))
    # int4 with zero points, block 32: 0.5 + 4/32 + 1/64 bytes a weight (K = 64, 96: 16.0% and
    # 16.1% of float32) for the experts, 67% of the float32 file, and every 2-D matmul weight;
    # the embedding table int8, the norms float32 and the graph on top: measured 20.2%
    assert sizes["int4"] < 0.25 * sizes["float32"] and sizes["int4"] < 0.7 * sizes["int8"]
    sess = run_onnx(model_bytes(models["int4"]), _model("moe_general")[2])
    assert np.isfinite(sess["logits"]).all()
    capsys.readouterr()
    out = tmp_path / "dense.onnx"  # -O1, the default: the dense form's banks shrink as much
    assert main(["compile", spec, "-o", str(out), "--weights-dtype", "int4"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert out.stat().st_size < 0.25 * sizes["float32"]
    dense = {i.name for i in onnx.load(str(out)).graph.initializer}
    assert {f"{p.name}.qweight" for p in banks} <= dense and not {p.name for p in banks} & dense


def test_bad_weight_parts_are_shape_errors():
    arrays, attrs = OP_CASES["moe_experts_nbits"][0]
    with pytest.raises(ShapeError, match="takes 6 or 9 weight parts"):
        _one_op(arrays[:-1], attrs)
    bad = [*arrays[:2], arrays[2][:3], *arrays[3:]]  # W1's codes for 3 experts, not 4
    with pytest.raises(ShapeError, match=r"are not \[4, \.\.\.\]"):
        _one_op(bad, attrs)
    with pytest.raises(ShapeError, match="`scales` must be"):
        _one_op([*arrays[:3], arrays[3][:, :-1], *arrays[4:]], attrs)
    (x, *parts), attrs = OP_CASES["matmul_nbits_bank"][1]  # x [2, 4, 3, 64], E = 4
    with pytest.raises(ShapeError, match=r"needs x \[\.\.\., 4 or 1, M, 64\]"):
        _one_op([x[:, :2], *parts], attrs, "matmul_nbits_bank")
    with pytest.raises(ShapeError, match="one MatMulNBits weight per expert"):
        _one_op([x, parts[0], parts[1][:3]], attrs, "matmul_nbits_bank")
