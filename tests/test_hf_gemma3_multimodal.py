"""Multimodal Gemma 3 (`model_type: gemma3`, Gemma3ForConditionalGeneration) imported as its text
decoder: the nested `text_config` (with transformers' defaults under a 4.x config's few fields),
the tensor layouts of save_pretrained and of a transformers 5 state dict, the vision tower and
projector left out on purpose (and said so), and transformers' logits of a text-only prompt,
full and incremental, on both backends. The fixture comes from tools/make_fixtures.py."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from conftest import ROOT
from safetensors.numpy import load_file, save_file
from test_hf_stats import GEMMA3_4B_TEXT

import archc
from archc.cli import main
from archc.diagnostics import ArchcError
from archc.hf import import_hf
from archc.kvcache import incremental_logits
from archc.lower import lower
from archc.stats import param_stats

FIXTURE = ROOT / "tests" / "fixtures" / "hf" / "gemma3_multimodal"
TOL = 1e-4


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    out = tmp_path_factory.mktemp("gemma3") / "out"
    res = import_hf(FIXTURE, out)
    return res.spec, load_file(str(out / "model.safetensors"))


def _ref():
    ref = np.load(FIXTURE / "reference.npz")
    return ref, ref["attention_mask"].astype(bool)


def _feeds(ref):
    return {"input_ids": ref["input_ids"], "attention_mask": ref["attention_mask"]}


def test_text_logits_match_transformers_full_and_incremental(imported):
    spec, w = imported
    ref, real = _ref()
    assert not real.all()  # a left-padded row
    g = archc.compile(spec)
    gc = archc.optimize(lower(archc.parse(spec), cache=True))
    for backend in ("numpy", "onnxruntime"):
        err = np.abs(archc.run(g, _feeds(ref), w, backend=backend)["logits"] - ref["logits"])
        assert err[real].max() <= TOL, f"full on {backend}: {err[real].max():.3g}"
        got = incremental_logits(gc, w, ref["input_ids"], ref["attention_mask"],
                                 int(ref["prefill"]), backend)
        err = np.abs(got - ref["incremental_logits"])[real].max()
        assert err <= TOL, f"incremental on {backend}: {err:.3g}"


def test_only_the_text_model_is_imported_and_the_header_says_so(imported):
    spec, w = imported
    assert "the vision tower (`vision_tower.*`) and the multimodal projector" in spec
    assert "(`multi_modal_projector.*`) are not imported" in spec
    assert "model gemma3 {" in spec and "input pixel_values" not in spec
    # transformers' `model.language_model` on the fixture's config: 68,344 of 73,976 parameters
    # (printed by tools/make_fixtures.py); the head is tied to the embeddings
    s = param_stats(archc.lower(archc.parse(spec)))
    assert s["parameters"] == sum(v.size for v in w.values()) == 68_344
    config = json.loads((FIXTURE / "config.json").read_text())
    assert config["image_token_index"] in np.load(FIXTURE / "reference.npz")["input_ids"]


def test_the_final_softcap_of_the_text_config_is_not_applied(imported):
    """Gemma3ForConditionalGeneration (transformers 5) applies no `final_logit_softcapping`,
    unlike Gemma3ForCausalLM; the fixture sets one (2.0), so applying it would show."""
    spec, w = imported
    assert "`final_logit_softcapping` (2.0) is not applied" in spec
    capped, n = re.subn(r"output logits = (lm_head\([^)]*\))", r"output logits = softcap(\1, 2.0)",
                        spec)
    assert n == 1
    ref, real = _ref()
    got = archc.run(archc.compile(capped), _feeds(ref), w)["logits"]
    assert np.abs(got - ref["logits"])[real].max() > 1e-3


def test_the_attention_softcap_of_the_text_config_is_not_applied(imported):
    """Gemma 3 replaced Gemma 2's attention softcap with q/k norms: transformers' Gemma3Attention
    reads `attn_logit_softcapping` (4.0 in the fixture) but never applies it."""
    spec, w = imported
    assert "`attn_logit_softcapping` (4.0) is not applied" in spec
    assert "softcap" not in spec.split("model gemma3")[1]
    capped, n = re.subn(r"(scale = [^,]+),", r"\1, softcap = 4.0,", spec)
    assert n == 1
    ref, real = _ref()
    got = archc.run(archc.compile(capped), _feeds(ref), w)["logits"]
    assert np.abs(got - ref["logits"])[real].max() > 1e-3


def _relayout(tmp_path, rename, config_edit=None, extra=None):
    src = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, src)
    tensors = load_file(str(src / "model.safetensors"))
    tensors = {rename(k): v for k, v in tensors.items()} | (extra or {})
    save_file(tensors, str(src / "model.safetensors"))
    if config_edit:
        config = json.loads((src / "config.json").read_text())
        config_edit(config)
        (src / "config.json").write_text(json.dumps(config))
    return src


def test_a_transformers_5_state_dict_layout_gives_the_same_weights(imported, tmp_path):
    def five(k):  # what Gemma3ForConditionalGeneration.state_dict() names in transformers 5
        return re.sub(r"^language_model\.model\.", "model.language_model.",
                      re.sub(r"^(vision_tower|multi_modal_projector)\.", r"model.\1.", k))

    assert five("language_model.model.norm.weight") == "model.language_model.norm.weight"
    res = import_hf(_relayout(tmp_path, five), tmp_path / "out")
    spec, w = imported
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert res.spec == spec and got.keys() == w.keys()
    assert all(np.array_equal(got[k], w[k]) for k in w)


def test_an_untied_head_is_read_from_either_layout(tmp_path):
    """With `tie_word_embeddings: false` (top level, as transformers 5 reads it) the head is a
    tensor of its own: here a copy of the embeddings, so the logits stay transformers'."""
    embed = load_file(str(FIXTURE / "model.safetensors"))[
        "language_model.model.embed_tokens.weight"]
    ref, real = _ref()
    for head in ("language_model.lm_head.weight", "lm_head.weight"):
        out = tmp_path / head
        res = import_hf(_relayout(out, lambda k: k, lambda c: c.update(tie_word_embeddings=False),
                                  {head: embed.copy()}), out / "out")
        assert "tied = embed_tokens" not in res.spec
        g = archc.compile(res.spec)
        got = archc.run(g, _feeds(ref), load_file(str(out / "out" / "model.safetensors")))
        assert np.abs(got["logits"] - ref["logits"])[real].max() <= TOL


