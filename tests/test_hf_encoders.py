"""Encoders and encoder-decoders imported from tiny random checkpoints (every parameter
re-randomised; rows padded at the end): logits match transformers within 1e-4 on both
backends, on real positions, full and (for every encoder-decoder, the newer families' too)
incremental; padding matters."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import ROOT

import archc
from archc.hf import import_hf

FIXTURES = ROOT / "tests" / "fixtures" / "hf"
CASES = ["bert", "roberta", "longformer", "longformer_w6", "t5", "t5_v1_1", "t5_variant", "bart"]


def _load(name: str, tmp_path, src=None):
    import_hf(src or FIXTURES / name, tmp_path / name)
    g = archc.compile(tmp_path / name / "model.arch")
    w = archc.load_weights(g, str(tmp_path / name / "model.safetensors"))
    ref = np.load(FIXTURES / name / "reference.npz")
    feeds = {k: ref[k] for k in ref.files if k in g.inputs}
    feeds.setdefault("token_type_ids", np.zeros_like(ref["input_ids"]))
    real = ref["decoder_attention_mask" if "decoder_attention_mask" in ref.files
               else "attention_mask"].astype(bool)
    return g, w, ref, feeds, real


@pytest.mark.parametrize("name", CASES)
def test_logits_match_transformers(name, tmp_path):
    g, w, ref, feeds, real = _load(name, tmp_path)
    assert not real.all()
    for backend in ("numpy", "onnxruntime"):
        out = archc.run(g, feeds, w, backend=backend)
        err = np.abs(out["logits"] - ref["logits"])[real].max()
        assert err <= 1e-4, f"{name} on {backend}: {err:.3g}"
        if "nsp_logits" in ref.files:
            np.testing.assert_allclose(out["nsp_logits"], ref["nsp_logits"], atol=1e-4)


@pytest.mark.parametrize("name", ["bert", "longformer", "t5", "bart"])
def test_padding_matters(name, tmp_path):
    g, w, ref, feeds, real = _load(name, tmp_path)
    ignored = {**feeds, "attention_mask": np.ones_like(feeds["attention_mask"])}
    out = archc.run(g, ignored, w)["logits"]
    assert np.abs(out[1] - ref["logits"][1])[real[1]].max() > 1e-3  # the padded row changes
    np.testing.assert_allclose(out[0], ref["logits"][0], atol=1e-4)  # the full row does not


def test_longformer_global_tokens_matter(tmp_path):
    g, w, ref, feeds, real = _load("longformer", tmp_path)
    out = archc.run(g, {**feeds, "global_attention_mask": np.zeros_like(ref["input_ids"])},
                    w)["logits"]
    assert np.abs(out - ref["logits"])[real].max() > 1e-3
    assert "layers.0.attention.q_global.weight" in g.params


def test_t5_v1_1_untied_head_from_a_4x_checkpoint(tmp_path):
    """4.x writes v1.1 as `tie_word_embeddings: false` with its own lm_head.weight."""
    from safetensors.numpy import load_file, save_file

    src = tmp_path / "v11"
    shutil.copytree(FIXTURES / "t5_v1_1", src)
    cfg = json.loads((src / "config.json").read_text())
    cfg.pop("scale_decoder_outputs")
    cfg["tie_word_embeddings"] = False
    (src / "config.json").write_text(json.dumps(cfg))
    tensors = load_file(str(src / "model.safetensors"))
    tensors["lm_head.weight"] = tensors["shared.weight"].copy()
    save_file(tensors, str(src / "model.safetensors"))
    result = import_hf(src, tmp_path / "out")
    assert "lm_head(y, vocab)" in result.spec and "** -0.5" not in result.spec
    g, w, ref, feeds, real = _load("t5_v1_1", tmp_path, src=src)
    assert "lm_head.weight" in g.params
    err = np.abs(archc.run(g, feeds, w)["logits"] - ref["logits"])[real].max()
    assert err <= 1e-4


# every encoder-decoder fixture, the newer families (test_hf_encoders_new.SEQ2SEQ) included
@pytest.mark.parametrize("name", ["t5", "t5_v1_1", "t5_variant", "bart",
                                  "marian", "pegasus", "mbart", "mt5"])
def test_incremental_decoder_logits(name, tmp_path):
    from archc.kvcache import seq2seq_incremental_logits

    _, w, ref, _, real = _load(name, tmp_path)
    module = archc.parse_file(tmp_path / name / "model.arch")
    inputs = {k: ref[k] for k in ref.files}
    for backend in ("numpy", "onnxruntime"):
        got = seq2seq_incremental_logits(module, w, inputs, int(ref["prefill"]), backend)
        err = np.abs(got - ref["incremental_logits"])[real].max()
        assert err <= 1e-4, f"{name} on {backend}: {err:.3g}"


def test_seq2seq_graphs_and_cli(tmp_path):
    import onnx

    from archc.cli import main
    from archc.kvcache import split_seq2seq

    _, _, ref, _, real = _load("bart", tmp_path)
    spec = tmp_path / "bart" / "model.arch"
    encoder, decoder = split_seq2seq(archc.parse_file(spec))
    assert set(encoder.inputs) == {"input_ids", "attention_mask"}
    assert set(encoder.outputs) == {f"encoder_key_values.{i}.{k}" for i in (0, 1)
                                    for k in ("key", "value")}
    assert "input_ids" not in decoder.inputs and "encoder_key_values.1.value" in decoder.inputs
    assert not any(p.startswith("encoder.") for p in decoder.params)  # the encoder runs once
    weights = str(tmp_path / "bart" / "model.safetensors")
    np.savez(tmp_path / "in.npz", **{k: ref[k] for k in ref.files})
    assert main(["run", str(spec), "--weights", weights, "--inputs", str(tmp_path / "in.npz"),
                 "--out", str(tmp_path / "o.npz"), "--incremental", "3"]) == 0
    with np.load(tmp_path / "o.npz") as f:
        assert np.abs(f["logits"] - ref["incremental_logits"])[real].max() <= 1e-4
    assert main(["compile", str(spec), "--weights", weights, "--kv-cache", "-o",
                 str(tmp_path / "bart.onnx")]) == 0
    for part in ("encoder", "decoder_with_past"):
        onnx.checker.check_model(onnx.load(str(tmp_path / f"bart.{part}.onnx")), full_check=True)


def test_seq2seq_greedy_generation_equals_full_recomputation(tmp_path):
    from archc.kvcache import generate_seq2seq

    _, w, ref, _, _ = _load("t5", tmp_path)
    spec = tmp_path / "t5" / "model.arch"
    g = archc.compile(spec)
    src = ref["input_ids"][:1]
    out = generate_seq2seq(archc.parse_file(spec), w, src, steps=4, backend="onnxruntime")
    dec = np.zeros((1, 1), np.int64)
    for _ in range(4):
        feeds = {"input_ids": src, "attention_mask": np.ones_like(src), "decoder_input_ids": dec,
                 "decoder_attention_mask": np.ones_like(dec)}
        nxt = archc.run(g, feeds, w)["logits"][:, -1].argmax(-1)[:, None]
        dec = np.concatenate([dec, nxt], axis=1)
    np.testing.assert_array_equal(out, dec)
