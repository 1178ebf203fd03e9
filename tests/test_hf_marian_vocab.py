"""Marian with an embedding per stack (tools/make_encoder_fixtures.py): separate source and
target vocabularies (`share_encoder_decoder_embeddings: false`, `decoder_vocab_size`), the head
tied to the decoder's embedding or its own (`tie_word_embeddings: false`, with which
transformers 5 unties a shared vocabulary too). Logits match transformers within 1e-4 on both
backends, full and incremental; config fields that do not fit are diagnostics."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import ROOT
from safetensors.numpy import load_file, save_file

import archc
from archc.diagnostics import ArchcError
from archc.hf import import_hf
from archc.kvcache import seq2seq_incremental_logits

FIXTURES = ROOT / "tests" / "fixtures" / "hf"
CASES = {"marian_separate_vocab": (96, 112, True), "marian_untied": (96, 80, False),
         "marian_shared_untied": (96, 96, False)}  # name -> (source, target vocab, tied head)


def _import(name: str, tmp_path, edit=None):
    """The imported spec, its graph (of the spec after `edit`), the weights that graph uses and
    the reference."""
    spec = import_hf(FIXTURES / name, tmp_path / name).spec
    full = archc.lower(archc.parse(spec, f"{name}.arch"))
    w = archc.load_weights(full, str(tmp_path / name / "model.safetensors"))
    g = archc.lower(archc.parse(edit(spec), f"{name}.arch")) if edit else full
    w = {k: v for k, v in w.items() if k in g.params}
    return spec, g, w, np.load(FIXTURES / name / "reference.npz")


def _err(g, w, ref, backend="numpy") -> float:
    feeds = {k: ref[k] for k in ref.files if k in g.inputs}
    real = ref["decoder_attention_mask"].astype(bool)
    return np.abs(archc.run(g, feeds, w, backend=backend)["logits"] - ref["logits"])[real].max()


@pytest.mark.parametrize("name", CASES)
def test_logits_match_transformers(name, tmp_path):
    source, target, tied = CASES[name]
    spec, g, w, ref = _import(name, tmp_path)
    assert f"let vocab = {source}, target_vocab = {target}," in spec
    assert ("tied = decoder_embed" in spec) == tied and "shared" not in spec
    assert w["encoder_embed.weight"].shape[0] == source
    assert ref["logits"].shape[-1] == target
    for backend in ("numpy", "onnxruntime"):
        assert _err(g, w, ref, backend) <= 1e-4, backend


@pytest.mark.parametrize("name", CASES)
def test_incremental_decoder_logits(name, tmp_path):
    _, _, w, ref = _import(name, tmp_path)
    module = archc.parse_file(tmp_path / name / "model.arch")
    real = ref["decoder_attention_mask"].astype(bool)
    for backend in ("numpy", "onnxruntime"):
        got = seq2seq_incremental_logits(module, w, {k: ref[k] for k in ref.files},
                                         int(ref["prefill"]), backend)
        assert np.abs(got - ref["incremental_logits"])[real].max() <= 1e-4, backend


def test_the_embeddings_and_head_are_distinct(tmp_path):
    """Tying the decoder to the encoder's embedding, or the head to the decoder's, moves the
    logits: each stack reads its own table."""
    to_encoder = ("embed(decoder_input_ids, target_vocab, d) as decoder_embed",
                  "embed(decoder_input_ids, target_vocab, d, tied = encoder_embed)")
    _, g, w, ref = _import("marian_shared_untied", tmp_path, lambda s: s.replace(*to_encoder))
    assert _err(g, w, ref) > 1e-3
    _, g, w, ref = _import("marian_untied", tmp_path, lambda s: s.replace(
        "lm_head(y, target_vocab)", "lm_head(y, target_vocab, tied = decoder_embed)"))
    assert _err(g, w, ref) > 1e-3


def test_a_shared_table_without_stack_copies_is_used_by_both(tmp_path):
    """A checkpoint that stores only `model.shared` (transformers 4.x) with an untied head."""
    folder = tmp_path / "src"
    shutil.copytree(FIXTURES / "marian_shared_untied", folder)
    tensors = load_file(folder / "model.safetensors")
    for stack in ("encoder", "decoder"):
        del tensors[f"model.{stack}.embed_tokens.weight"]
    save_file(tensors, folder / "model.safetensors")
    import_hf(folder, tmp_path / "out")
    g = archc.compile(tmp_path / "out" / "model.arch")
    w = archc.load_weights(g, str(tmp_path / "out" / "model.safetensors"))
    for stack in ("encoder", "decoder"):
        np.testing.assert_array_equal(w[f"{stack}_embed.weight"], tensors["model.shared.weight"])
    np.testing.assert_array_equal(w["lm_head.weight"], tensors["lm_head.weight"].T)


@pytest.mark.parametrize("fields, words", [
    ({"decoder_vocab_size": "112"}, "`decoder_vocab_size` is \"112\"; it must be a positive"),
    ({"share_encoder_decoder_embeddings": "no"}, "it must be true or false"),
    ({"share_encoder_decoder_embeddings": True, "tie_word_embeddings": True},
     "shared embeddings of 96 tokens but `decoder_vocab_size` 112"),
], ids=["vocab-string", "share-string", "shared-but-sizes-differ"])
def test_config_fields_that_do_not_fit_are_diagnostics(tmp_path, fields, words):
    folder = tmp_path / "src"
    shutil.copytree(FIXTURES / "marian_separate_vocab", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **fields}))
    with pytest.raises(ArchcError) as e:
        import_hf(folder, tmp_path / "out")
    assert words in "\n".join(d.message for d in e.value.diagnostics)
