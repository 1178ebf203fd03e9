"""Hostile input arrays: one validation before either backend runs, so NumPy and onnxruntime
accept and refuse exactly the same inputs, with the same error code (differential tests)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from conftest import ROOT, TINY

import archc
from archc.cli import main
from archc.diagnostics import ArchcError
from archc.hf import import_hf

BACKENDS = ("numpy", "onnxruntime")
IDS = np.array([[1, 2, 3, 4], [5, 6, 7, 0]], np.int64)
MASK = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], np.int64)


@pytest.fixture(scope="module")
def tiny():
    g = archc.compile(TINY)
    return g, archc.init_params(g, 1)


def _outcome(g, w, feeds, backend):
    try:
        return archc.run(g, feeds, w, backend=backend)
    except ArchcError as e:
        return tuple(d.code for d in e.diagnostics)


BAD = {
    "negative id": {"input_ids": np.array([[1, -2, 3]]), "attention_mask": np.ones((1, 3))},
    "id = vocab": {"input_ids": np.array([[1, 50]]), "attention_mask": np.ones((1, 2))},
    "huge uint id": {"input_ids": np.array([[2**64 - 1]], np.uint64)},
    "float ids": {"input_ids": np.array([[1.5, 2.0]])},
    "nan ids": {"input_ids": np.array([[np.nan, 2.0]])},
    "string ids": {"input_ids": np.array([["a", "b"]])},
    "complex ids": {"input_ids": np.array([[1j, 2]])},
    "object ids": {"input_ids": np.array([[1, None]], dtype=object)},
    "ragged": {"input_ids": [[1, 2], [3]]},
    "rank 1": {"input_ids": np.array([1, 2, 3])},
    "rank 3": {"input_ids": IDS[None]},
    "seq 0": {"input_ids": np.zeros((1, 0), np.int64), "attention_mask": np.zeros((1, 0))},
    "batch 0": {"input_ids": np.zeros((0, 3), np.int64)},
    "mask seq mismatch": {"input_ids": IDS, "attention_mask": np.ones((2, 5), np.int64)},
    "mask batch mismatch": {"input_ids": IDS, "attention_mask": np.ones((1, 4), np.int64)},
    "mask of 2": {"input_ids": IDS, "attention_mask": MASK * 2},
    "mask of -1": {"input_ids": IDS, "attention_mask": -MASK},
    "seq past positions": {"input_ids": np.ones((1, 13), np.int64)},
    "no ids": {"attention_mask": MASK},
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_both_backends_refuse_the_same_inputs_with_the_same_code(tiny, case):
    g, w = tiny
    outcomes = [_outcome(g, w, BAD[case], b) for b in BACKENDS]
    assert isinstance(outcomes[0], tuple), f"{case}: accepted"
    assert outcomes[0] == outcomes[1], f"{case}: {outcomes}"


def test_refusals_say_what_was_expected(tiny):
    g, w = tiny
    with pytest.raises(ArchcError, match=r"input `input_ids` holds id -2 at \[0, 1\]: the "
                       r"table `wte.weight` has 50 rows \(ids 0\.\.49\)(?s:.*)not wrapped"):
        archc.run(g, BAD["negative id"], w)
    with pytest.raises(ArchcError, match=r"index 12 of table `wpe.weight`, which has 12 rows"):
        archc.run(g, BAD["seq past positions"], w)
    with pytest.raises(ArchcError, match=r"`attention_mask` has seq = 5 \(axis 1\), "
                       r"`input_ids` has seq = 4"):
        archc.run(g, BAD["mask seq mismatch"], w)
    with pytest.raises(ArchcError, match=r"seq = 0 \(axis 1\); seq must be at least 1"):
        archc.run(g, BAD["seq 0"], w)


def test_accepted_conversions_give_the_same_numbers_on_both_backends(tiny):
    """int32/uint8 ids, a bool or float 0/1 mask and a missing mask (all ones) are converted
    the same way for both backends."""
    g, w = tiny
    want = archc.run(g, {"input_ids": IDS, "attention_mask": MASK}, w)["logits"]
    variants = [{"input_ids": IDS.astype(np.int32), "attention_mask": MASK.astype(np.float32)},
                {"input_ids": IDS.astype(np.uint8), "attention_mask": MASK.astype(bool)},
                {"input_ids": IDS.astype(np.float64), "attention_mask": MASK.tolist()}]
    for feeds in variants:
        for backend in BACKENDS:
            got = archc.run(g, feeds, w, backend=backend)["logits"]
            np.testing.assert_allclose(got, want, atol=1e-5)
    ones = archc.run(g, {"input_ids": IDS, "attention_mask": np.ones_like(IDS)}, w)["logits"]
    for backend in BACKENDS:
        got = archc.run(g, {"input_ids": IDS}, w, backend=backend)["logits"]
        np.testing.assert_allclose(got, ones, atol=1e-5)


@pytest.mark.parametrize("family", ["roberta", "longformer"])
def test_roberta_and_longformer_run_from_ids_and_mask_alone(family, tmp_path):
    """Their tokenizers give input_ids and attention_mask; token_type_ids default to zeros
    and a global-attention mask to none, on both backends."""
    fixtures = ROOT / "tests" / "fixtures" / "hf"
    import_hf(fixtures / family, tmp_path)
    g = archc.compile(tmp_path / "model.arch")
    w = archc.load_weights(g, str(tmp_path / "model.safetensors"))
    ref = np.load(fixtures / family / "reference.npz")
    feeds = {"input_ids": ref["input_ids"], "attention_mask": ref["attention_mask"]}
    full = {**feeds, "token_type_ids": np.zeros_like(ref["input_ids"]),
            "global_attention_mask": np.zeros_like(ref["input_ids"])}
    want = archc.run(g, full, w)["logits"]
    for backend in BACKENDS:
        np.testing.assert_allclose(archc.run(g, feeds, w, backend=backend)["logits"], want,
                                   atol=1e-5)
    if family == "roberta":
        real = ref["attention_mask"].astype(bool)
        assert np.abs(want - ref["logits"])[real].max() <= 1e-4


def _cli_run(capsys, tmp_path, arrays=None, raw: bytes | None = None, *extra):
    (tmp_path / "tiny.arch").write_text(TINY)
    path = tmp_path / "in.npz"
    if raw is not None:
        path.write_bytes(raw)
    elif arrays is not None:
        np.savez(path, **arrays)
    code = main(["run", str(tmp_path / "tiny.arch"), "--inputs", str(path), "--out",
                 str(tmp_path / "o.npz"), *extra])
    return code, capsys.readouterr().err


def test_npz_that_is_pickled_not_zip_or_holds_objects(tmp_path, capsys):
    for raw in (pickle.dumps({"input_ids": IDS}), b"not a zip", b""):
        code, err = _cli_run(capsys, tmp_path, raw=raw)
        assert code == 1 and "error[E0317]: cannot read" in err and "Traceback" not in err
    code, err = _cli_run(capsys, tmp_path, {"input_ids": np.array([[1, None]], dtype=object)})
    assert code == 1 and "holds Python objects" in err
    np.save(tmp_path / "x.npy", IDS)
    code, err = _cli_run(capsys, tmp_path, raw=(tmp_path / "x.npy").read_bytes())
    assert code == 1 and "E0317" in err


def test_cli_inputs_file_errors_name_the_file(tmp_path, capsys):
    code, err = _cli_run(capsys, tmp_path, {"input_ids": np.array([[1, 99]])})
    assert code == 1 and "holds id 99" in err and f"in `{tmp_path / 'in.npz'}`" in err
    code, err = _cli_run(capsys, tmp_path, {"input_ids": IDS.astype(np.int32)}, None,
                         "--backend", "onnxruntime")
    assert code == 0, err


def test_generate_refuses_negative_huge_and_out_of_table_ids(tmp_path, capsys):
    (tmp_path / "tiny.arch").write_text(TINY)
    spec = str(tmp_path / "tiny.arch")
    for ids, want in (("1,-2,3", "holds id -2"), ("1,2,99999999999999999999999",
                                                   "beyond int64"), ("1,2,50", "holds id 50"),
                      ("1,,2", "not a comma-separated list")):
        assert main(["generate", spec, "--ids", ids, "--steps", "2"]) == 1
        assert want in capsys.readouterr().err
    assert main(["generate", spec, "--ids", "1,2,3", "--steps", "10"]) == 1  # 12 positions
    assert "index 12 of table `wpe.weight`" in capsys.readouterr().err
    assert main(["generate", spec, "--ids", "1,2,3", "--steps", "9"]) == 0


def test_random_ids_into_a_table_of_symbolic_length():
    """`run` without --inputs draws ids below the rows of the table they gather from; a table
    that is itself an input, [batch, seq], has a symbolic length (TypeError: min of a str and
    an int). It is the length this run gives it."""
    g = archc.compile("model m {\n  input t: float32[seq, 4]\n  input i: int64[batch, seq]\n"
                      "  output y = gather(t, i)\n}\n")
    feeds = archc.inputs.random_inputs(g, 2, 5, 0)
    assert feeds["i"].shape == (2, 5) and feeds["i"].min() >= 0 and feeds["i"].max() < 5
    assert archc.run(g, feeds, {})["y"].shape == (2, 5, 4)


RESHAPED = "model m {{\n  input x: float32[batch, seq]\n  output y = reshape(x, {shape})\n}}\n"


@pytest.mark.parametrize("shape", ["[2, 2]", "[seq, 4]"])
def test_sizes_the_spec_cannot_take_are_located_on_both_backends(shape):
    """A spec's shapes may hold only for some sizes of its symbols (`reshape(x, [2, 2])` needs
    batch x seq = 4). A run at other sizes failed inside NumPy or onnxruntime (E0900, no
    line). The shape rules, run again at the run's sizes, now say where: E0201 at the spec's
    line, the same on both backends; sizes that fit still run."""
    g = archc.lower(archc.parse(RESHAPED.format(shape=shape), "m.arch"))
    seq = 3
    errors = []
    for backend in BACKENDS:
        with pytest.raises(ArchcError) as e:
            archc.run(g, {"x": np.ones((1, seq), np.float32)}, {}, backend=backend)
        errors.append(str(e.value).splitlines()[:2])
    want = "[2, 2]" if shape == "[2, 2]" else "[3, 4]"
    assert errors[0] == errors[1] == [
        f"error[E0201]: at these input sizes (batch = 1, seq = 3): cannot reshape f32[1,3] to "
        f"{want}", " --> m.arch:3:14"]
    fits, out = ((1, 4), (2, 2)) if shape == "[2, 2]" else ((4, 4), (4, 4))
    assert _run_both_equal(g, {"x": np.ones(fits, np.float32)}).shape == out


def _run_both_equal(g, feeds):
    outs = [archc.run(g, feeds, {}, backend=b)["y"] for b in BACKENDS]
    np.testing.assert_array_equal(outs[0], outs[1])
    return outs[0]


def test_a_kernel_that_fails_is_named_at_its_line():
    """When the shape rules accept the sizes but a NumPy kernel still fails, the error names
    the op and the spec's line (E0333), saying it may be archc's bug; a failure without a
    node propagates as it was."""
    from archc.backends.numpy_interp import InterpreterError
    from archc.runner import explained

    g = archc.lower(archc.parse(RESHAPED.format(shape="[2, 2]"), "m.arch"))
    feeds = {"x": np.ones((1, 4), np.float32)}
    err = InterpreterError("while executing ...")
    err.node = next(n for n in g.nodes() if n.kind == "op")
    err.cause = ValueError("boom")

    def fail(e):
        raise e
    with pytest.raises(ArchcError) as e:
        explained(g, feeds, lambda: fail(err))
    lines = str(e.value).splitlines()
    assert lines[:2] == ["error[E0333]: at these input sizes (batch = 1, seq = 4): `reshape` "
                         "failed: ValueError: boom", " --> m.arch:3:14"]
    assert "this is a bug in archc" in str(e.value)
    with pytest.raises(KeyError):
        explained(g, feeds, lambda: fail(KeyError("not a kernel")))


def test_an_onnxruntime_failure_is_located_by_the_numpy_run():
    """An index past its table (which no shape rule can see) made onnxruntime fail with its
    own message (E0900, no line). The same run on NumPy names the op: both backends report
    the same E0333 at the spec's line."""
    g = archc.lower(archc.parse("model m {\n  input t: float32[rows, 4]\n"
                                "  input i: int64[batch, seq]\n  output y = gather(t, i)\n}\n",
                                "m.arch"))
    feeds = {"t": np.ones((3, 4), np.float32), "i": np.array([[0, 5]])}
    lines = []
    for backend in BACKENDS:
        with pytest.raises(ArchcError) as e:
            archc.run(g, feeds, {}, backend=backend)
        lines.append(str(e.value).splitlines()[:2])
    assert lines[0] == lines[1] == [
        "error[E0333]: at these input sizes (rows = 3, batch = 1, seq = 2): `gather` failed: "
        "IndexError: index 5 is out of bounds for axis 0 with size 3", " --> m.arch:4:14"]
