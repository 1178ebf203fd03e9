"""BigBird (tools/make_bigbird_fixture.py: a tiny random `BigBirdForMaskedLM` run block-sparse
by transformers, 12 blocks of 4 tokens, row 1 padded at the end): logits match transformers
within 1e-4 on both backends, padded rows included; the block-sparse pattern and its
eval-mode random slots (block 0 counted 1 + random times) are both observable."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import ROOT

import archc
from archc.hf import import_hf

FIXTURE = ROOT / "tests" / "fixtures" / "hf" / "big_bird"
SPARSE = ("bigbird_hf_attention(x, heads, block_size = 4, random = 2,\n"
          "                             mask = attention_mask)")


def _run(tmp_path, edit=None, backend="numpy"):
    spec = import_hf(FIXTURE, tmp_path / "out").spec
    g = archc.lower(archc.parse(spec if edit is None else edit(spec), "big_bird.arch"))
    w = archc.load_weights(g, str(tmp_path / "out" / "model.safetensors"))
    ref = np.load(FIXTURE / "reference.npz")
    feeds = {k: ref[k] for k in ref.files if k in g.inputs}
    return archc.run(g, feeds, w, backend=backend)["logits"], ref


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_logits_match_transformers(backend, tmp_path):
    got, ref = _run(tmp_path, backend=backend)
    real = ref["attention_mask"].astype(bool)
    assert not real.all()  # row 1 is padded at the end
    assert np.abs(got - ref["logits"])[real].max() <= 1e-4
    assert np.abs(got - ref["logits"]).max() <= 1e-4  # padded rows too: their context is 0


def test_the_spec_is_block_sparse(tmp_path):
    spec = import_hf(FIXTURE, tmp_path / "out").spec
    assert SPARSE in spec and "int64[batch, 48]" in spec


def test_only_the_kept_blocks_are_computed(tmp_path):
    g = archc.compile(archc.parse(import_hf(FIXTURE, tmp_path / "out").spec, "big_bird.arch"))
    scores = {n.type.shape for n in g.nodes() if n.op == "matmul" and
              n.inputs[1].op == "transpose" and n.inputs[1].attrs.get("perm") == (0, 1, 3, 2)}
    assert scores == {("batch", 4 * 10, 4, 5 * 4),  # 10 local blocks x 5 key blocks of 4
                      ("batch", 4, 2 * 4, 48)}  # the 2 global blocks see all 48 keys


@pytest.mark.parametrize("edit", [
    lambda s: s.replace(SPARSE, "attention(x, heads, mask = attention_mask)"),  # full attention
    lambda s: s.replace("random = 2", "random = 0"),  # block 0 counted once: the library's way
], ids=["full attention", "no random slots"])
def test_the_pattern_moves_the_logits(edit, tmp_path):
    spec = import_hf(FIXTURE, tmp_path / "spec").spec
    assert edit(spec) != spec
    got, ref = _run(tmp_path, edit)
    real = ref["attention_mask"].astype(bool)
    assert np.abs(got - ref["logits"])[real].max() > 1e-3


def _with_config(tmp_path, **changes):
    src = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, src)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, **changes}))
    return import_hf(src, tmp_path / "out").spec


@pytest.mark.parametrize("changes", [{"attention_type": "original_full"},
                                     {"num_random_blocks": 4}])  # 48 <= (5 + 8) * 4
def test_full_attention_where_transformers_uses_it(changes, tmp_path):
    spec = _with_config(tmp_path, **changes)
    assert "bigbird_hf_attention" not in spec and "int64[batch, seq]" in spec


def test_rescaled_embeddings(tmp_path):
    assert "as word_embeddings * sqrt(d)" in _with_config(tmp_path, rescale_embeddings=True)


def test_length_not_a_multiple_of_the_block_is_an_error(tmp_path):
    with pytest.raises(archc.ArchcError, match="multiple of `block_size`"):
        _with_config(tmp_path, max_position_embeddings=50)
