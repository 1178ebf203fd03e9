"""Issue 10's leftovers, against tiny random checkpoints from tools/make_encoder_fixtures.py
(rows padded at the end): DeBERTa-v2's convolution layer (`conv_kernel_size`, as in
deberta-v2-xlarge; grouped in the fixture) and ModernBERT's `layer_types` in a pattern that is
not every n-th layer. Logits match transformers within 1e-4 on both backends, each feature
edited out moves them by more than 1e-3, and bad configs are refused with a diagnostic."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import ROOT
from test_hf_encoders_new import _load  # one loader of an imported fixture

import archc
from archc.hf import import_checkpoint

FIXTURES = ROOT / "tests" / "fixtures" / "hf"
CONV_LAYER = ("    if layers == 0 {  # the convolution layer, after the first layer only "
              "(conv_groups = 2: a block-diagonal weight)\n"
              "      x = deberta_conv(e, x, kernel, mask = attention_mask, act = gelu, "
              "eps = eps) as conv\n    }\n")
PATTERN = "let full_attention = [false, true, true, false, true]"


def _error(name: str, tmp_path, edit=None) -> float:
    """max |logits - transformers'| over the real tokens, per backend, of the imported spec
    (or of `edit(spec)`, with the imported weights it still uses)."""
    g, w, ref, feeds, real = _load(name, tmp_path, edit)
    assert not real.all()  # a padded row
    return max(np.abs(archc.run(g, feeds, w, backend=b)["logits"] - ref["logits"])[real].max()
               for b in (("numpy", "onnxruntime") if edit is None else ("numpy",)))


@pytest.mark.parametrize("name", ["deberta_v2_conv", "modernbert_layer_types"])
def test_logits_match_transformers(name, tmp_path):
    assert _error(name, tmp_path) <= 1e-4


def _edit(old: str, new: str):
    def edit(spec: str) -> str:
        assert old in spec
        return spec.replace(old, new)
    return edit


FEATURES = {
    "deberta-v2: convolution layer": ("deberta_v2_conv", _edit(CONV_LAYER, "")),
    "deberta-v2: convolution activation": ("deberta_v2_conv", _edit("act = gelu, eps",
                                                                    "act = tanh, eps")),
    "modernbert: layer 3 made global": ("modernbert_layer_types", _edit(
        PATTERN, "let full_attention = [false, true, true, true, true]")),
    "modernbert: layer 1 made local": ("modernbert_layer_types", _edit(
        PATTERN, "let full_attention = [false, false, true, false, true]")),
}


@pytest.mark.parametrize("feature", FEATURES)
def test_switching_a_feature_off_moves_the_logits(feature, tmp_path):
    name, edit = FEATURES[feature]
    assert _error(name, tmp_path, edit) > 1e-3


def _config(tmp_path, name: str, **changes) -> str:
    """The fixture's config with `changes` (None deletes a key), imported config-only."""
    d = tmp_path / name
    d.mkdir()
    data = json.loads((FIXTURES / name / "config.json").read_text())
    data.update(changes)
    (d / "config.json").write_text(json.dumps({k: v for k, v in data.items() if v is not None}))
    shutil.copy(FIXTURES / name / "model.safetensors", d)
    return import_checkpoint(d, config_only=True).spec


@pytest.mark.parametrize("every,cond", [(1, "true"), (2, "layers % 2 == 0"),
                                        (4, "layers % 4 == 0"), (9, "layers % 5 == 0")])
def test_every_n_layers_without_layer_types(every, cond, tmp_path):
    """4.x configs: `global_attn_every_n_layers` alone (layer i global when i % n == 0)."""
    spec = _config(tmp_path, "modernbert_layer_types", layer_types=None,
                   global_attn_every_n_layers=every)
    assert f"if {cond} {{" in spec and "full_attention =" not in spec


def test_layer_types_win_over_every_n(tmp_path):
    spec = _config(tmp_path, "modernbert_layer_types", global_attn_every_n_layers=2)
    assert PATTERN in spec and "if full_attention[layers] {" in spec


@pytest.mark.parametrize("changes,field", [
    ({"conv_kernel_size": 4}, "conv_kernel_size"), ({"conv_groups": 3}, "conv_groups"),
    ({"conv_act": 7}, "conv_act")])
def test_bad_convolution_configs_are_refused(changes, field, tmp_path):
    with pytest.raises(archc.ArchcError, match=f"`{field}`"):
        _config(tmp_path, "deberta_v2_conv", **changes)


def test_no_convolution_without_a_kernel(tmp_path):
    spec = _config(tmp_path, "deberta_v2_conv", conv_kernel_size=0)
    assert "deberta_conv" not in spec and "kernel" not in spec


def test_an_even_kernel_is_refused_by_the_block():
    spec = """model m {
  input x: float32[batch, seq, 8]
  output y = deberta_conv(x, x, 2) as conv
}"""
    with pytest.raises(archc.ArchcError, match="must be odd"):
        archc.lower(archc.parse(spec, "m.arch"))
