"""Weight-only quantization: the packing, the `matmul_nbits` kernel against onnxruntime and an
independent formula, the pass on whole specs (full and KV-cache graphs), and the CLI.

Tolerances: one op, NumPy vs onnxruntime 1e-5 (same dequantized weights, only the sum order
differs); a whole spec, NumPy vs onnxruntime 1e-4 at accuracy_level 0. The distance to the
float32 logits is bounded relative to the largest float32 logit (`FP32_BOUND`), bounds set at
about twice what these seeded models measure.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import ROOT

import archc
from archc.backends.numpy_interp import run_graph
from archc.backends.onnx_export import export_onnx
from archc.backends.ort import run_onnx
from archc.cli import main
from archc.diagnostics import ArchcError
from archc.ir.graph import Graph
from archc.ir.types import ShapeError, TensorType
from archc.ir.verify import verify
from archc.kvcache import incremental_logits
from archc.lower import lower
from archc.ops.quant import dequantize, n_blocks, pack, unpack
from archc.passes.infer_shapes import infer_node
from archc.quantize import quantize, quantize_weight

LLAMA = str(ROOT / "specs" / "llama_tiny.arch")
# GPT-2's shape with a tied head, small: d = 80 is not a multiple of any block size (padding)
TIED = """
model gpt2_mini {
  let vocab = 300, ctx = 64, d = 80, heads = 4, layers = 2, eps = 1e-5
  input input_ids: int64[batch, seq]
  input attention_mask: int64[batch, seq]
  x = embed(input_ids, vocab, d) as wte
  x = x + pos_embed(input_ids, ctx, d) as wpe
  repeat layers as h {
    x = x + attention(layer_norm(x, eps) as ln_1, heads, causal, mask = attention_mask) as attn
    x = x + mlp(layer_norm(x, eps) as ln_2, 4 * d, act = gelu_tanh) as mlp
  }
  output logits = lm_head(layer_norm(x, eps) as ln_f, vocab, tied = wte)
}
"""
SPECS = {"llama_tiny": (LLAMA, 17), "gpt2_mini": (TIED, 9)}  # spec, matmuls on weights
# (after -O2 packs Q/K/V and gate/up: fusions/packing.py)
# max |dlogit| / max |logit| against float32; llama_tiny measures 9e-4, 1.4e-2 (2.2e-2 with
# int8 activations) and 0.21
FP32_BOUND = {"float16": 2e-3, "int8": 4e-2, "int4": 0.4}

rng = np.random.default_rng(0)


def _case(m: tuple, k: int, n: int, bits: int, block: int, symmetric: bool, level: int = 0):
    q, s, zp = quantize_weight(rng.standard_normal((n, k)).astype(np.float32), bits, block,
                               symmetric)
    x = rng.standard_normal((*m, k)).astype(np.float32)
    arrays = [x, q, s] if zp is None else [x, q, s, zp]
    return arrays, {"K": k, "N": n, "bits": bits, "block_size": block, "accuracy_level": level}


# tests/test_ops.py finds these: the op's differential cases (K % block != 0 pads)
OP_CASES = {"matmul_nbits": [
    _case((2, 3), 64, 24, 4, 32, True), _case((3,), 80, 17, 4, 64, False),
    _case((1, 2), 40, 9, 4, 128, False), _case((2, 2), 200, 8, 8, 128, True),
    _case((5,), 50, 5, 8, 32, False), _case((2, 3), 96, 16, 8, 32, True, 4),
    _case((4,), 80, 12, 4, 64, False, 4)]}


def _rows_case(rows: int, cols: int, ids: np.ndarray, bits: int, block: int, symmetric: bool):
    q, s, zp = quantize_weight(rng.standard_normal((rows, cols)).astype(np.float32), bits, block,
                               symmetric)
    data = np.ascontiguousarray(q.reshape(rows, -1)[:, :cols * bits // 8])
    parts = [data, ids, s.reshape(rows, -1)] + ([] if zp is None else [zp.reshape(rows, -1)])
    return parts, {"bits": bits, "block_size": block}


OP_CASES["gather_nbits"] = [
    _rows_case(40, 64, rng.integers(0, 40, (2, 3)), 4, 32, True),
    _rows_case(40, 80, rng.integers(0, 40, (5,)), 4, 64, False),
    _rows_case(30, 200, rng.integers(0, 30, (2, 2)), 8, 128, False),
    _rows_case(30, 96, rng.integers(0, 30, (3,)), 8, 32, True)]


@pytest.mark.parametrize("case", range(len(OP_CASES["gather_nbits"])))
def test_gather_kernel_matches_onnxruntime_and_the_matmul_layout(case):
    (data, ids, *rest), attrs = OP_CASES["gather_nbits"][case]
    g = Graph("one")
    types = [TensorType("uint8", data.shape), TensorType("int64", ids.shape),
             *(TensorType(str(a.dtype), a.shape) for a in rest)]
    params = {f"w{i}": a for i, a in enumerate([data, *rest])}
    nodes = [g.add_param("w0", types[0]), g.add_input("ids", types[1])]
    nodes += [g.add_param(f"w{i + 1}", t) for i, t in enumerate(types[2:])]
    node = g.add_op("gather_nbits", nodes, attrs)
    node.type = infer_node(node)
    g.set_output("y", node)
    ours = run_graph(g, {"ids": ids}, params)["y"]
    np.testing.assert_array_equal(ours, run_onnx(export_onnx(g, params), {"ids": ids})["y"])
    rows, cols = data.shape[0], data.shape[1] * 8 // attrs["bits"]  # the same codes, by hand
    nb = n_blocks(cols, attrs["block_size"])
    q = np.zeros((rows, nb * attrs["block_size"] * attrs["bits"] // 8), np.uint8)
    q[:, :data.shape[1]] = data
    table = _dequantize_by_hand(q.reshape(rows, nb, -1), rest[0].reshape(-1),
                                *[z.reshape(-1) for z in rest[1:]], K=cols, N=rows,
                                bits=attrs["bits"], block_size=attrs["block_size"])
    np.testing.assert_array_equal(ours, table[ids])


def one_op(arrays, attrs, op: str = "matmul_nbits") -> tuple[Graph, dict, dict]:
    """One quantized op: x (and, for `moe_experts_nbits`, the gates) as graph inputs, the
    weights as params (initializers: onnxruntime honours accuracy_level 4 only for constant
    weights, which it prepacks, and folds an expert bank's per-expert Gathers into them)."""
    g = Graph("one")
    n = 2 if op == "moe_experts_nbits" else 1  # x and gates, or x
    ins = [g.add_input(k, TensorType("float32", a.shape)) for k, a in zip("xg"[:n], arrays)]
    params = {f"w{i}": a for i, a in enumerate(arrays[n:])}
    ws = [g.add_param(k, TensorType({"f": "float32", "u": "uint8"}[a.dtype.kind], a.shape))
          for k, a in params.items()]
    node = g.add_op(op, [*ins, *ws], attrs)
    node.type = infer_node(node)
    g.set_output("y", node)
    return g, dict(zip("xg", arrays[:n])), params


@pytest.mark.parametrize("case", range(len(OP_CASES["matmul_nbits"])))
def test_kernel_matches_onnxruntime(case):
    arrays, attrs = OP_CASES["matmul_nbits"][case]
    g, feeds, params = one_op(arrays, attrs)
    ours = run_graph(g, feeds, params)["y"]
    theirs = run_onnx(export_onnx(g, params), feeds)["y"]
    assert ours.shape == theirs.shape == (*arrays[0].shape[:-1], attrs["N"])
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    w = _dequantize_by_hand(*arrays[1:], **attrs)  # float64 x @ W^T, W by the formula below
    exact = arrays[0].astype(np.float64) @ w.T
    if attrs["accuracy_level"] == 0:
        np.testing.assert_allclose(ours, exact, atol=1e-4)
    else:  # int8 activations: near, but measurably not float32 (the level is really used)
        assert 1e-3 < np.abs(ours - exact).max() < 0.02 * np.abs(exact).max()


def _dequantize_by_hand(q, s, zp=None, *, K, N, bits, block_size, **_):
    """W[n, k] one element at a time, from the layout as onnxruntime documents it."""
    nb, per = n_blocks(K, block_size), 8 // bits
    w = np.zeros((N, K))
    for n in range(N):
        for k in range(K):
            b, j = divmod(k, block_size)
            code = (int(q[n, b, j // per]) >> (bits * (j % per))) % 2 ** bits
            if zp is None:
                z = 2 ** (bits - 1)
            else:
                row = len(zp) // N
                z = (int(zp[n * row + b // per]) >> (bits * (b % per))) % 2 ** bits
            w[n, k] = np.float32(code - z) * s[n * nb + b]  # one float32 rounding
    return w


@pytest.mark.parametrize("bits", [4, 8])
def test_pack_round_trip_and_layout(bits):
    codes = rng.integers(0, 2 ** bits, (3, 5, 16)).astype(np.uint8)
    packed = pack(codes, bits)
    assert packed.shape == (3, 5, 16 * bits // 8) and packed.dtype == np.uint8
    np.testing.assert_array_equal(unpack(packed, bits), codes)
    if bits == 4:  # low nibble first
        np.testing.assert_array_equal(packed, codes[..., 0::2] + 16 * codes[..., 1::2])


@pytest.mark.parametrize(("bits", "block", "symmetric"),
                         [(4, 32, True), (4, 64, False), (8, 128, True), (8, 32, False)])
def test_quantize_weight_error_is_half_a_step(bits, block, symmetric):
    n, k = 6, 150  # 150 pads the last block
    w = (rng.standard_normal((n, k)) * rng.uniform(0.01, 3, (n, 1))).astype(np.float32)
    w[0, :block] = 0  # an all-zero block
    q, s, zp = quantize_weight(w, bits, block, symmetric)
    back = dequantize(q, s, zp, k, n, bits, block)
    np.testing.assert_array_equal(back, _dequantize_by_hand(q, s, zp, K=k, N=n, bits=bits,
                                                            block_size=block))
    step = np.repeat(np.abs(s).reshape(n, -1), block, axis=1)[:, :k]
    err = np.abs(back - w)
    # half a step, except symmetric's one clipped level (+2^(bits-1) -> 2^(bits-1) - 1)
    assert np.all(err <= step * (1.0 if symmetric else 0.5) * (1 + 1e-5) + 1e-7)
    assert np.all(back[0, :block] == 0)
    if symmetric:  # the element of largest magnitude in each block is exact
        blocks = np.pad(w, ((0, 0), (0, n_blocks(k, block) * block - k))).reshape(n, -1, block)
        i = np.abs(blocks).argmax(-1)
        big = np.take_along_axis(blocks, i[..., None], -1)[..., 0]
        flat = (i + np.arange(blocks.shape[1]) * block).reshape(n, -1)
        np.testing.assert_allclose(np.take_along_axis(back, flat, 1), big, rtol=1e-6)


@functools.cache
def _lowered(spec: str, cache: bool) -> Graph:
    module = archc.api.parse_file(spec) if spec.endswith(".arch") else archc.parse(spec)
    return archc.api.optimize(lower(module, None, cache=cache), 2)


def _graph(spec: str, cache: bool = False) -> Graph:
    """A fresh copy (quantize rewrites the graph in place)."""
    return copy.deepcopy(_lowered(spec, cache))


@functools.cache
def _weights(name: str) -> dict:
    return archc.init_params(_graph(SPECS[name][0]), 0)


@functools.cache
def _fp32_logits(name: str) -> np.ndarray:
    return run_graph(_lowered(SPECS[name][0], False), _feeds(), _weights(name))["logits"]


def _feeds(t: int = 12) -> dict:
    ids = np.random.default_rng(3).integers(0, 300, (2, t))
    mask = np.ones_like(ids)
    mask[1, :3] = 0  # left padding in the second row
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize(("name", "dtype", "block", "symmetric"), [
    ("llama_tiny", "int4", 32, True), ("llama_tiny", "int8", 32, False),
    ("llama_tiny", "float16", 32, False), ("gpt2_mini", "int4", 64, False),
    ("gpt2_mini", "int8", 128, True), ("gpt2_mini", "int4", 128, True)])
def test_whole_spec_numpy_matches_onnxruntime_and_fp32(name, dtype, block, symmetric):
    spec, n_matmuls = SPECS[name]
    w, feeds, ref = _weights(name), _feeds(), _fp32_logits(name)
    g, wq = quantize(_graph(spec), w, dtype, block, symmetric, accuracy_level=0)
    verify(g)
    ops = [n for n in g.nodes() if n.kind == "op"]
    assert sum(n.op == "matmul_nbits" for n in ops) == (0 if dtype == "float16" else n_matmuls)
    assert not [n for n in ops if n.op in ("matmul", "gather") and dtype != "float16" and
                any(i.kind == "param" for i in n.inputs)]
    assert set(wq) == set(g.params)
    embeds = {n.attrs["bits"] for n in ops if n.op == "gather_nbits"}
    assert embeds == (set() if dtype == "float16" else {8})  # EMBEDDING_BITS
    ours = run_graph(g, feeds, wq)["logits"]
    theirs = run_onnx(export_onnx(g, wq), feeds)["logits"]
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    bound = FP32_BOUND[dtype] * np.abs(ref).max()
    assert np.abs(theirs - ref).max() <= bound
    if name == "gpt2_mini" and dtype != "float16":  # the tied table: both copies quantized
        assert "wte.weight" not in g.params
        assert {"wte.weight.t.qweight", "wte.weight.rows.qweight"} <= set(g.params)


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_default_uses_int8_activations(dtype):
    """The default is accuracy_level 4. Both backends stay within the bound of float32, but
    they do not agree to 1e-4 on a whole model: the single op agrees to 1e-5
    (test_kernel_matches_onnxruntime), yet a 1e-6 difference upstream moves an activation
    across a rounding boundary now and then, and each such flip is a whole int8 step."""
    w, feeds, ref = _weights("llama_tiny"), _feeds(), _fp32_logits("llama_tiny")
    g, wq = quantize(_graph(LLAMA), w, dtype, 32, True)
    assert {n.attrs["accuracy_level"] for n in g.nodes() if n.op == "matmul_nbits"} == {4}
    bound = FP32_BOUND[dtype] * np.abs(ref).max()
    for out in (run_onnx(export_onnx(g, wq), feeds)["logits"], run_graph(g, feeds, wq)["logits"]):
        assert np.abs(out - ref).max() <= bound


@pytest.mark.parametrize(("dtype", "symmetric"), [("int4", False), ("float16", False)])
def test_kv_cache_decode_matches_the_full_quantized_run(dtype, symmetric):
    w, feeds = _weights("llama_tiny"), _feeds(9)
    full, wq = quantize(_graph(LLAMA), w, dtype, 32, symmetric, accuracy_level=0)
    cache, wc = quantize(_graph(LLAMA, cache=True), w, dtype, 32, symmetric, accuracy_level=0)
    assert all(np.array_equal(wq[k], wc[k]) for k in wc)  # the same stored weights
    want = run_graph(full, feeds, wq)["logits"]
    got = incremental_logits(cache, wc, feeds["input_ids"], feeds["attention_mask"], 5,
                             backend="onnxruntime")
    real = feeds["attention_mask"][..., None].astype(bool)  # padded positions are not compared
    np.testing.assert_allclose(np.where(real, got, 0), np.where(real, want, 0), atol=1e-4)


def test_cli_int4_file_loads_runs_and_is_deterministic(tmp_path):
    paths = {}
    for dtype in ("float32", "float16", "int8", "int4"):
        paths[dtype] = tmp_path / f"{dtype}.onnx"
        assert main(["compile", LLAMA, "-o", str(paths[dtype]), "--weights-dtype", dtype]) == 0
    again = tmp_path / "again.onnx"
    assert main(["compile", LLAMA, "-o", str(again), "--weights-dtype", "int4"]) == 0
    assert again.read_bytes() == paths["int4"].read_bytes()
    model = onnx.load(str(paths["int4"]))
    onnx.checker.check_model(model, full_check=True)
    assert sum(n.op_type == "MatMulNBits" for n in model.graph.node) == 29
    sizes = {k: p.stat().st_size for k, p in paths.items()}
    assert sizes["int4"] < sizes["int8"] < sizes["float16"] < 0.6 * sizes["float32"]
    feeds = _feeds()
    out = {k: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
           .run(["logits"], feeds)[0] for k, p in paths.items()}
    scale = np.abs(out["float32"]).max()
    for dtype in ("float16", "int8", "int4"):
        assert np.abs(out[dtype] - out["float32"]).max() <= FP32_BOUND[dtype] * scale, dtype


def test_cli_kv_cache_int4_exports_a_decoder(tmp_path):
    out = tmp_path / "d.onnx"
    assert main(["compile", LLAMA, "-o", str(out), "--kv-cache", "--weights-dtype", "int4",
                 "--symmetric", "--block-size", "64"]) == 0
    model = onnx.load(str(out))
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 29
    assert {a.i for n in nbits for a in n.attribute if a.name == "block_size"} == {64}
    assert any(i.name == "past_key_values.0.key" for i in model.graph.input)


def test_bad_settings_are_diagnostics(capsys):
    g, w = _graph(LLAMA), _weights("llama_tiny")
    for kwargs, text in (({"dtype": "int3"}, "unknown weights dtype `int3`"),
                         ({"dtype": "int4", "block": 48}, "block size 48"),
                         ({"dtype": "int8", "accuracy_level": 2}, "accuracy level 2")):
        with pytest.raises(ArchcError, match=text):
            quantize(g, w, **kwargs)
    huge = {**w, "norm.weight": np.full(256, 7e4, np.float32)}
    with pytest.raises(ArchcError, match=r"exceed float16's range, first `norm\.weight`"):
        quantize(_graph(LLAMA), huge, "float16")
    with pytest.raises(SystemExit):
        main(["compile", LLAMA, "-o", "x.onnx", "--weights-dtype", "int4", "--block-size", "48"])
    assert "invalid choice: 48" in capsys.readouterr().err
    arrays, attrs = OP_CASES["matmul_nbits"][0]
    with pytest.raises(ShapeError, match="`scales` must be"):
        one_op([arrays[0], arrays[1], arrays[2][:-1]], attrs)
    with pytest.raises(ShapeError, match="bits 4 or 8"):
        one_op(arrays, {**attrs, "bits": 3})


def test_cli_float32_activations_and_float_embeddings(tmp_path):
    """`--activations float32` (accuracy level 0) and `--float-embeddings` reach the file."""
    out = tmp_path / "m.onnx"
    assert main(["compile", LLAMA, "-o", str(out), "--weights-dtype", "int4",
                 "--activations", "float32", "--float-embeddings"]) == 0
    model = onnx.load(str(out))
    levels = {a.i for n in model.graph.node if n.op_type == "MatMulNBits"
              for a in n.attribute if a.name == "accuracy_level"}
    assert levels == {0}
    assert not any(n.op_type == "GatherBlockQuantized" for n in model.graph.node)
    assert main(["compile", LLAMA, "-o", str(out), "--weights-dtype", "int4"]) == 0
    model = onnx.load(str(out))
    assert any(n.op_type == "GatherBlockQuantized" for n in model.graph.node)
    assert {a.i for n in model.graph.node if n.op_type == "MatMulNBits"
            for a in n.attribute if a.name == "accuracy_level"} == {4}


def test_the_public_api_runs_quantized_graphs_on_both_backends():
    """archc.run and archc.Runner keep the integer codes as they are (they converted every
    weight to float32, which broke `gather_nbits`): both backends agree within 1e-4."""
    from archc.quantize import quantize

    g = archc.compile(ROOT / "specs" / "llama_tiny.arch")
    g, w = quantize(g, archc.init_params(g, 0), "int4", 32, False, accuracy_level=0)
    ids = np.random.default_rng(0).integers(0, 1024, (2, 6))
    a = archc.run(g, {"input_ids": ids}, w)["logits"]
    b = archc.Runner(g, w, "onnxruntime")({"input_ids": ids})["logits"]
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("spec", ["llama_tiny", "gpt2_small", "moe_general", "t5_small_style"])
@pytest.mark.parametrize("dtype, symmetric", [("int4", False), ("int8", True)])
def test_stats_weight_bytes_are_what_compile_stores(spec, dtype, symmetric, tmp_path):
    """`archc stats`' int8/int4 weight bytes (archc.quantize.stored_bytes, from shapes) equal
    the bytes of the weight initializers `compile --weights-dtype` writes, to the byte: tied
    tables (both copies), expert banks, embeddings at 8 bits, float32 norms and biases."""
    from onnx import numpy_helper

    from archc.quantize import stored_bytes

    out = tmp_path / "q.onnx"
    args = ["compile", str(ROOT / "specs" / f"{spec}.arch"), "--weights-dtype", dtype, "-o",
            str(out)] + (["--symmetric"] if symmetric else [])
    assert main(args) == 0
    m = onnx.load(str(out))
    inputs = {i.name for i in m.graph.input}
    stored = sum(numpy_helper.to_array(t).nbytes for t in m.graph.initializer
                 if not t.name.startswith("const_") and t.name not in inputs)
    graph = lower(archc.parse_file(ROOT / "specs" / f"{spec}.arch"))
    assert stored_bytes(graph, int(dtype[3:]), 32, symmetric) == stored
