"""The newer encoder and encoder-decoder families (tools/make_encoder_fixtures.py: tiny random
checkpoints, rows padded at the end): logits match transformers within 1e-4 on both backends
(the seq2seq families' incremental decoding is checked in test_hf_encoders.py); each distinctive
feature, switched off, moves the logits by more than 1e-3; inputs a tokenizer does not produce
can be left out."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ROOT

import archc
from archc.hf import import_hf

FIXTURES = ROOT / "tests" / "fixtures" / "hf"
CASES = ["xlm-roberta", "electra", "electra_discriminator", "distilbert", "modernbert",
         "deberta-v2", "deberta_v2_unshared"]
SEQ2SEQ = ["marian", "pegasus", "mbart", "mt5"]


def _load(name: str, tmp_path, edit=None):
    """The imported graph, or with `edit` the graph of the edited spec text, with the imported
    weights it still uses."""
    spec = import_hf(FIXTURES / name, tmp_path / name).spec
    full = archc.lower(archc.parse(spec, f"{name}.arch"))
    w = archc.load_weights(full, str(tmp_path / name / "model.safetensors"))
    g = full if edit is None else archc.lower(archc.parse(edit(spec), f"{name}.arch"))
    w = {k: v for k, v in w.items() if k in g.params}
    ref = np.load(FIXTURES / name / "reference.npz")
    feeds = {k: ref[k] for k in ref.files if k in g.inputs}
    real = ref["decoder_attention_mask" if "decoder_attention_mask" in ref.files
               else "attention_mask"].astype(bool)
    return g, w, ref, feeds, real


def _err(g, w, ref, feeds, real, backend="numpy"):
    key = "logits" if "logits" in ref.files else "last_hidden_state"  # a bare `...Model`
    return np.abs(archc.run(g, feeds, w, backend=backend)[key] - ref[key])[real].max()


@pytest.mark.parametrize("name", CASES + SEQ2SEQ)
def test_logits_match_transformers(name, tmp_path):
    g, w, ref, feeds, real = _load(name, tmp_path)
    assert not real.all()
    for backend in ("numpy", "onnxruntime"):
        err = _err(g, w, ref, feeds, real, backend)
        assert err <= 1e-4, f"{name} on {backend}: {err:.3g}"


@pytest.mark.parametrize("name", ["roberta", "xlm-roberta"])
def test_one_row_token_types_need_no_input(name, tmp_path):
    """RoBERTa's and XLM-R's tokenizers give `input_ids` and `attention_mask` only."""
    g, *_ = _load(name, tmp_path)
    assert set(g.inputs) == {"input_ids", "attention_mask"}


def test_two_row_token_types_default_to_zero(tmp_path):
    g, w, ref, feeds, real = _load("electra", tmp_path)
    assert "token_type_ids" in g.inputs
    zeros = {**feeds, "token_type_ids": np.zeros_like(feeds["token_type_ids"])}
    left_out = {k: v for k, v in feeds.items() if k != "token_type_ids"}
    np.testing.assert_allclose(archc.run(g, left_out, w)["logits"],
                               archc.run(g, zeros, w)["logits"], atol=1e-6)
    assert _err(g, w, ref, zeros, real) > 1e-3  # the fixture's types are observable


def test_exported_model_runs_without_optional_inputs(tmp_path):
    """The .onnx file alone, in a bare onnxruntime session: `token_type_ids` and
    `attention_mask` may be left out (zeros; ones), and given they still count."""
    import onnxruntime as ort

    from archc.backends.onnx_export import export_onnx, model_bytes

    g, w, _, feeds, _ = _load("electra", tmp_path)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model_bytes(export_onnx(g, w)), opts)
    assert [i.name for i in sess.get_inputs()] == ["input_ids"]
    assert sorted(i.name for i in sess.get_overridable_initializers()) == \
        ["attention_mask", "token_type_ids"]
    ids = feeds["input_ids"]
    bare = sess.run(["logits"], {"input_ids": ids})[0]
    defaults = {"input_ids": ids, "token_type_ids": np.zeros_like(ids),
                "attention_mask": np.ones_like(ids)}
    np.testing.assert_allclose(bare, archc.run(g, defaults, w)["logits"], atol=1e-5)
    given = sess.run(["logits"], feeds)[0]
    np.testing.assert_allclose(given, archc.run(g, feeds, w)["logits"], atol=1e-5)
    assert np.abs(given - bare).max() > 1e-3  # the given types and mask were used


# Each distinctive feature, edited out of the imported spec, moves the logits.
def _drop(text: str, new: str = ""):
    return lambda s: s.replace(text, new)


FEATURES = {
    "electra: embedding projection": ("electra", _drop(
        "  x = linear(x, d) as embed_project\n", "  x = pad(x, 0, d - e)\n")),
    "marian: sinusoidal positions": ("marian", _drop(
        "  y = y + sinusoidal_halves(decoder_input_ids, d)\n")),
    "marian: sines then cosines": ("marian", _drop("sinusoidal_halves(", "sinusoidal(")),
    "marian: final_logits_bias": ("marian", _drop(
        "logits_bias(lm_head(y, vocab, tied = shared)) as _", "lm_head(y, vocab, tied = shared)")),
    "marian: scaled embeddings": ("marian", _drop(" * sqrt(d)")),
    "pegasus: final stack norms": ("pegasus", _drop("  y = layer_norm(y, eps) as decoder_norm\n")),
    "pegasus: pre-LN": ("pegasus", _drop(
        "x = x + mlp(layer_norm(x, eps) as mlp_norm, ff, act = relu) as mlp",
        "x = layer_norm(x + mlp(x, ff, act = relu) as mlp, eps) as mlp_norm")),
    "modernbert: local window": ("modernbert", _drop("      w = window\n", "      w = 0\n")),
    "modernbert: local rope base": ("modernbert", _drop("theta = local_theta",
                                                       "theta = global_theta")),
    "deberta-v2: c2p": ("deberta-v2", _drop("16)", "16, c2p = false)")),
    "deberta-v2: p2c": ("deberta-v2", _drop("16)", "16, p2c = false)")),
    "deberta-v2: log buckets": ("deberta-v2", _drop("buckets = 4,", "buckets = 0,")),
    "deberta-v2: table norm": ("deberta-v2", _drop(
        "layer_norm(param(2 * span, d, init = normal) as rel_embeddings, eps) as rel_norm",
        "param(2 * span, d, init = normal) as rel_embeddings")),
    "mt5: unscaled head": ("mt5", _drop("lm_head(y, vocab", "lm_head(y * d ** -0.5, vocab")),
}


@pytest.mark.parametrize("feature", FEATURES)
def test_switching_a_feature_off_moves_the_logits(feature, tmp_path):
    name, edit = FEATURES[feature]
    assert edit(import_hf(FIXTURES / name, tmp_path / "spec").spec) != \
        import_hf(FIXTURES / name, tmp_path / "spec").spec
    g, w, ref, feeds, real = _load(name, tmp_path, edit)
    assert _err(g, w, ref, feeds, real) > 1e-3


MARIAN_EN_DE = {"architectures": ["MarianMTModel"], "model_type": "marian",
                "vocab_size": 58101, "decoder_vocab_size": 58101, "d_model": 512,
                "encoder_layers": 6, "decoder_layers": 6, "encoder_attention_heads": 8,
                "decoder_attention_heads": 8, "encoder_ffn_dim": 2048, "decoder_ffn_dim": 2048,
                "max_position_embeddings": 512, "scale_embedding": True,
                "activation_function": "swish", "share_encoder_decoder_embeddings": True}
MT5_SMALL = {"architectures": ["MT5ForConditionalGeneration"], "model_type": "mt5",
             "vocab_size": 250112, "d_model": 512, "d_kv": 64, "d_ff": 1024, "num_layers": 8,
             "num_decoder_layers": 8, "num_heads": 6, "relative_attention_num_buckets": 32,
             "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}

MODERNBERT_BASE = {"architectures": ["ModernBertForMaskedLM"], "model_type": "modernbert",
                   "vocab_size": 50368, "hidden_size": 768, "intermediate_size": 1152,
                   "num_hidden_layers": 22, "num_attention_heads": 12,
                   "global_attn_every_n_layers": 3, "local_attention": 128,
                   "global_rope_theta": 160000.0, "local_rope_theta": 10000.0,
                   "norm_eps": 1e-05, "norm_bias": False, "hidden_activation": "gelu",
                   "max_position_embeddings": 8192}

DEBERTA_V3_BASE = {"model_type": "deberta-v2", "vocab_size": 128100, "hidden_size": 768,
                   "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                   "hidden_act": "gelu", "max_position_embeddings": 512, "type_vocab_size": 0,
                   "layer_norm_eps": 1e-7, "relative_attention": True, "max_relative_positions": -1,
                   "position_buckets": 256, "norm_rel_ebd": "layer_norm", "share_att_key": True,
                   "pos_att_type": "p2c|c2p", "position_biased_input": False, "pad_token_id": 0}

BART_BASE_LM = {"architectures": ["BartForConditionalGeneration"], "model_type": "bart",
                "vocab_size": 50265, "d_model": 768, "encoder_layers": 6, "decoder_layers": 6,
                "encoder_attention_heads": 12, "decoder_attention_heads": 12,
                "encoder_ffn_dim": 3072, "decoder_ffn_dim": 3072, "max_position_embeddings": 1024}


@pytest.mark.parametrize("config, total, buffers", [
    # transformers counts 74,410,496 for opus-mt-en-de: its frozen sinusoid tables (2 x 512 x 512)
    # are nn.Parameters, not trained and not stored; the trained parameters are these
    (MARIAN_EN_DE, 73_886_208, 58_101),
    (MT5_SMALL, 300_176_768, 0),
    (MODERNBERT_BASE, 149_655_232, 0),
    (DEBERTA_V3_BASE, 183_831_552, 0),  # the backbone, as the published config has no head
    (BART_BASE_LM, 139_420_416, 50_265),  # the tied head adds no parameters, only the buffer
], ids=["opus-mt-en-de", "mt5-small", "modernbert-base", "deberta-v3-base", "bart-base-lm"])
def test_published_counts(tmp_path, config, total, buffers):
    import json

    from archc.stats import format_stats, param_stats

    (tmp_path / "config.json").write_text(json.dumps(config))
    import_hf(tmp_path, tmp_path / "out", config_only=True)
    s = param_stats(archc.lower(archc.parse_file(tmp_path / "out" / "model.arch")))
    assert (s["parameters"], s["buffers"]) == (total, buffers)
    assert sum(s["breakdown"].values()) == s["parameters"]
    assert ("buffers" in format_stats(s)) == bool(buffers)


def test_modernbert_4x_config_layout(tmp_path):
    """transformers 4.x writes `global_attn_every_n_layers` and one rope base per kind at the
    top level where 5.x writes `layer_types` and `rope_parameters`: the same model."""
    import json
    import shutil

    src = tmp_path / "mb4"
    shutil.copytree(FIXTURES / "modernbert", src)
    cfg = json.loads((src / "config.json").read_text())
    rope = cfg.pop("rope_parameters")
    del cfg["layer_types"]
    cfg.update(global_attn_every_n_layers=3,
               global_rope_theta=rope["full_attention"]["rope_theta"],
               local_rope_theta=rope["sliding_attention"]["rope_theta"])
    (src / "config.json").write_text(json.dumps(cfg))
    import_hf(src, tmp_path / "out")
    g = archc.compile(tmp_path / "out" / "model.arch")
    w = archc.load_weights(g, str(tmp_path / "out" / "model.safetensors"))
    ref = np.load(FIXTURES / "modernbert" / "reference.npz")
    real = ref["attention_mask"].astype(bool)
    assert _err(g, w, ref, {k: ref[k] for k in g.inputs}, real) <= 1e-4


def test_a_bert_model_saved_without_its_pooler_imports_without_one(tmp_path):
    """`BertModel(add_pooling_layer=False)` (sentence encoders) stores no pooler: the spec
    outputs the hidden states only. Checked through the fixture's MLM head, written out here
    as transformers defines it (dense, GELU, LayerNorm, tied decoder + bias), against the
    reference logits."""
    import json
    import math

    from safetensors.numpy import load_file, save_file

    src = FIXTURES / "bert"
    full = load_file(src / "model.safetensors")
    folder = tmp_path / "bert_no_pooler"
    folder.mkdir()
    save_file({k[len("bert."):]: v for k, v in full.items() if k.startswith("bert.") and
               "pooler" not in k}, folder / "model.safetensors")
    config = json.loads((src / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["BertModel"]}))
    spec = import_hf(folder, tmp_path / "out").spec
    assert "pooler" not in spec
    g = archc.compile(tmp_path / "out" / "model.arch")
    assert list(g.outputs) == ["last_hidden_state"]
    w = archc.load_weights(g, str(tmp_path / "out" / "model.safetensors"))
    ref = np.load(src / "reference.npz")
    feeds = {k: ref[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    erf = np.vectorize(math.erf)
    for backend in ("numpy", "onnxruntime"):
        x = archc.run(g, feeds, w, backend=backend)["last_hidden_state"].astype(np.float64)
        h = x @ full["cls.predictions.transform.dense.weight"].T + \
            full["cls.predictions.transform.dense.bias"]
        h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
        h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-12)
        h = h * full["cls.predictions.transform.LayerNorm.weight"] + \
            full["cls.predictions.transform.LayerNorm.bias"]
        logits = h @ full["bert.embeddings.word_embeddings.weight"].T + \
            full["cls.predictions.bias"]
        real = ref["attention_mask"].astype(bool)
        assert np.abs(logits - ref["logits"])[real].max() <= 1e-4, backend


@pytest.mark.parametrize("value", [[["c2p"]], ["c2p", 3], [{"p2c": 1}]])
def test_a_malformed_pos_att_type_is_a_config_error(tmp_path, value):
    """Fuzz seed 4242000009480: `pos_att_type` as a list of lists reached set() (TypeError,
    E0900). Now: E0506 naming the field and what it must be."""
    import json

    from archc.diagnostics import ArchcError

    (tmp_path / "config.json").write_text(json.dumps({**DEBERTA_V3_BASE, "pos_att_type": value}))
    with pytest.raises(ArchcError) as e:
        import_hf(tmp_path, tmp_path / "out", config_only=True)
    assert "error[E0506]" in str(e.value) and "`pos_att_type`" in str(e.value)
    assert "it must be a list of `c2p`, `p2c`" in str(e.value)
