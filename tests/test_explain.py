"""`archc explain`: the call tree with repeats collapsed, parameters that add up to `stats`, and
FLOPs per token that equal the standard estimate plus the attention term it leaves out."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT

import archc
from archc.cli import main
from archc.explain import explain
from archc.lower import lower
from archc.stats import param_stats


def _graph(name: str):
    return lower(archc.parse_file(ROOT / "specs" / f"{name}.arch"))


@pytest.mark.parametrize("name", ["llama_tiny", "gpt2_small", "interleaved_local_global",
                                  "universal_shared", "t5_small_style"])
def test_parameters_add_up_to_stats(name):
    g = _graph(name)
    lines = explain(g)
    assert sum(x.total_params for x in lines) == param_stats(g)["parameters"]


def test_repeats_collapse_and_interleaved_layers_stay_apart():
    llama = explain(_graph("llama_tiny"))
    assert [(x.block, x.count) for x in llama] == [("embed", 1), ("repeat", 4), ("rms_norm", 1),
                                                  ("lm_head", 1)]
    assert llama[1].scope == "layers.{0..3}"
    mixed = explain(_graph("interleaved_local_global"))
    repeats = [x for x in mixed if x.block == "repeat"]
    assert [(x.scope, x.count) for x in repeats] == [("layer.{0,2}", 2), ("layer.{1,3}", 2)]
    assert [c.scope for c in repeats[0].children][1] == "layer.0.local_attn"


@pytest.mark.parametrize("seq", [16, 128, 1024])
def test_flops_are_the_standard_estimate_plus_attention_mixing(seq):
    # Kaplan et al. (2020): C_forward = 2N + 2 n_layer n_ctx d_attn per token, N the weights of
    # the matmuls (embedding lookups are free); its attention term counts q k^T, and the
    # softmax(.) v product adds the same again.
    layers, d, kv, ff, vocab, d_attn = 4, 256, 64, 688, 1024, 256
    n = layers * (2 * d * d + 2 * d * kv + 3 * d * ff) + d * vocab
    lines = explain(_graph("llama_tiny"), seq)
    total = sum(x.flops * x.count for x in lines)
    standard = 2 * n + 2 * layers * seq * d_attn
    assert total == pytest.approx(standard + 2 * layers * seq * d_attn, rel=1e-9)


def test_cli_text_and_json(capsys):
    spec = str(ROOT / "specs" / "llama_tiny.arch")
    assert main(["explain", spec, "--seq", "64"]) == 0
    text = capsys.readouterr().out
    assert "repeat layers.{0..3} ×4" in text and "attention as layers.0.self_attn" in text
    assert "f32[batch,seq,256], i64[batch,seq] -> f32[batch,seq,256]" in text
    assert main(["explain", spec, "--json"]) == 0
    tree = json.loads(capsys.readouterr().out)
    assert tree[1]["count"] == 4 and tree[1]["children"][1]["params"] == 163_840
    assert main(["explain", spec, "--seq", "0"]) == 1