def test_only_the_vision_tower_and_projector_are_ignored(tmp_path):
    src = _relayout(tmp_path, lambda k: k, extra={"audio_tower.proj.weight": np.ones((2, 2),
                                                                                     np.float32)})
    with pytest.raises(ArchcError, match=r"unexpected tensor `audio_tower\.proj\.weight`"):
        import_hf(src, tmp_path / "out")


def test_a_checkpoint_without_a_text_model_is_an_error(tmp_path):
    src = _relayout(tmp_path, lambda k: k.replace("embed_tokens", "embedder"))
    with pytest.raises(ArchcError, match=r"no Gemma 3 text model in model\.safetensors: found "
                                         r"none of `language_model\.model\.embed_tokens"):
        import_hf(src, tmp_path / "out")


def test_bidirectional_gemma3_is_refused(tmp_path):
    src = _relayout(tmp_path, lambda k: k, lambda c: c["text_config"].update(
        use_bidirectional_attention=True))
    with pytest.raises(ArchcError, match="`use_bidirectional_attention` is set"):
        import_hf(src, tmp_path / "out", config_only=True)


def test_a_bad_text_config_field_is_shown_in_the_text_config(tmp_path, capsys):
    """The error points at `text_config`'s field, not a same-named one before it."""
    config = json.loads((FIXTURE / "config.json").read_text())
    config["text_config"]["hidden_size"] = "40"
    order = {"vision_config": config.pop("vision_config"), **config}  # vision_config first
    (tmp_path / "config.json").write_text(json.dumps(order, indent=2))
    assert main(["import-hf", str(tmp_path), "-o", str(tmp_path / "out"), "--config-only"]) == 1
    err = capsys.readouterr().err
    line = int(re.search(r"config\.json:(\d+):", err).group(1))
    text = (tmp_path / "config.json").read_text().splitlines()
    assert text[line - 1].strip() == '"hidden_size": "40",', err
    assert "`hidden_size` is \"40\" (str)" in err


def test_a_config_without_a_text_config_is_an_error(tmp_path):
    config = json.loads((FIXTURE / "config.json").read_text())
    del config["text_config"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArchcError, match="has no `text_config` object"):
        import_hf(tmp_path, tmp_path / "out", config_only=True)


# google/gemma-3-4b-it's config.json (transformers 4.50.0.dev0): `text_config` holds only the
# fields that differ from Gemma3TextConfig's defaults.
GEMMA3_4B_IT = {
    "architectures": ["Gemma3ForConditionalGeneration"], "boi_token_index": 255999,
    "eoi_token_index": 256000, "image_token_index": 262144, "initializer_range": 0.02,
    "mm_tokens_per_image": 256, "model_type": "gemma3",
    "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                    "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0,
                                                              "rope_type": "linear"},
                    "sliding_window": 1024},
    "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0",
    "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
                      "model_type": "siglip_vision_model", "num_attention_heads": 16,
                      "num_hidden_layers": 27, "patch_size": 14, "vision_use_head": False}}
# The same text model as a gemma3_text config with every field spelled out: GEMMA3_4B_TEXT,
# from tests/test_hf_stats.py.


def test_gemma_3_4b_it_config_counts_the_language_model(tmp_path, capsys):
    """3,880,263,168: `sum(p.numel() for p in model.model.language_model.parameters())` of
    Gemma3ForConditionalGeneration built from this config on the meta device (transformers
    5.24; the head is tied, so it adds nothing). The whole model has 4,300,079,472: the vision
    tower 416,866,032 and the projector 2,950,272 are not imported."""
    (tmp_path / "config.json").write_text(json.dumps(GEMMA3_4B_IT))
    assert main(["import-hf", str(tmp_path), "-o", str(tmp_path / "out"), "--config-only"]) == 0
    capsys.readouterr()
    assert main(["stats", str(tmp_path / "out" / "model.arch"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["parameters"] == s["active_per_token"] == 3_880_263_168
    assert s["kv_cache_bytes_per_token"]["float32"] == 34 * 2 * 4 * 256 * 4
    # Gemma3TextConfig's defaults fill in what the config leaves out: the spec is the one the
    # fully spelled-out text config gives
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "config.json").write_text(json.dumps(GEMMA3_4B_TEXT))
    text = import_hf(tmp_path / "text", tmp_path / "text_out", config_only=True).spec
    mine = (tmp_path / "out" / "model.arch").read_text()

    def body(spec):  # the serving facts differ: the multimodal config's token ids
        return [line for line in spec.splitlines() if not line.startswith("#")
                and not line.startswith(("model ", "  serving "))]
    assert body(mine) == body(text)
    assert "\n  serving bos_token_id = 2, eos_token_id = 1, pad_token_id = 0, " \
        "context_length = 131072\n" in mine
