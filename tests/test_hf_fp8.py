"""FP8 checkpoints (tools/make_fp8_fixtures.py): linear weights stored as float8 with block-wise
(`quant_method: fp8`, `weight_scale_inv`) or per-channel (compressed-tensors, `weight_scale`)
scales import as the float32 model they stand for, within 1e-4 of transformers on the
dequantized weights; the 256-value decode tables equal torch's and the formats' definitions;
scales that do not fit and quantizations archc does not apply are diagnostics."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import ROOT

import archc
from archc.diagnostics import ArchcError
from archc.hf import import_hf
from archc.hf.tensors import Tensors
from archc.kvcache import incremental_logits
from archc.tensorfile import FP8

FIXTURES = ROOT / "tests" / "fixtures" / "hf"
TORCH_NAMES = {"F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu"}


def _definition(b: int, exp_bits: int, man_bits: int) -> float:
    """One byte of a signed float8 format decoded by hand, the way the OCP FP8 spec writes it."""
    sign = -1.0 if b >> 7 else 1.0
    e, m = (b >> man_bits) & (2**exp_bits - 1), b & (2**man_bits - 1)
    bias = 2 ** (exp_bits - 1) - 1
    if e == 0:
        return sign * m * 2.0 ** (1 - bias - man_bits)
    return sign * (2**man_bits + m) * 2.0 ** (e - bias - man_bits)


def test_tables_match_torch_and_the_definition():
    ref = np.load(FIXTURES / "llama_fp8" / "reference.npz")
    for dtype, torch_name in TORCH_NAMES.items():  # stored by the fixture tool from torch
        np.testing.assert_array_equal(FP8[dtype], ref[torch_name], err_msg=dtype)
    e4m3, e5m2, e8m0 = FP8["F8_E4M3"], FP8["F8_E5M2"], FP8["F8_E8M0"]
    # E4M3 ("fn"): no infinities, NaN only at S.1111.111, so 0x7E is the largest finite (448)
    assert [b for b in range(256) if np.isnan(e4m3[b])] == [0x7F, 0xFF]
    assert all(e4m3[b] == _definition(b, 4, 3) for b in range(256) if b & 0x7F != 0x7F)
    assert (e4m3[0x7E], e4m3[0x01], e4m3[0x08], e4m3[0x80]) == (448, 2.0**-9, 2.0**-6, 0)
    assert np.signbit(e4m3[0x80])
    # E5M2: IEEE-like, the top half of a float16
    np.testing.assert_array_equal(e5m2, (np.arange(256, dtype=np.uint16) << 8).view(np.float16))
    assert all(e5m2[b] == _definition(b, 5, 2) for b in range(256) if b & 0x7C != 0x7C)
    assert (e5m2[0x7B], e5m2[0x7C], e5m2[0x01]) == (57344, np.inf, 2.0**-16)
    # E8M0: unsigned powers of two, NaN at 0xFF
    assert (e8m0[127], e8m0[0], e8m0[254]) == (1.0, 2.0**-127, 2.0**127) and np.isnan(e8m0[255])


def _load(name: str, tmp_path):
    out = tmp_path / name
    import_hf(FIXTURES / name, out)
    g = archc.compile(out / "model.arch")
    return g, archc.load_weights(g, str(out / "model.safetensors")), \
        np.load(FIXTURES / name / "reference.npz")


@pytest.mark.parametrize("name", ["llama_fp8", "qwen3_fp8_channel"])
def test_fp8_checkpoint_logits_match_transformers(name, tmp_path):
    g, w, ref = _load(name, tmp_path)
    cached = archc.optimize(archc.lower(archc.parse_file(tmp_path / name / "model.arch"),
                                        cache=True))
    feeds = {"input_ids": ref["input_ids"], "attention_mask": ref["attention_mask"]}
    real = ref["attention_mask"].astype(bool)
    for backend in ("numpy", "onnxruntime"):
        err = np.abs(archc.run(g, feeds, w, backend=backend)["logits"] - ref["logits"])[real]
        assert err.max() <= 1e-4, f"{name} on {backend}: {err.max():.3g}"
        got = incremental_logits(cached, w, ref["input_ids"], ref["attention_mask"],
                                 int(ref["prefill"]), backend)
        assert np.abs(got - ref["incremental_logits"])[real].max() <= 1e-4, backend


def test_the_scales_are_applied(tmp_path):
    """The face values alone (scales of 1) give another model: the scales are observable."""
    _, w, _ = _load("llama_fp8", tmp_path)
    t = Tensors.load(FIXTURES / "llama_fp8")
    name = "model.layers.0.mlp.down_proj.weight"
    face = t.files[name].fp8(name)
    scaled = t.take(name)
    assert not np.allclose(face, scaled) and np.isfinite(scaled).all()
    assert np.array_equal(w["layers.0.mlp.down.weight"], scaled.T)


def _copy(tmp_path, name: str = "llama_fp8"):
    folder = tmp_path / name
    shutil.copytree(FIXTURES / name, folder)
    return folder


def _edit_header(path, edit) -> None:
    """Rewrite the JSON header of a safetensors file (NumPy cannot write fp8 tensors)."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])


