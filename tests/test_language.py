"""The language's own proofs: layers written from primitives match the library's and NumPy
formulas on both backends, state streams, and the new syntax parses and fails clearly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import ROOT

import archc
from archc.diagnostics import ArchcError
from archc.kvcache import Session
from archc.lower import lower

SPECS = ROOT / "specs"
BACKENDS = ("numpy", "onnxruntime")
rng = np.random.default_rng(0)


def _run_both(graph, inputs, weights):
    outs = [archc.run(graph, inputs, weights, backend=b) for b in BACKENDS]
    for name in outs[0]:
        np.testing.assert_allclose(outs[0][name], outs[1][name], atol=1e-5, rtol=1e-5)
    return outs[0]


def _ids(batch=2, seq=7, vocab=64):
    return rng.integers(0, vocab, (batch, seq)).astype(np.int64)


# ---------------------------------------------------------------- custom attention
def test_custom_attention_matches_the_library_attention_full_and_incremental():
    text = (SPECS / "custom_attention.arch").read_text()
    builtin = text.replace("my_attention(rms_norm(x) as input_norm, heads, attention_mask)",
                           "attention(rms_norm(x) as input_norm, heads, causal, "
                           "mask = attention_mask, bias = false)")
    assert builtin != text
    custom_g = archc.compile(archc.parse(text, "custom.arch"))
    builtin_g = archc.compile(archc.parse(builtin, "builtin.arch"))
    assert set(custom_g.params) == set(builtin_g.params)
    weights = archc.init_params(builtin_g, seed=1)
    ids = _ids(2, 9, 256)
    mask = np.ones_like(ids)
    mask[0, :3] = 0  # left padding
    inputs = {"input_ids": ids, "attention_mask": mask}
    ours, ref = _run_both(custom_g, inputs, weights), _run_both(builtin_g, inputs, weights)
    np.testing.assert_allclose(ours["logits"], ref["logits"], atol=1e-6, rtol=0)
    cached = archc.optimize(lower(archc.parse(text, "custom.arch"), cache=True))
    assert list(cached.outputs)[1:] == ["present.0.key", "present.0.value",
                                              "present.1.key", "present.1.value"]
    for backend in BACKENDS:
        s = Session(cached, weights, backend)
        steps = [s.prefill(ids[:, :4], mask[:, :4])]
        steps += [s.step(ids[:, t:t + 1], mask[:, t:t + 1]) for t in range(4, 9)]
        got = np.concatenate(steps, axis=1)
        np.testing.assert_allclose(got[mask.astype(bool)], ref["logits"][mask.astype(bool)],
                                   atol=1e-5, rtol=0)


# ---------------------------------------------------------------- blocks against formulas
def _block_graph(call: str, dim: int = 32):
    src = (f'import "{SPECS}/linear_attention.arch"\nimport "{SPECS}/scale_norm.arch"\n'
           f"model t {{\n  input x: float32[batch, seq, {dim}]\n  output y = {call}\n}}\n")
    return archc.compile(archc.parse(src, "t.arch"))


def _elu1(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0))) + 1


def test_linear_attention_matches_its_formula():
    g = _block_graph("linear_attention(x, 4) as attn")
    w = archc.init_params(g, seed=2)
    w = {k: v + (0.1 if k.endswith("bias") else 0) for k, v in w.items()}
    x = rng.standard_normal((2, 6, 32)).astype(np.float32)
    got = _run_both(g, {"x": x}, w)["y"]

    def proj(n):  # [B, T, 32] -> [B, H, T, 8]
        y = x @ w[f"attn.{n}.weight"] + w[f"attn.{n}.bias"]
        return y.reshape(2, 6, 4, 8).transpose(0, 2, 1, 3)

    q, k, v = _elu1(proj("q")), _elu1(proj("k")), proj("v")
    out = np.zeros_like(q)
    for i in range(6):  # out_i = phi(q_i) S_i / (phi(q_i) . z_i), sums over j <= i
        s = np.einsum("bhjd,bhje->bhde", k[:, :, : i + 1], v[:, :, : i + 1])
        z = k[:, :, : i + 1].sum(2)
        out[:, :, i] = np.einsum("bhd,bhde->bhe", q[:, :, i], s) / \
            np.einsum("bhd,bhd->bh", q[:, :, i], z)[..., None]
    ref = out.transpose(0, 2, 1, 3).reshape(2, 6, 32) @ w["attn.o.weight"] + w["attn.o.bias"]
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)


def test_scale_norm_matches_its_formula():
    g = _block_graph("scale_norm(x) as norm")
    w = {"norm.g": np.array([1.7], np.float32)}
    x = rng.standard_normal((2, 5, 32)).astype(np.float32)
    x[0, 0] = 0  # the eps floor
    got = _run_both(g, {"x": x}, w)["y"]
    ref = x * 1.7 / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-5)
    np.testing.assert_allclose(got, ref, atol=1e-6, rtol=1e-5)


def test_act_hard_halting_mask_matches_a_numpy_loop():
    src = """
    model act {
      input x: float32[batch, seq, 8]
      repeat 3 shared as step {
        halt = sigmoid(linear(x, 1) as halting)
        cont = cast(halt < 0.5, float32)
        x = cont * tanh(linear(x, 8) as f) + (1 - cont) * x
      }
      output y = x
    }"""
    g = archc.compile(archc.parse(src))
    w = archc.init_params(g, seed=3)
    x = rng.standard_normal((3, 5, 8)).astype(np.float32)
    got = _run_both(g, {"x": x}, w)["y"]
    ref = x.copy()
    halted_any = False
    for _ in range(3):
        halt = 1 / (1 + np.exp(-(ref @ w["step.halting.weight"] + w["step.halting.bias"])))
        cont = (halt < 0.5).astype(np.float32)
        halted_any |= bool((cont == 0).any())
        ref = cont * np.tanh(ref @ w["step.f.weight"] + w["step.f.bias"]) + (1 - cont) * ref
    assert halted_any  # the mask does something on this input
    np.testing.assert_allclose(got, ref, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- state: a TXL memory
def _gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def _txl_reference(w, ids, seg, mem):
    """Every token at once: a query in segment s sees the tokens of segment s-1 (the memory)
    and its own segment's tokens up to itself."""
    x = w["embed.weight"][ids]
    b, t, d = x.shape
    heads, hd = 4, d // 4

    def split(y):
        return y.reshape(b, t, heads, hd).transpose(0, 2, 1, 3)

    q, k, v = (split(x @ w[f"{n}.weight"] + w[f"{n}.bias"]) for n in "qkv")
    p, j = np.arange(t)[:, None], np.arange(t)[None, :]
    keep = (j <= p) & (j >= (p // seg) * seg - mem)
    s = np.where(keep, q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd), -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    h = (a @ v).transpose(0, 2, 1, 3).reshape(b, t, d)
    x = x + h @ w["o.weight"] + w["o.bias"]
    mu = x.mean(-1, keepdims=True)
    ln = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * w["ln.weight"] + \
        w["ln.bias"]
    x = x + _gelu(ln @ w["mlp.fc.weight"] + w["mlp.fc.bias"]) @ w["mlp.proj.weight"] + \
        w["mlp.proj.bias"]
    return x @ w["lm_head.weight"]


def test_txl_memory_streams_three_segments_like_one_sequence():
    g = archc.compile(SPECS / "txl_memory.arch")
    assert g.meta["states"] == {"memory": "next.memory"}
    w = archc.init_params(g, seed=4)
    ids = _ids(2, 24, 64)
    ref = _txl_reference(w, ids, seg=8, mem=8)
    for backend in BACKENDS:
        s = Session(g, w, backend)
        got = [s.prefill(ids[:, :8])] + [s.step(ids[:, i:i + 8]) for i in (8, 16)]
        assert s.past["memory"].shape == (2, 8, 32)
        np.testing.assert_allclose(np.concatenate(got, axis=1), ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- syntax
def _value(expr: str, lets: str = ""):
    g = archc.compile(archc.parse(
        f"model m {{ {lets} input x: float32[2] output y = x * 0 + ({expr}) }}"), level=1)
    return float(archc.run(g, {"x": np.zeros(2, np.float32)})["y"][0])


def test_parenthesised_expressions():
    assert _value("(1 - p) * 4", "let p = 0.25") == 3.0
    assert _value("(a + b) * c", "let a = 1, b = 2, c = 3") == 9.0
    assert _value("(2 * 5) ** 0.25") == pytest.approx(10 ** 0.25)
    assert _value("((688))") == 688.0


def test_comparisons_casts_slices_and_bool_ops():
    src = """
    model m {
      input x: float32[batch, seq, 6]
      big = x > 0.5
      small = x <= -0.5
      either = big or small
      output count = sum(cast(either and not small, float32), axis = -1)
      output tail = x[:, -2:]
      output first = x[..., 0]
      output mid = x[:, 1:3, 2:4]
      output parts = concat(chunk(x, 3)[2], x[:, :, :2], axis = -1)
    }"""
    g = archc.compile(archc.parse(src))
    x = rng.standard_normal((2, 5, 6)).astype(np.float32)
    out = _run_both(g, {"x": x}, {})
    np.testing.assert_array_equal(out["count"], (x > 0.5).sum(-1))
    np.testing.assert_array_equal(out["tail"], x[:, -2:])
    np.testing.assert_array_equal(out["first"], x[..., 0])
    np.testing.assert_array_equal(out["mid"], x[:, 1:3, 2:4])
    np.testing.assert_array_equal(out["parts"], np.concatenate([x[..., 4:], x[..., :2]], -1))
    assert str(g.outputs["tail"].type) == "f32[batch,seq[-2:],6]"


def test_bool_is_not_a_number():
    with pytest.raises(ArchcError, match="cast it first") as e:
        archc.compile(archc.parse("model m { input x: float32[4] output y = (x > 0) * x }"))
    assert "error[E0104]: cannot apply `*` to a tensor b8[4] and a tensor f32[4]" in str(e.value)


def test_imports_share_blocks_and_report_cycles_and_clashes(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "norms.arch").write_text(
        "block twice(x) { return x * 2 }\n")
    (tmp_path / "main.arch").write_text(
        'import "lib/norms.arch"\nmodel m { input x: float32[3] output y = twice(x) }\n')
    g = archc.compile(tmp_path / "main.arch")
    assert archc.run(g, {"x": np.ones(3, np.float32)})["y"].tolist() == [2, 2, 2]

    (tmp_path / "a.arch").write_text('import "b.arch"\nblock f(x) { return x }\n')
    (tmp_path / "b.arch").write_text('import "a.arch"\nblock f(x) { return x }\n')
    (tmp_path / "c.arch").write_text('import "a.arch"\nmodel m { input x: float32[3] '
                                     "output y = f(x) }\n")
    with pytest.raises(ArchcError) as e:
        archc.compile(tmp_path / "c.arch")
    text = str(e.value)
    assert "error[E0112]: import cycle" in text and "b.arch:1:1" in text
    assert "error[E0105]: block `f` is defined twice" in text
    assert "first defined at" in text and "b.arch:2:1" in text

    (tmp_path / "d.arch").write_text('import "nope.arch"\nmodel m { input x: float32[3] '
                                     "output y = x }\n")
    with pytest.raises(ArchcError, match=r"cannot import `nope\.arch`: no such file"):
        archc.compile(tmp_path / "d.arch")


def test_library_errors_point_at_the_users_call_then_the_library_line():
    src = ("model m {\n  input x: float32[batch, seq, 10]\n"
           "  output y = attention(x, 3)\n}\n")
    with pytest.raises(ArchcError) as e:
        archc.compile(archc.parse(src, "user.arch"))
    text = str(e.value)
    assert "--> user.arch:3:27" in text  # the `heads` argument, underlined
    assert "`heads` = 3 does not divide the model dim 10" in text
    src = ("model m {\n  input x: float32[batch, seq, 8]\n  input m: float32[batch, seq]\n"
           "  output y = attention(x, 2, mask = m)\n}\n")
    with pytest.raises(ArchcError) as e:
        archc.compile(archc.parse(src, "user.arch"))
    text = str(e.value)
    assert "`mask` must be int64[batch, seq], got f32[batch,seq]" in text
    assert "--> user.arch:4:14" in text  # the user's call first
    assert "= note: in library block `attention` at <stdlib>/attention.arch:" in text


def test_budgets_stop_runaway_specs():
    with pytest.raises(ArchcError, match="too large for a compile-time number"):
        archc.compile(archc.parse("model m { let z = 10 ** 10 ** 10 input x: float32[1] "
                                  "output y = x }"))
    fan = "block f(x) { return f(x) + f(x) }\nmodel m { input x: float32[1] output y = f(x) }"
    with pytest.raises(ArchcError, match="nest deeper"):
        archc.compile(archc.parse(fan))
    nested = ("model m { input x: float32[1] repeat 4096 as a { repeat 4096 as b { "
              "if b < 0 { x = x + 1 } } } output y = x }")  # steps that add no nodes
    with pytest.raises(ArchcError, match="more than 100,000 blocks and repeat steps"):
        archc.compile(archc.parse(nested))


@pytest.mark.parametrize("text, message", [
    ("model m { let a = " + "(" * 1000 + "1" + ")" * 1000 + " }", "brackets nest deeper"),
    ("model m { input x: float32[4] output y = x" + " + x" * 20000 + " }", "nests too deeply"),
    ("model m { let a = " + "-" * 5000 + "1 }", "nests too deeply"),
    ("model m {\x00 }", "unexpected character U+0000 (invisible)"),
    ("model m {\n  input x: float32[4]\n  output y = x\n", "unclosed `{`"),
    ("model m {\n  let z = 1" + " + 1" * 60000 + "\n}", "more than 100,000 tokens"),
], ids=["brackets", "long-chain", "unary-chain", "nul", "unclosed", "token-budget"])
def test_hostile_spec_text_gets_a_located_error(text, message):
    with pytest.raises(ArchcError, match="error\\[E000") as e:
        archc.compile(archc.parse(text, "bad.arch"))
    assert message in str(e.value) and "--> bad.arch:" in str(e.value)


def test_a_byte_order_mark_is_ignored():
    g = archc.compile(archc.parse("\ufeffmodel m { input x: float32[4] output y = x }"))
    assert list(g.outputs) == ["y"]


@pytest.mark.parametrize("text, message", [
    ("model m { input x: float32[2] return x }", "`return` outside a block"),
    ("model m { input x: float32[batch, 3] output y = x[:, 5] }", "index 5 is out of range"),
    ("model m { input x: float32[batch, 3] output y = x[:, 3:] }", "slice `3:` of a dim of 3"),
    ("block mk(x) { return x * param(dim(x, -1)) }\nmodel m { input x: float32[batch, 3] "
     "w = param(dim(mk(x), -1)) output y = x * w }", "a parameter needs a name"),
    ("model m { input x: float32[4] repeat 2 shared as s { w = param(4) x = x * w "
     "w = param(4) x = x * w } output y = x }", "parameter `s.w` is defined twice"),
    ("model m { let a = log(0) input x: float32[4] output y = x }", "gives -inf"),
    ("model m { let b = 1e308 * 10 input x: float32[4] output y = x }", "cannot use (inf)"),
], ids=["return", "index", "empty-slice", "param-name-leak", "shared-twice", "log0", "inf"])
def test_compile_time_mistakes_are_errors(text, message):
    with pytest.raises(ArchcError) as e:
        archc.compile(archc.parse(text))
    assert message in str(e.value)


def test_a_repeat_name_is_bound_only_inside_its_loop():
    src = ("model m { let layers = 3 input x: float32[batch, 3] repeat layers as layers { "
           "x = x + 1 } repeat layers as again { x = x * 2 } output y = x }")
    g = archc.compile(archc.parse(src), level=0)
    assert sum(n.op == "mul" for n in g.nodes()) == 3


def test_reshape_merges_and_splits_symbolic_axes():
    src = """
    model m {
      input p: float32[batch, n, len, 8]
      z = reshape(p, [-1, dim(p, 2), 8])
      output z = z
      output back = reshape(z, [dim(p, 0), dim(p, 1), dim(p, 2), 8])
      output flat = reshape(p, [dim(p, 0), -1])
    }"""
    g = archc.compile(archc.parse(src))
    assert str(g.outputs["z"].type) == "f32[batch*n,len,8]"
    assert str(g.outputs["flat"].type) == "f32[batch,n*len*8]"
    p = rng.standard_normal((2, 3, 4, 8)).astype(np.float32)
    out = _run_both(g, {"p": p}, {})
    np.testing.assert_array_equal(out["z"], p.reshape(6, 4, 8))
    np.testing.assert_array_equal(out["back"], p)
    np.testing.assert_array_equal(out["flat"], p.reshape(2, -1))


def test_dump_prints_a_library_blocks_source(capsys):
    from archc.cli import main

    assert main(["dump", "--block", "rms_norm"]) == 0
    out = capsys.readouterr().out
    assert "block rms_norm(x, eps = 1e-6, unit_offset = false) {" in out
    assert "# x / sqrt(mean(x^2) + eps) * w" in out
    assert main(["dump", "--block", "atention"]) == 1
    assert "did you mean" in capsys.readouterr().err


def test_run_incremental_streams_a_state_from_an_npz_of_ids_only(tmp_path):
    from archc.cli import main

    np.savez(tmp_path / "in.npz", input_ids=_ids(1, 12, 64))
    assert main(["run", str(SPECS / "txl_memory.arch"), "--inputs", str(tmp_path / "in.npz"),
                 "--incremental", "8", "--out", str(tmp_path / "o.npz")]) == 0
    assert np.load(tmp_path / "o.npz")["logits"].shape == (1, 12, 64)


def test_huge_dims_and_layer_counts_are_refused():
    with pytest.raises(ArchcError, match="is too large"):
        archc.compile(archc.parse("model m { let d = 10 ** 27 input x: float32[batch, 4] "
                                  "output y = linear(x, d) }"))
    with pytest.raises(ArchcError, match="not a number archc can use"):
        archc.compile(archc.parse("model m { let d = 1000 input x: float32[4] "
                                  "output y = x * exp(d) }"))
    text = (SPECS / "llama_tiny.arch").read_text().replace("layers = 4", "layers = 4000")
    with pytest.raises(ArchcError, match="more than 100,000 graph nodes"):
        archc.compile(archc.parse(text))


def test_a_session_refuses_bad_ids_like_a_full_run():
    text = (SPECS / "custom_attention.arch").read_text()
    g = archc.optimize(lower(archc.parse(text, "custom.arch"), cache=True))
    s = Session(g, archc.init_params(g, 0))
    s.prefill(_ids(1, 3, 256))
    for bad in (np.array([[256]]), np.array([[-1]]), np.array([[0.5]])):
        with pytest.raises(ArchcError, match=r"E031[25]"):
            s.step(bad)
    assert s.step(np.array([[5]])).shape == (1, 1, 256)  # the session is still usable


def test_init_rules_named_like_functions_pass_through_a_block():
    """`init = zeros` names the rule even though `zeros` is also a function, through a
    library block's untyped option (`linear(..., init = zeros)` -> `param(..., init = init)`);
    any other function is still refused."""
    spec = """model m {{
  input x: float32[batch, 4]
  output y = linear(x, 4, bias = false, init = {init})
}}"""
    for rule in ("zeros", "ones", '"zeros"'):
        g = lower(archc.parse(spec.format(init=rule)))
        assert [p.attrs["init"] for p in g.params.values()] == [rule.strip('"')]
    with pytest.raises(ArchcError, match="`init` must be one of"):
        lower(archc.parse(spec.format(init="sigmoid")))


def test_compile_time_random_features_have_a_work_budget():
    """A mistyped width (64096 for 64) would make FAVOR+'s orthogonal draw a QR of a
    16024 x 16024 matrix at compile time (minutes, gigabytes): refused up front."""
    text = (ROOT / "specs" / "performer.arch").read_text().replace("d = 64,", "d = 64096,")
    assert text != (ROOT / "specs" / "performer.arch").read_text()
    with pytest.raises(ArchcError, match=r"QR factorisations of 16024 x 16024 .*over the limit"):
        lower(archc.parse(text, "performer.arch"))


def test_key_positions_on_a_tensor_without_its_axis_is_a_diagnostic():
    """A fuzzed FiD (seed 43000006136: `input_ids` declared twice, the first [batch, seq]) fed
    `key_positions` keys of rank 2; it read shape[2] and crashed (E0900). Now: E0201 at the
    call, and the library's own axis = 1 use (relative_bias on [B, T, d]) still lowers."""
    text = """
model m {
  input x: float32[batch, 8]
  output y = key_positions(x, axis = 2)
}
"""
    with pytest.raises(ArchcError) as e:
        lower(archc.parse(text))
    assert "error[E0201]: the keys f32[batch,8] have no sequence axis 2" in str(e.value)
    assert "E0900" not in str(e.value)
    lower(archc.parse_file(SPECS / "t5_small_style.arch"))  # relative_bias: axis = 1 on 3-D


@pytest.mark.parametrize("call, rank", [("sinusoidal(ids, 16)", 1), ("positions(ids)", 1),
                                        ("positions(ids, axis = -3)", 2)])
def test_positions_of_a_tensor_without_its_axis_is_a_diagnostic(call, rank):
    """A fuzzed sandwich LM (seed 2026113000002043: `input_ids: int64[batch]`) fed
    `sinusoidal` ids without a sequence axis; positions read shape[1] and crashed (E0900).
    Now: E0201 at the call, naming the axis and the type."""
    dims = "batch, seq" if rank == 2 else "batch"
    text = f"model m {{\n  input ids: int64[{dims}]\n  output y = {call}\n}}\n"
    with pytest.raises(ArchcError) as e:
        lower(archc.parse(text, "m.arch"))
    axis = "-3" if "-3" in call else "1"
    assert f"error[E0201]: positions along axis {axis} of i64[{dims.replace(' ', '')}]: it " \
        "has no such axis\n --> m.arch:3:14" in str(e.value)


# Found by a sweep calling every primitive, intrinsic and library block with arguments of the
# wrong rank, dtype or value: each crashed inside archc (an IndexError, TypeError, MemoryError,
# a NumPy or onnx checker error: E0900 at the CLI) and is now a diagnostic at the call.
_SWEEP = ("model m {{\n  input x: float32[batch, seq, 8]\n  input ids: int64[batch, seq]\n"
          "  input h: float32[batch, 2, seq, 4]\n  input p: float32[4]\n  output y = {call}\n}}\n")


@pytest.mark.parametrize("call, line", [
    ("tail(x, x, axis = 3)", "error[E0201]: `axis` = 3 is out of range for f32[batch,seq,8]"),
    ("tail(x, ids, like_axis = -3)",
     "error[E0201]: `like_axis` = -3 is out of range for i64[batch,seq]"),
    ("causal_mask(argmax(p), positions(x))", "error[E0201]: shape mismatch: query positions "
     "must be int64[T] (from `positions`), got i64[]"),
    ("band_mask(positions(x), x, 2)", "error[E0201]: shape mismatch: key positions must be "
     "int64[T] (from `positions`), got f32[batch,seq,8]"),
    ("relative_buckets(sum(p), positions(x))", "error[E0201]: shape mismatch: query positions "
     "must be int64[T] (from `positions`), got f32[]"),
    ("relative_bias(x, 2, buckets = 1)", "error[E0200]: `buckets` = 1 is too few: relative "
     "buckets need at least 4 when bidirectional"),
    ("relative_buckets(positions(x), positions(x), 8, 2)", "error[E0200]: `max_distance` = 2 "
     "must be above the 2 distances that 8 buckets keep exact"),
    ("routed([], 1)", "error[E0201]: `weights` must be a list of expert weights [experts, ...]"),
    ("routed([param(4, 8) as w], 5)", "error[E0201]: routed weights f32[4,8] with `top_k` = 5: "
     "needs one expert count E on axis 0 and 1 <= top_k <= E"),
    ("rotary(sum(p), positions(x), rope())",
     "error[E0201]: `rotary` needs x [batch, heads, seq, head_dim], got f32[]"),
    ("rope(short_factor = [x, x])", "error[E0104]: `short_factor` must be a list of numbers"),
    ("arange(1000000000000)", "error[E0200]: a constant [1000000000000] would take 7.28 TiB, "
     "over the limit of 16 GiB"),
    ("ones(1000000000000, 3)", "error[E0200]: a constant [1000000000000, 3] would take 10.9 "
     "TiB, over the limit of 16 GiB"),
    ("maximum(1e300, ids)",
     "error[E0200]: `x` = 1e+300 does not fit int64, the dtype of i64[batch,seq]"),
    ("ids + 1e300",
     "error[E0104]: cannot apply `+` to a tensor i64[batch,seq] and the number 1e+300"),
    ("alibi_slopes(1000000000000)", "error[E0200]: `heads` = 1000000000000 must be in 1..65536"),
    ("bigbird_layout(1000000000000, 2, 2)", "error[E0200]: BigBird's layout of 2 heads x "
     "500000000000 blocks (length 1000000000000, block_size 2) is over the compile-time limit "
     "of 16,777,216 block pairs"),
    ("reshape(x, [-1, -1])", "error[E0104]: `shape` can hold -1 only once"),
    ("split_heads(x, 2, 1)", "error[E0201]: shape mismatch in `split_heads`: cannot reshape `x` "
     "(f32[batch,seq,8], 8 elements per batch*seq) to [batch, seq, 2, 1] (2 elements per "
     "batch*seq)"),
    ("tanh(ids)", "error[E0201]: shape mismatch: `x` is i64[batch,seq]: needs float32"),
    ("softmax(ids)", "error[E0201]: shape mismatch: `x` is i64[batch,seq]: needs float32"),
    ("silu(ids > 0)", "error[E0201]: shape mismatch: `x` is b8[batch,seq]: needs float32"),
    ("concat(ids, x)", "error[E0201]: shape mismatch: cannot concat i64[batch,seq] and "
     "f32[batch,seq,8]: different dtypes"),
    ("ids @ x", "error[E0201]: shape mismatch: matmul needs two float32 or two int64 operands, "
     "got i64[batch,seq] and f32[batch,seq,8]"),
    ("moe_gates(x, 9)", "error[E0200]: `k` = 9 must be in 1..8 (the experts in "
     "f32[batch,seq,8])"),
    ("repeat_kv(h, -1)", "error[E0200]: `groups` = -1 must be positive"),
    ("sinusoidal(ids, -2)", "error[E0200]: sinusoidal positions need a positive dim, got -2"),
])
def test_wrong_rank_dtype_or_value_is_a_diagnostic_not_a_crash(call, line):
    with pytest.raises(ArchcError) as e:
        lower(archc.parse(_SWEEP.format(call=call), "m.arch"))
    assert str(e.value).splitlines()[0] == line
    assert "E0900" not in str(e.value)


@pytest.mark.parametrize("call", ["relu(ids)", "abs(ids)", "reshape(x, [-1, 16])",
                                  "gelu_tanh(sum(p)) + x", "moe_gates(x, 8)",
                                  "tail(x, ids, axis = -2, like_axis = -1)"])
def test_what_the_sweep_fixes_did_not_refuse(call):
    """The neighbours of those refusals still lower and run: int64 relu/abs, a -1 that a
    symbolic size may divide, gelu of a rank-0 tensor (NumPy's tanh(out=) of a scalar
    crashed; onnxruntime's FastGelu takes no rank-0 input, so the rule leaves it unfused),
    every expert kept, negative axes."""
    g = archc.optimize(lower(archc.parse(_SWEEP.format(call=call), "m.arch")), 2)
    feeds = {"x": rng.normal(size=(2, 4, 8)).astype(np.float32), "ids": _ids(2, 4),
             "h": rng.normal(size=(2, 2, 4, 4)).astype(np.float32),
             "p": rng.normal(size=4).astype(np.float32)}
    if "gelu" in call:
        assert "is a scalar" in g.meta["fusions"].why_not["gelu"]  # not fused: FastGelu refuses
    _run_both(g, feeds, archc.init_params(g))


def test_longrope_factors_must_match_the_rotary_dims():
    """Fuzz seed 777000004212: a Phi-3 config whose `partial_rotary_factor` key was mistyped
    gave 8 rotary dims, but its longrope lists held 2 factors each; the frequency table failed
    to broadcast (E0900). Now: E0200 counting both, and the right count still lowers."""
    text = """model m {
  input input_ids: int64[batch, seq]
  input attention_mask: int64[batch, seq]
  r = rope(scaling = longrope, original_max = 6, short_factor = SHORT, long_factor = [3.0, 7.0])
  x = embed(input_ids, 50, 16)
  output y = attention(x, 2, causal, mask = attention_mask, rope = r)
}
"""
    with pytest.raises(ArchcError) as e:
        lower(archc.parse(text.replace("SHORT", "[1.0, 1.5]"), "m.arch"))
    assert "error[E0200]: longrope has 2 short and 2 long factors; 8 rotary dims need 4 of " \
        "each" in str(e.value) and "E0900" not in str(e.value)
    four = text.replace("SHORT", "[1.0, 1.5, 2.0, 2.5]").replace("[3.0, 7.0]", "[3, 4, 5, 7]")
    g = lower(archc.parse(four, "m.arch"))
    ones = np.ones((1, 3), np.int64)
    out = archc.run(g, {"input_ids": ones, "attention_mask": ones}, archc.init_params(g))["y"]
    assert out.shape == (1, 3, 16) and np.isfinite(out).all()


@pytest.mark.parametrize("bias", ["0.5", "-2"])
def test_a_scalar_position_bias_exports_at_o2(bias):
    """The sweep's leftover: a scalar `position_bias` reached the fused attention's empty-row
    check, which reduced it over a key axis it does not have (the ONNX checker refused the
    export, E0900). A scalar is every key's bias: onnxruntime -O2 equals NumPy -O0 (1e-5)."""
    text = f"model m {{\n  input f3: float32[batch, seq, 8]\n" \
           f"  output y = attention(f3, 2, position_bias = {bias})\n}}\n"
    plain = lower(archc.parse(text, "m.arch"))
    fused = archc.optimize(lower(archc.parse(text, "m.arch")), 2)
    assert fused.meta["fusions"].fired["sdpa"] == 1
    w, x = archc.init_params(plain), {"f3": rng.normal(size=(2, 5, 8)).astype(np.float32)}
    np.testing.assert_allclose(archc.run(fused, x, w, backend="onnxruntime")["y"],
                               archc.run(plain, x, w)["y"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("args, line", [
    ("scaling = longrope, original_max = 1, short_factor = [1.0, 1.0], "
     "long_factor = [2.0, 2.0]", "error[E0200]: `original_max` = 1 must be at least 2"),
    ("scaling = yarn, original_max = -4", "error[E0200]: `original_max` = -4 must be at least 1"),
    ("scaling = dynamic, max_pos = -8", "error[E0200]: `max_pos` = -8 must be positive"),
    ("scaling = llama3, original_max = 8, low_freq_factor = 2.0, high_freq_factor = 2.0",
     "error[E0200]: llama3 needs 0 < `low_freq_factor` < `high_freq_factor`, got 2.0 and 2.0"),
])
def test_rope_scaling_values_that_would_divide_by_zero(args, line):
    """Fuzz seed 4242000002782: a Phi-3 config with `original_max_position_embeddings` = 1
    made longrope's attention factor divide by log(1) (ZeroDivisionError, E0900). Each scaled
    rope's divisors are checked where the rope is written."""
    text = f"model m {{\n  input ids: int64[batch, seq]\n  r = rope({args})\n" \
           f"  output y = attention(embed(ids, 50, 16), 2, causal, rope = r)\n}}\n"
    with pytest.raises(ArchcError) as e:
        lower(archc.parse(text, "m.arch"))
    assert str(e.value).splitlines()[0] == line
