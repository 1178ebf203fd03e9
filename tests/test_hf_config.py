"""Hostile config.json files: a wrong field is an error that names it, shows it in config.json
and says what was expected; no config value can change the structure of the generated spec."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from conftest import ROOT

from archc.cli import main
from archc.hf.config import FIELDS

FIXTURES = ROOT / "tests" / "fixtures" / "hf"


def _import(tmp_path, capsys, config, family="llama", *extra):
    src = tmp_path / "ckpt"
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(FIXTURES / family, src)
    cfg = src / "config.json"
    if isinstance(config, bytes):
        cfg.write_bytes(config)
    elif isinstance(config, str):
        cfg.write_text(config)
    else:
        cfg.write_text(json.dumps(config, indent=2))
    code = main(["import-hf", str(src), "-o", str(tmp_path / "out"), *extra])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.err


def _config(family="llama", **changes):
    c = json.loads((FIXTURES / family / "config.json").read_text())
    for k, v in changes.items():
        if v is ...:
            del c[k]
        else:
            c[k] = v
    return c


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("vocab_size", "96, zz = 3", "a positive integer"),
    ("hidden_size", -32, "a positive integer"),
    ("hidden_size", "32", "a positive integer"),
    ("hidden_size", True, "a positive integer"),
    ("hidden_size", 32.0, "a positive integer"),
    ("hidden_size", 2**40, "at most 2147483647"),
    ("num_hidden_layers", 0, "a positive integer"),
    ("model_type", 5, "a name"),
    ("rms_norm_eps", "1e-6", "a finite non-negative number"),
    ("rms_norm_eps", float("nan"), "a finite non-negative number"),
    ("rope_theta", "big", "a finite positive number"),
    ("hidden_act", "silu\nmodel evil {", "a name"),
    ("hidden_act", ["silu"], "a name"),
    ("tie_word_embeddings", "false", "true or false"),
    ("architectures", ["LlamaForCausalLM\nmodel evil {"], "a list of names"),
    ("architectures", "LlamaForCausalLM", "a list of names"),
])
def test_wrong_field_is_named_and_shown_in_config_json(tmp_path, capsys, field, value,
                                                       expected):
    config = _config(**{field: value})
    config.pop("rope_parameters")  # so a top-level rope_theta is the one read
    code, err = _import(tmp_path, capsys, config)
    assert code == 1
    assert f"`{field}` is " in err and expected in err, err
    assert re.search(rf"--> {re.escape(str(tmp_path / 'ckpt' / 'config.json'))}:\d+:3", err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("text", "message"), [
    ("[1, 2]", "holds a JSON list, not an object"),
    ('"config"', "holds a JSON str"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"model_type": "llama", "vocab_size": 3', "is not valid JSON: Expecting"),
    ('{"model_type": "llama",\n', "is not valid JSON: Expecting"),  # ends after a newline
    ("{}", "has no `model_type`"),
    ('{"model_type": "llama", "x": 1' + "0" * 5000 + "}", "cannot be read"),
])
def test_config_that_is_not_a_config(tmp_path, capsys, text, message):
    code, err = _import(tmp_path, capsys, text)
    assert code == 1 and message in err, err


def test_non_utf8_config_is_located(tmp_path, capsys):
    code, err = _import(tmp_path, capsys, b'{"model_type": "ll\xffama"}')
    assert code == 1 and "is not UTF-8 text: byte 0xff" in err and "config.json:1:19" in err


def test_missing_folder_and_config(tmp_path, capsys):
    assert main(["import-hf", str(tmp_path / "nope"), "-o", str(tmp_path / "o")]) == 1
    assert "is not a checkpoint folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["import-hf", str(tmp_path / "empty"), "-o", str(tmp_path / "o")]) == 1
    assert "no `config.json`" in capsys.readouterr().err


def test_config_only_error_points_at_the_generated_spec_and_config(tmp_path, capsys):
    """A config whose sizes do not fit each other (kv heads that do not divide the heads)
    fails in the generated spec: the message says it was generated and not written, and
    names config.json."""
    code, err = _import(tmp_path, capsys, _config(num_attention_heads=5), "llama",
                        "--config-only")
    assert code == 1
    assert "(generated from" in err and "not written)" in err
    assert f"the spec was generated from `{tmp_path / 'ckpt' / 'config.json'}`" in err
    assert not (tmp_path / "out" / "model.arch").exists()


def test_injection_cannot_change_the_spec(tmp_path, capsys):
    for field, value in (("vocab_size", "96\n}\nmodel evil { output x = y"),
                         ("architectures", ["A\nmodel evil {"]),
                         ("rms_norm_eps", "1e-6, zz = 3"), ("hidden_act", "silu) as x #")):
        code, _ = _import(tmp_path, capsys, _config(**{field: value}), "llama",
                          "--config-only")
        assert code == 1, field
    code, _ = _import(tmp_path, capsys, _config(), "llama", "--config-only")
    spec = (tmp_path / "out" / "model.arch").read_text()
    assert code == 0 and spec.count("model ") == 1


@pytest.mark.parametrize("family", sorted(p.parent.name for p in FIXTURES.glob("*/config.json")))
def test_every_fixture_config_passes_the_field_checks(tmp_path, capsys, family):
    code, err = _import(tmp_path, capsys, _config(family), family, "--config-only")
    assert code == 0, err


def test_every_field_the_families_read_is_typed():
    read = set()
    for path in (ROOT / "archc" / "hf").glob("*.py"):
        for call in re.findall(r"c\.(?:get|rope)\(([^)]*)\)", path.read_text()):
            read |= set(re.findall(r"[\"']([a-z_0-9]+)[\"']", call.split("default")[0]))
    assert read - set(FIELDS) == set()