def _error(folder, tmp_path) -> str:
    with pytest.raises(ArchcError) as e:
        import_hf(folder, tmp_path / "out")
    return "\n".join(d.message + (d.help or "") for d in e.value.diagnostics)


def test_a_scale_of_the_wrong_shape_is_a_diagnostic(tmp_path):
    folder = _copy(tmp_path)
    scale = "model.layers.0.mlp.down_proj.weight_scale_inv"

    def transpose(h):  # [3, 4] -> [4, 3]: the same bytes, blocks that do not fit
        h[scale]["shape"] = h[scale]["shape"][::-1]

    _edit_header(folder / "model.safetensors", transpose)
    msg = _error(folder, tmp_path)
    assert f"scale tensor `{scale}` has shape [4, 3]" in msg
    assert "[40, 56] in blocks of [16, 16] needs [3, 4]" in msg


def test_a_missing_scale_is_a_diagnostic(tmp_path):
    folder = _copy(tmp_path)
    scale = "model.layers.1.self_attn.q_proj.weight_scale_inv"
    _edit_header(folder / "model.safetensors",
                 lambda h: h.update({scale + "_x": h.pop(scale)}))
    assert f"has no scale tensor `{scale}`" in _error(folder, tmp_path)


@pytest.mark.parametrize("quant, words", [
    ({"quant_method": "gptq", "bits": 4}, "quantization method \"gptq\" is not supported"),
    ({"quant_method": "fp8", "activation_scheme": "static"}, "activation scheme \"static\""),
    ({"quant_method": "fp8", "weight_block_size": [16, "16"]}, "not two positive sizes"),
    ({"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": {
        "num_bits": 4, "type": "int", "strategy": "group"}}}}, "one float8 weight scheme"),
    (None, "fp8 means nothing without its scales"),
], ids=["gptq", "static", "bad-block", "int4", "no-config"])
def test_unsupported_quantization_is_a_diagnostic(tmp_path, quant, words):
    folder = _copy(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = quant
    (folder / "config.json").write_text(json.dumps(config))
    assert words in _error(folder, tmp_path)


def test_per_tensor_e5m2_scale_dequantizes_by_the_definition(tmp_path):
    """A hand-made file: F8_E5M2 bytes and a 0-d `weight_scale_inv` (`weight_block_size: null`),
    checked against float16's top half times the scale."""
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    codes[(codes & 0x7C) == 0x7C] = 0x3C  # no inf/NaN
    scale = np.float32(0.375)
    body = codes.tobytes() + scale.tobytes()
    header = {"w.weight": {"dtype": "F8_E5M2", "shape": [5, 7], "data_offsets": [0, 35]},
              "w.weight_scale_inv": {"dtype": "F32", "shape": [], "data_offsets": [35, 39]}}
    raw = json.dumps(header).encode()
    (tmp_path / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + body)
    quant = {"quant_method": "fp8", "fmt": "e5m2", "weight_block_size": None}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama",
                                                      "quantization_config": quant}))
    t = Tensors.load(tmp_path)
    want = (codes.astype(np.uint16) << 8).view(np.float16).astype(np.float32) * scale
    np.testing.assert_array_equal(t.take("w.weight", (5, 7)), want)
    t.check_all_used()  # the scale was consumed with its weight
