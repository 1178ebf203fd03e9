"""Hostile weight files: every failure is a located diagnostic (file, tensor, dtype, what was
expected) and exit 1; NaN/Inf is a warning, or an error with `--strict`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import ROOT
from safetensors.numpy import load_file, save_file

import archc
from archc.cli import main
from archc.diagnostics import ArchcError
from archc.hf import import_hf

LLAMA = str(ROOT / "specs" / "llama_tiny.arch")
FIXTURES = ROOT / "tests" / "fixtures" / "hf"


@pytest.fixture(scope="module")
def graph():
    return archc.compile(LLAMA)


@pytest.fixture
def good(graph, tmp_path):
    path = tmp_path / "w.safetensors"
    archc.save_weights(archc.init_params(graph), str(path))
    return path


def _run(capsys, weights, *extra) -> tuple[int, str]:
    code = main(["run", LLAMA, "--weights", str(weights), "--seq", "3", "--out",
                 str(weights.parent / "o.npz"), *extra])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("cut", [0, 7, 8, 100, -1])
def test_truncated_file_is_located(good, capsys, cut):
    data = good.read_bytes()
    good.write_bytes(data[:cut] if cut >= 0 else data[: len(data) // 2])
    code, err = _run(capsys, good)
    assert code == 1 and "Traceback" not in err
    assert f"`{good}`" in err and "not valid safetensors" in err


def test_garbage_header_and_hostile_entries(good, capsys):
    for header in (b"\xff\xfe garbage", b"[1, 2]", json.dumps({"a": {"dtype": "F32", "shape":
                   [2], "data_offsets": [0, 2**62]}}).encode(),
                   json.dumps({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 0]}})
                   .encode(), b'{"a": 1, "a": 2}'):
        good.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)
        code, err = _run(capsys, good)
        assert code == 1 and "not valid safetensors" in err and "Traceback" not in err, err


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.bool_, np.int64])
def test_non_float_weights_are_refused_by_name(graph, good, capsys, dtype):
    w = load_file(str(good))
    w["norm.weight"] = w["norm.weight"].astype(dtype)
    save_file(w, str(good))
    code, err = _run(capsys, good)
    assert code == 1
    assert "tensor `norm.weight`" in err and "[256]: a float parameter needs F32" in err


def _rewrite_dtype(path, name: str, dtype: str, itemsize: int) -> None:
    """Relabel one tensor's dtype in the header (fp8, bf16: NumPy cannot write them)."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    body = bytearray(data[8 + n:])
    entry = header[name]
    begin, end = entry["data_offsets"]
    count = int(np.prod(entry["shape"]))
    new = bytes(count * itemsize)
    if dtype == "BF16":  # the top halves of the float32 values
        new = (np.frombuffer(bytes(body[begin:end]), "<u4") >> 16).astype("<u2").tobytes()
    shift = len(new) - (end - begin)
    body[begin:end] = new
    for v in header.values():
        if isinstance(v, dict) and "data_offsets" in v and v["data_offsets"][0] >= end:
            v["data_offsets"] = [v["data_offsets"][0] + shift, v["data_offsets"][1] + shift]
    entry["dtype"], entry["data_offsets"] = dtype, [begin, begin + len(new)]
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(body))


def test_fp8_is_refused_and_bf16_f16_f64_convert(graph, good, capsys):
    _rewrite_dtype(good, "norm.weight", "F8_E4M3", 1)
    code, err = _run(capsys, good)
    assert code == 1 and "`norm.weight`" in err and "F8_E4M3" in err and "scales" in err
    archc.save_weights(archc.init_params(graph), str(good))
    want = archc.init_params(graph)["embed_tokens.weight"]
    _rewrite_dtype(good, "embed_tokens.weight", "BF16", 2)
    got = archc.load_weights(graph, str(good))["embed_tokens.weight"]
    np.testing.assert_allclose(got, want, rtol=2**-7)
    w = archc.init_params(graph)
    save_file({k: v.astype(np.float16 if v.ndim == 1 else np.float64) for k, v in w.items()},
              str(good))
    loaded = archc.load_weights(graph, str(good))
    assert all(v.dtype == np.float32 for v in loaded.values())


def test_nan_weights_warn_and_strict_refuses(graph, good, capsys):
    w = load_file(str(good))
    w["layers.1.mlp.down.weight"][3, 4] = np.nan
    w["norm.weight"][0] = np.inf
    save_file(w, str(good))
    code, err = _run(capsys, good)
    assert code == 0 and err.startswith("warning[E0309]: 2 weight tensor(s)")
    assert "`layers.1.mlp.down.weight`: 1 NaN" in err and "--strict" in err
    code, err = _run(capsys, good, "--strict")
    assert code == 1 and err.startswith("error[E0309]")
    with pytest.raises(ArchcError, match="NaN or infinite"):
        archc.load_weights(graph, str(good), strict=True)


def test_missing_file_and_directory_name_the_path(tmp_path, capsys):
    code, err = _run(capsys, tmp_path / "missing.safetensors")
    assert code == 1 and f"cannot read `{tmp_path / 'missing.safetensors'}`: no such file" in err
    (tmp_path / "d.safetensors").mkdir()
    code, err = _run(capsys, tmp_path / "d.safetensors")
    assert code == 1 and "it is a directory, not a safetensors file" in err
    assert str(tmp_path / "d.safetensors") in err


def _checkpoint(tmp_path, family="llama"):
    src = tmp_path / family
    shutil.copytree(FIXTURES / family, src)
    return src


def test_duplicate_tensor_across_shards_names_both(tmp_path):
    src = _checkpoint(tmp_path)
    w = load_file(str(src / "model.safetensors"))
    names = sorted(w)
    save_file({k: w[k] for k in names[:10]}, str(src / "model-00001-of-00002.safetensors"))
    save_file({k: w[k] for k in names[9:]}, str(src / "model-00002-of-00002.safetensors"))
    (src / "model.safetensors").unlink()
    with pytest.raises(ArchcError, match=rf"tensor `{names[9]}` is in two shards: "
                       r"`model-00001-of-00002\.safetensors` and `model-00002-of-00002"):
        import_hf(src, tmp_path / "out")
    (src / "model-00002-of-00002.safetensors").unlink()
    save_file({k: w[k] for k in names[10:]}, str(src / "model-00002-of-00002.safetensors"))
    import_hf(src, tmp_path / "out")  # shards without duplicates import


def test_hf_checkpoint_non_float_and_nan(tmp_path, capsys):
    src = _checkpoint(tmp_path)
    w = load_file(str(src / "model.safetensors"))
    w["model.norm.weight"] = w["model.norm.weight"].astype(np.int8)
    save_file(w, str(src / "model.safetensors"))
    assert main(["import-hf", str(src), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "tensor `model.norm.weight`" in err and "I8[32]" in err
    w["model.norm.weight"] = np.full(32, np.nan, np.float32)
    save_file(w, str(src / "model.safetensors"))
    assert main(["import-hf", str(src), "-o", str(tmp_path / "out")]) == 0
    assert "warning[E0309]" in capsys.readouterr().err
    assert main(["import-hf", str(src), "-o", str(tmp_path / "o2"), "--strict"]) == 1
    assert "error[E0309]" in capsys.readouterr().err and not (tmp_path / "o2").exists()


def test_api_weights_of_the_wrong_dtype(graph):
    w = archc.init_params(graph)
    w["norm.weight"] = w["norm.weight"].astype(np.int32)
    with pytest.raises(ArchcError, match=r"weight `norm\.weight` is int32"):
        archc.run(graph, {"input_ids": np.ones((1, 2), np.int64)}, w)
