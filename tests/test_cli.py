"""The command line end to end, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
from conftest import ROOT

import archc
from archc.cli import main

LLAMA = str(ROOT / "specs" / "llama_tiny.arch")


def test_check_ok(capsys):
    assert main(["check", LLAMA]) == 0
    assert "ok" in capsys.readouterr().out


def test_run_both_backends_agree_and_npz_holds_every_output(tmp_path):
    outs = {}
    for backend in ("numpy", "onnxruntime"):
        path = tmp_path / f"{backend}.npz"
        spec = str(ROOT / "specs" / "mini_bert.arch")
        assert main(["run", spec, "--batch", "2", "--seq", "5", "--out", str(path),
                     "--backend", backend, "--seed", "3"]) == 0
        with np.load(path) as f:
            outs[backend] = {k: f[k] for k in f.files}
    assert set(outs["numpy"]) == {"last_hidden_state", "pooler_output"}
    for k in outs["numpy"]:
        np.testing.assert_allclose(outs["numpy"][k], outs["onnxruntime"][k], atol=1e-5)


def test_run_with_inputs_and_weights_files(tmp_path):
    g = archc.compile(LLAMA)
    w = archc.init_params(g, seed=9)
    archc.save_weights(w, str(tmp_path / "w.safetensors"))
    ids = np.array([[1, 2, 3, 4]], np.int64)
    np.savez(tmp_path / "in.npz", input_ids=ids, attention_mask=np.ones_like(ids),
             unrelated=np.zeros(3))
    assert main(["run", LLAMA, "--weights", str(tmp_path / "w.safetensors"), "--inputs",
                 str(tmp_path / "in.npz"), "--out", str(tmp_path / "o.npz")]) == 0
    want = archc.run(g, {"input_ids": ids, "attention_mask": np.ones_like(ids)}, w)["logits"]
    with np.load(tmp_path / "o.npz") as f:
        np.testing.assert_allclose(f["logits"], want, atol=1e-6)


def test_bad_weights_name_the_parameter_and_both_shapes(tmp_path, capsys):
    g = archc.compile(LLAMA)
    w = archc.init_params(g)
    w["norm.weight"] = np.ones(7, np.float32)
    del w["lm_head.weight"]
    w["extra.bias"] = np.zeros(2, np.float32)
    archc.save_weights(w, str(tmp_path / "w.safetensors"))
    assert main(["run", LLAMA, "--weights", str(tmp_path / "w.safetensors"), "--out",
                 str(tmp_path / "o.npz")]) == 1
    err = capsys.readouterr().err
    assert "missing weight `lm_head.weight` [256, 1024]" in err
    assert "weight `norm.weight` has shape [7], the spec needs [256]" in err
    assert "unexpected weight `extra.bias`" in err


def test_compile_writes_a_checked_onnx_model(tmp_path):
    out = tmp_path / "m.onnx"
    assert main(["compile", LLAMA, "-o", str(out), "--seed", "1", "-O", "2"]) == 0
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in model.graph.output] == ["logits"]
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "seq"]


def test_dump_after_a_pass_and_levels(capsys):
    assert main(["dump", LLAMA, "-O", "0"]) == 0
    raw = capsys.readouterr().out
    assert main(["dump", LLAMA, "--after", "eliminate_common_subexpressions"]) == 0
    cse = capsys.readouterr().out
    assert raw.startswith("graph llama_tiny {") and raw.count("causal_mask") == 4
    assert cse.count("causal_mask") == 1
    assert main(["dump", LLAMA, "--after", "fuse_everything"]) == 1
    assert "unknown pass" in capsys.readouterr().err


def test_stats_json(capsys):
    assert main(["stats", str(ROOT / "specs" / "gpt2_small.arch"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["parameters"] == 124_439_808
    assert s["with_duplicates"] == 124_439_808 + 50257 * 768  # the tied head counted again
    assert s["breakdown"]["token embedding"] == 50257 * 768
    assert s["breakdown"]["position and token-type embeddings"] == 1024 * 768
    assert sum(s["breakdown"].values()) == s["parameters"]


def test_stats_bert_base_and_shared_layers(capsys):
    assert main(["stats", str(ROOT / "specs" / "bert_base.arch"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] == 109_482_240
    g = archc.lower(archc.parse_file(ROOT / "specs" / "universal_shared.arch"))
    from archc.stats import param_stats

    s = param_stats(g)
    layer = sum(int(np.prod(p.type.shape)) for n, p in g.params.items() if n.startswith("layer."))
    assert s["with_duplicates"] == s["parameters"] + 5 * layer  # 6 steps, one set of weights


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "archc", "--help"], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 0 and "check" in out.stdout
