"""Hugging Face imports: every decoder family's tiny random checkpoint (every parameter
re-randomised; made by tools/make_fixtures.py with torch + transformers) imports to a spec and
weights whose logits match transformers' float32 eager logits within 1e-4 on both backends,
including a left-padded row. No torch is needed here."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import ROOT

import archc
from archc.diagnostics import ArchcError
from archc.hf import DECODERS, FAMILIES, import_hf

FIXTURES = ROOT / "tests" / "fixtures" / "hf"
TOL = 1e-4


def _imported(family: str, tmp_path):
    import_hf(FIXTURES / family, tmp_path / family)
    g = archc.compile(tmp_path / family / "model.arch")
    return g, archc.load_weights(g, str(tmp_path / family / "model.safetensors"))


def test_every_family_has_a_fixture():
    assert set(FAMILIES) <= {p.name for p in FIXTURES.iterdir()}


@pytest.mark.parametrize("family", DECODERS)
def test_full_sequence_logits_match_transformers(family, tmp_path):
    g, w = _imported(family, tmp_path)
    ref = np.load(FIXTURES / family / "reference.npz")
    feeds = {"input_ids": ref["input_ids"], "attention_mask": ref["attention_mask"]}
    real = ref["attention_mask"].astype(bool)  # padded positions have no reference meaning
    assert not real.all()  # the fixture does have a left-padded row
    for backend in ("numpy", "onnxruntime"):
        got = archc.run(g, feeds, w, backend=backend)["logits"]
        assert got.shape == ref["logits"].shape
        err = np.abs(got - ref["logits"])[real].max()
        assert err <= TOL, f"{family} on {backend}: max abs diff {err:.3g}"


@pytest.mark.parametrize("family", ["gpt2", "qwen2", "phi", "bloom"])
def test_a_dropped_bias_would_be_caught(family, tmp_path):
    g, w = _imported(family, tmp_path)
    ref = np.load(FIXTURES / family / "reference.npz")
    feeds = {"input_ids": ref["input_ids"], "attention_mask": ref["attention_mask"]}
    name = next(n for n in sorted(w) if n.endswith("self_attn.q.bias"))
    w[name] = np.zeros_like(w[name])
    got = archc.run(g, feeds, w)["logits"]
    assert np.abs(got - ref["logits"])[ref["attention_mask"].astype(bool)].max() > 10 * TOL


def test_transformers_4_config_layout_imports_the_same(tmp_path):
    src = tmp_path / "llama4x"
    shutil.copytree(FIXTURES / "llama", src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["rope_theta"] = cfg.pop("rope_parameters")["rope_theta"]  # 4.x: top level
    (src / "config.json").write_text(json.dumps(cfg))
    a = import_hf(FIXTURES / "llama", tmp_path / "a")
    b = import_hf(src, tmp_path / "b")
    assert a.spec == b.spec and "theta = 5000.0" in a.spec


def test_bare_model_class_has_no_head(tmp_path):
    src = tmp_path / "bare"
    shutil.copytree(FIXTURES / "llama", src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = ["LlamaModel"]
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArchcError, match=r"unexpected tensor `lm_head\.weight`"):
        import_hf(src, tmp_path / "out")
    spec = import_hf(src, tmp_path / "out", config_only=True).spec
    assert "output last_hidden_state" in spec and "lm_head" not in spec


def test_errors_name_the_tensor(tmp_path):
    from safetensors.numpy import load_file, save_file

    src = tmp_path / "broken"
    shutil.copytree(FIXTURES / "llama", src)
    tensors = load_file(str(src / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(src / "model.safetensors"))
    with pytest.raises(ArchcError, match=r"missing tensor `model\.layers\.1\.mlp\.up_proj"):
        import_hf(src, tmp_path / "o1")
    tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((7, 32), np.float32)
    save_file(tensors, str(src / "model.safetensors"))
    with pytest.raises(ArchcError, match=r"`model\.layers\.1\.mlp\.up_proj\.weight` has shape "
                       r"\[7, 32\], the config implies \[48, 32\]"):
        import_hf(src, tmp_path / "o2")
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "lama"
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArchcError, match=r"(?s)model type `lama` cannot be imported.*`llama`"):
        import_hf(src, tmp_path / "o3")


def test_import_is_general_not_tuned_to_the_fixture(tmp_path):
    """Other sizes and options of a family: a random llama-shaped checkpoint made here without
    torch (weights under HF names), checked against the formula-level reference."""
    from safetensors.numpy import save_file
    from test_reference import llama_reference

    d, heads, kv, ff, layers, vocab = 48, 6, 3, 80, 3, 50
    rng = np.random.default_rng(7)
    hd = d // heads
    t = {"model.embed_tokens.weight": rng.normal(0, 1, (vocab, d)),
         "model.norm.weight": 1 + rng.normal(0, 0.2, d),
         "lm_head.weight": rng.normal(0, 0.2, (vocab, d))}
    for i in range(layers):
        p = f"model.layers.{i}"
        for n, shape in (("self_attn.q_proj", (heads * hd, d)),
                         ("self_attn.k_proj", (kv * hd, d)), ("self_attn.v_proj", (kv * hd, d)),
                         ("self_attn.o_proj", (d, heads * hd)),
                         ("mlp.gate_proj", (ff, d)), ("mlp.up_proj", (ff, d)),
                         ("mlp.down_proj", (d, ff))):
            t[f"{p}.{n}.weight"] = rng.normal(0, shape[1] ** -0.5, shape)
        t[f"{p}.input_layernorm.weight"] = 1 + rng.normal(0, 0.2, d)
        t[f"{p}.post_attention_layernorm.weight"] = 1 + rng.normal(0, 0.2, d)
    src = tmp_path / "ckpt"
    src.mkdir()
    save_file({k: v.astype(np.float32) for k, v in t.items()}, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": vocab,
        "hidden_size": d, "num_attention_heads": heads, "num_key_value_heads": kv,
        "intermediate_size": ff, "num_hidden_layers": layers, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": False}))
    import_hf(src, tmp_path / "out")
    g = archc.compile(tmp_path / "out" / "model.arch")
    w = archc.load_weights(g, str(tmp_path / "out" / "model.safetensors"))
    ids = rng.integers(0, vocab, (2, 7))
    mask = np.ones_like(ids)
    got = archc.run(g, {"input_ids": ids, "attention_mask": mask}, w)["logits"]
    ref_w = {k: v.astype(np.float64) for k, v in w.items()}
    want = llama_reference(ref_w, ids, mask, heads=heads, kv=kv, layers=layers, eps=1e-5)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
