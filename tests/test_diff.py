"""`archc diff`: layers matched by path, added/removed/changed with their options and figures,
repeats compacted, totals and per-block figures that add up, and the CLI's contract (exit 0
when it ran, JSON with sorted keys, bad input a clean diagnostic)."""

from __future__ import annotations

import json
import re

import pytest
from conftest import ROOT

import archc
from archc.cli import main
from archc.diagnostics import ArchcError
from archc.diff import compact, diff, render
from archc.lower import lower


def spec_text(name: str, **lets: int) -> str:
    """specs/NAME.arch with some integer `let`s changed (whatever the file's layout)."""
    text = (ROOT / "specs" / f"{name}.arch").read_text()
    for k, v in lets.items():
        text, n = re.subn(rf"\b{k}\s*=\s*\d+\b", f"{k} = {v}", text, count=1)
        assert n == 1, f"no `let {k} = <int>` in {name}"
    return text


def graph(name: str, **lets: int):
    return lower(archc.parse(spec_text(name, **lets)))


def one(d: dict, path: str) -> dict:
    [c] = [c for c in d["layers"] if path in c["paths"]]
    return c


def test_a_spec_against_itself_has_no_differences(capsys):
    spec = str(ROOT / "specs" / "llama_tiny.arch")
    assert main(["diff", spec, spec, "--seq", "64"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("no differences\n") and out.count("\n") == 3
    assert main(["diff", spec, spec, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["identical"] and d["layers"] == [] and d["seq"] == 2048
    assert all(t["delta"] == 0 for t in d["totals"].values())


def test_more_heads_and_kv_heads_change_options_only():
    # d = 256: 8 -> 16 heads halves head_dim (32 -> 16), so 2 -> 4 kv heads keeps the cache
    # at layers x 2 (k, v) x kv_heads x head_dim x 4 bytes = 4 x 2 x 2 x 32 x 4 = 2048 B/token.
    d = diff(graph("llama_tiny"), graph("llama_tiny", heads=16, kv=4), 128)
    [c] = d["layers"]
    assert c["change"] == "changed" and c["paths"] == ["layers.{0..3}.self_attn"]
    assert c["count"] == 4 and c["block"] == {"a": "attention", "b": "attention"}
    assert c["options"] == {"heads": {"a": "8", "b": "16"}, "kv_heads": {"a": "2", "b": "4"}}
    assert c["shapes"] is None and c["params"]["delta"] == 0
    assert d["totals"]["kv_cache_bytes_per_token"] == {"a": 2048, "b": 2048, "delta": 0}
    assert not d["identical"]
    text = render(d)
    assert "~ attention as layers.{0..3}.self_attn ×4" in text
    assert re.search(r"heads +8 -> 16", text) and re.search(r"kv_heads +2 -> 4", text)


def test_two_more_layers_are_added_compactly():
    d_model, vocab, seq = 768, 50257, 1024
    d = diff(graph("gpt2_small"), graph("gpt2_small", layers=14), seq)
    [c] = d["layers"]
    assert (c["change"], c["paths"], c["count"]) == ("added", ["h.{12..13}"], 2)
    # one layer: 2 layer norms (2 x 2d), attention (4d^2 + 4d), MLP (8d^2 + 5d)
    layer = 12 * d_model ** 2 + 13 * d_model
    assert c["params"] == {"a": 0, "b": layer, "delta": layer} and layer == 7_087_872
    # forward FLOPs per token: 2 x the 12d^2 matmul weights, plus q.k^T and probs.v (2Td each)
    assert c["flops_per_token"]["b"] == 2 * 12 * d_model ** 2 + 4 * seq * d_model
    assert c["kv_cache_bytes_per_token"]["b"] == 2 * d_model * 4
    t = d["totals"]
    assert t["parameters"]["delta"] == 2 * layer
    assert t["flops_per_token"]["delta"] == 2 * c["flops_per_token"]["b"]
    assert t["kv_cache_bytes"]["delta"] == 2 * 2 * d_model * 4 * seq
    a = d["totals"]["parameters"]["a"]
    assert a == 12 * layer + vocab * d_model + 1024 * d_model + 2 * d_model  # + wte, wpe, ln_f
    assert "+ repeat h.{12..13} ×2: 7,087,872 params" in render(d)


def test_bert_base_against_mini_bert():
    d = diff(graph("bert_base"), graph("mini_bert"), 128)
    removed = one(d, "layer.{4..11}")
    assert (removed["change"], removed["count"], removed["block"]["a"]) == ("removed", 8, "repeat")
    attn = one(d, "layer.{0..3}.attn")
    assert attn["options"]["heads"] == {"a": "12", "b": "4"}
    assert attn["shapes"]["a"].endswith("f32[batch,seq,768]")
    assert attn["shapes"]["b"].endswith("f32[batch,seq,192]")
    assert one(d, "layer.{0..3}.ffn")["options"]["hidden"] == {"a": "3072", "b": "768"}
    assert d["a"]["model"] == "bert_base" and d["b"]["model"] == "mini_bert"


def test_moe_options_and_active_parameters():
    d = diff(graph("moe_general"), graph("moe_general", experts=16, top_k=4), 128)
    [c] = d["layers"]
    assert c["paths"] == ["layers.{0..1}.moe"] and c["block"]["a"] == "moe_ffn"
    assert c["options"] == {"experts": {"a": "8", "b": "16"}, "top_k": {"a": "2", "b": "4"}}
    t = d["totals"]
    assert t["parameters"]["delta"] == 2 * c["params"]["delta"]
    # twice the experts, twice the top-k: the active expert share stays 1/4
    assert t["active_parameters_per_token"]["delta"] < t["parameters"]["delta"]


def test_shared_repeat_steps_are_an_option():
    d = diff(graph("universal_shared"), graph("universal_shared", steps=8), 128)
    [c] = d["layers"]
    assert c["paths"] == ["layer shared"] and c["options"] == {"steps": {"a": "6", "b": "8"}}
    assert c["params"]["delta"] == 0  # one set of weights, whatever the steps
    assert c["flops_per_token"]["b"] * 6 == pytest.approx(c["flops_per_token"]["a"] * 8)


def test_another_block_compares_only_the_options_both_have():
    d = diff(graph("longformer_style"), graph("longformer_full"), 128)
    c = one(d, "layer.0.attn")
    assert c["block"] == {"a": "attention", "b": "longformer_attention"}
    assert "dilation" not in c["options"] and "rope" not in c["options"]


def test_blocks_add_up_to_the_totals():
    for a, b in (("t5_small_style", "t5_small_style"), ("moe_general", "switch")):
        d = diff(graph(a), graph(b, layers=3), 256)
        blocks = d["blocks"]
        assert "(outside blocks)" not in [r["name"] for r in blocks]
        for side in "ab":
            assert sum(r["params"][side] for r in blocks) == d["totals"]["parameters"][side]
            assert sum(r["flops_per_token"][side] for r in blocks) == pytest.approx(
                d["totals"]["flops_per_token"][side], rel=1e-12)
            assert sum(r["kv_cache_bytes_per_token"][side] for r in blocks) == \
                d["totals"]["kv_cache_bytes_per_token"][side]


def test_compact_paths():
    assert compact(["h.12", "h.13"]) == ["h.{12..13}"]
    assert compact(["layer.0.local_attn", "layer.2.local_attn"]) == ["layer.{0,2}.local_attn"]
    assert compact(["a.0.b.0", "a.0.b.1", "a.1.b.0"]) == ["a.0.b.{0..1}", "a.1.b.0"]
    assert compact(["embed"]) == ["embed"]


def test_cli_json_is_sorted_and_stable(capsys):
    a, b = (str(ROOT / "specs" / f"{n}.arch") for n in ("moe_general", "switch"))
    assert main(["diff", a, b, "--seq", "64", "--json"]) == 0
    first = capsys.readouterr().out
    assert main(["diff", a, b, "--seq", "64", "--json"]) == 0
    assert capsys.readouterr().out == first
    d = json.loads(first)
    assert first == json.dumps(d, indent=2, sort_keys=True) + "\n"
    assert d["a"]["file"] == a and d["b"]["model"] == "switch"


def test_bad_input_is_a_clean_error(capsys, tmp_path):
    spec = str(ROOT / "specs" / "llama_tiny.arch")
    assert main(["diff", spec, str(tmp_path / "missing.arch")]) == 1
    assert "error[E0004]" in capsys.readouterr().err
    bad = tmp_path / "bad.arch"
    bad.write_text("model m {\n  x = nope(1)\n}\n")
    assert main(["diff", spec, str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error[") and "Traceback" not in err
    assert main(["diff", spec, spec, "--other-model", "nope"]) == 1
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(ArchcError):
        diff(graph("llama_tiny"), graph("llama_tiny"), 0)
