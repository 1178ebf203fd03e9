"""Serving (archc.serving): `archc compile --genai DIR` is served by onnxruntime-genai's own
generator with the same greedy tokens as `archc generate`; what genai cannot express is refused
with the reason; `--triton DIR` writes a model repository whose config.pbtxt files declare
exactly their ONNX models' inputs and outputs."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import onnxruntime_genai as og
import pytest
from conftest import ROOT

from archc.cli import main
from archc.hf import import_hf
from archc.serving import hf_facts, statement

FIXTURES = ROOT / "tests" / "fixtures" / "hf"
PROMPT = "3,5,7"
STEPS = 10


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    for fam in ("llama", "opt", "qwen2", "gpt2", "mistral"):
        import_hf(FIXTURES / fam, root / fam)
    return root


def _args(path):
    return [str(path / "model.arch"), "--weights", str(path / "model.safetensors")]


def _archc_generate(path, capsys, prompt: str = PROMPT) -> list[int]:
    capsys.readouterr()
    assert main(["generate", *_args(path), "--ids", prompt, "--steps", str(STEPS)]) == 0
    return [int(t) for t in capsys.readouterr().out.strip().split(",")]


def _genai_generate(folder, prompts: tuple[str, ...] = (PROMPT,)) -> list[list[int]] | list[int]:
    """onnxruntime-genai's greedy search from `prompts` (one batch, equal lengths)."""
    ids = np.array([[int(t) for t in p.split(",")] for p in prompts], np.int32)
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=ids.shape[1] + STEPS, batch_size=len(prompts))
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    while not gen.is_done():
        gen.generate_next_token()
    rows = [[int(t) for t in gen.get_sequence(i)] for i in range(len(prompts))]
    return rows if len(prompts) > 1 else rows[0]


# ---------------------------------------------------------------- onnxruntime-genai
@pytest.mark.parametrize("family", ["llama", "opt", "qwen2"])
def test_genai_generates_archc_greedy_tokens(family, imported, tmp_path, capsys):
    """llama: RoPE + GQA with bos/eos; opt: learned positions from the mask; qwen2: no eos."""
    out = tmp_path / "genai"
    assert main(["compile", *_args(imported / family), "--genai", str(out)]) == 0
    want = _archc_generate(imported / family, capsys)
    config = json.loads((out / "genai_config.json").read_text())
    eos = config["model"].get("eos_token_id")
    stop = next((i + 1 for i in range(3, len(want)) if want[i] == eos), len(want))
    assert stop == len(want)  # no early stop: the comparison covers every step
    assert _genai_generate(out) == want


def test_genai_serves_a_float16_model(imported, tmp_path):
    """`--genai DIR --dtype float16`: genai runs the float16 file as is, its KV cache in
    float16 (the other inputs and outputs stay float32), and its greedy tokens are the file's
    own: plain onnxruntime, greedy over full recomputation, from the same file."""
    out = tmp_path / "genai16"
    assert main(["compile", *_args(imported / "llama"), "--genai", str(out), "--dtype",
                 "float16"]) == 0
    model = onnx.load(str(out / "model.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = np.array([[int(t) for t in PROMPT.split(",")]], np.int64)
    for _ in range(STEPS):  # an empty cache each time: the whole sequence in one pass
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        for i in sess.get_inputs():
            if i.name.startswith("past_key_values."):
                assert i.type == "tensor(float16)"
                feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float16)
        logits = sess.run(["logits"], feeds)[0]
        ids = np.concatenate([ids, logits[:, -1:].argmax(-1)], axis=1)
    assert _genai_generate(out) == ids[0].tolist()


def test_genai_batch_of_two_prompts(imported, tmp_path, capsys):
    out = tmp_path / "genai"
    assert main(["compile", *_args(imported / "llama"), "--genai", str(out)]) == 0
    prompts = (PROMPT, "9,4,1")
    want = [_archc_generate(imported / "llama", capsys, p) for p in prompts]
    assert want[0][3:] != want[1][3:]
    assert _genai_generate(out, prompts) == want


def test_genai_stops_at_the_specs_eos_token(imported, tmp_path, capsys):
    """The `serving` statement's eos_token_id reaches genai: make a token archc generates
    first at step k > 1 the end-of-text token, and genai stops there (its sequence leaves the
    end-of-text token out)."""
    want = _archc_generate(imported / "llama", capsys)
    new = want[3:]
    k = next(i for i in range(2, len(new)) if new[i] not in new[:i])
    eos = new[k]
    text = (imported / "llama" / "model.arch").read_text()
    spec = tmp_path / "eos.arch"
    assert "eos_token_id = 2," in text
    spec.write_text(text.replace("eos_token_id = 2,", f"eos_token_id = [{eos}, 95],"))
    out = tmp_path / "genai"
    assert main(["compile", str(spec), "--weights",
                 str(imported / "llama" / "model.safetensors"), "--genai", str(out)]) == 0
    assert _genai_generate(out) == want[:3 + k]


def test_genai_config_states_the_exported_layout(imported, tmp_path):
    out = tmp_path / "genai"
    assert main(["compile", *_args(imported / "llama"), "--genai", str(out)]) == 0
    config = json.loads((out / "genai_config.json").read_text())
    m, d = config["model"], config["model"]["decoder"]
    assert (m["type"], m["context_length"], m["vocab_size"]) == ("decoder", 64, 96)
    assert (m["bos_token_id"], m["eos_token_id"], m["pad_token_id"]) == (1, 2, 2)
    assert (d["num_hidden_layers"], d["num_attention_heads"], d["num_key_value_heads"],
            d["head_size"], d["hidden_size"]) == (2, 4, 2, 8, 32)
    assert config["search"]["do_sample"] is False and config["search"]["max_length"] == 64
    assert config["search"]["past_present_share_buffer"] is False
    graph = onnx.load(str(out / d["filename"])).graph
    names = {v.name: v for v in (*graph.input, *graph.output)}
    expected = [d["inputs"]["input_ids"], d["inputs"]["attention_mask"], d["outputs"]["logits"]]
    for i in range(d["num_hidden_layers"]):
        for key in ("past_key_names", "past_value_names"):
            expected.append(d["inputs"][key] % i)
        for key in ("present_key_names", "present_value_names"):
            expected.append(d["outputs"][key] % i)
    assert sorted(expected) == sorted(names)  # every name is there, and nothing else
    past = names["past_key_values.1.value"].type.tensor_type.shape.dim
    assert [x.dim_param or x.dim_value for x in past] == ["batch", 2, "past", 8]


def test_context_length_comes_from_a_position_table(imported, tmp_path):
    """opt's table has 66 rows at offset 2: 64 positions, found without `context_length`."""
    spec = tmp_path / "opt.arch"
    text = (imported / "opt" / "model.arch").read_text()
    assert ", context_length = 64\n" in text
    spec.write_text(text.replace(", context_length = 64\n", "\n"))
    out = tmp_path / "genai"
    assert main(["compile", str(spec), "--weights", str(imported / "opt" / "model.safetensors"),
                 "--genai", str(out)]) == 0
    assert json.loads((out / "genai_config.json").read_text())["model"]["context_length"] == 64


def test_import_hf_writes_what_genai_needs_as_a_statement(imported):
    assert hf_facts({"bos_token_id": 1, "eos_token_id": [2, 7], "pad_token_id": None,
                     "n_positions": 128}) == {"bos_token_id": 1, "eos_token_id": [2, 7],
                                              "context_length": 128}
    assert hf_facts({"eos_token_id": "x", "max_position_embeddings": 0}) == {}
    assert statement({"eos_token_id": [2, 7], "context_length": 128}) == \
        "serving eos_token_id = [2, 7], context_length = 128"
    text = (imported / "llama" / "model.arch").read_text()
    assert "\n  serving bos_token_id = 1, eos_token_id = 2, context_length = 64\n\n" in text
    assert "# serving" not in text


def _refused(argv, code, message, capsys, out):
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"error[{code}]" in err and message in err, err
    assert not out.exists() or not any(out.iterdir())  # nothing written
    return err


@pytest.mark.parametrize("spec, message", [
    ("txl_memory", "its state `memory` is not a key/value cache"),
    ("mini_bert", "it keeps no KV cache (not a decoder)"),
    ("t5_small_style", "it is an encoder-decoder"),
])
def test_genai_refuses_what_it_cannot_express(spec, message, tmp_path, capsys):
    out = tmp_path / "genai"
    _refused(["compile", str(ROOT / "specs" / f"{spec}.arch"), "--genai", str(out)], "E0600",
             message, capsys, out)


def test_genai_refuses_a_sliding_window_cache(imported, tmp_path, capsys):
    out = tmp_path / "genai"
    _refused(["compile", *_args(imported / "mistral"), "--genai", str(out)], "E0600",
             "layer 0 keeps a bounded cache", capsys, out)


@pytest.mark.parametrize("old, new, message", [
    ("kv_heads = kv_heads,", "kv_heads = 2 + 2 * (layers % 2),",
     "its layers' caches differ in shape"),
    ("output logits = lm_head(y, vocab)", "output hidden = y", "genai reads one output, "
     "`logits` [batch, seq, vocab] with a static vocabulary; the model's are `hidden`"),
    ("input attention_mask: int64[batch, seq]", "input attention_mask: int64[batch, seq]\n"
     "  input token_type_ids: int64[batch, seq]\n  x0 = embed(token_type_ids, 2, d) as types",
     "the model has an input `token_type_ids`"),
])
def test_genai_refuses_layouts_its_config_cannot_state(old, new, message, imported, tmp_path,
                                                       capsys):
    text = (imported / "llama" / "model.arch").read_text()
    assert old in text
    text = text.replace(old, new)
    if "x0 =" in new:
        text = text.replace("y = rms_norm(x, eps)", "y = rms_norm(x + x0, eps)")
    spec = tmp_path / "edited.arch"
    spec.write_text(text)
    out = tmp_path / "genai"
    _refused(["compile", str(spec), "--genai", str(out)], "E0600", message, capsys, out)


def test_genai_refuses_missing_or_wrong_facts(imported, tmp_path, capsys):
    out = tmp_path / "genai"
    _refused(["compile", str(ROOT / "specs" / "llama_tiny.arch"), "--genai", str(out)],
             "E0601", "the context length of `llama_tiny` is unknown", capsys, out)
    # gpt2's fixture keeps GPT-2's real token ids with a 96-token vocabulary
    err = _refused(["compile", *_args(imported / "gpt2"), "--genai", str(out)], "E0601",
                   "`bos_token_id` = 50256 is not in the vocabulary (ids 0..95)", capsys, out)
    assert "model.arch:4:26\n" in err and "^^^^^ not a token of this model" in err
    spec = tmp_path / "bad.arch"
    text = (ROOT / "specs" / "llama_tiny.arch").read_text()
    assert "model llama_tiny {\n" in text
    spec.write_text(text.replace("model llama_tiny {\n", "model llama_tiny {\n  serving "
                                 "context_lenght = 64, eos_token_id = -1\n"))
    err = _refused(["compile", str(spec), "--genai", str(out)], "E0601",
                   "unknown serving fact `context_lenght`", capsys, out)
    line = text[:text.index("model llama_tiny {")].count("\n") + 2  # the statement's
    assert "did you mean `context_length`" in err and f"bad.arch:{line}:11\n" in err
    assert "`eos_token_id` is -1, not a token id" in err and f"bad.arch:{line}:47\n" in err


# ---------------------------------------------------------------- Triton
def _pbtxt(text: str):
    """A protobuf text-format message -> {field: [values]} (nested messages as dicts)."""
    tokens = re.findall(r'"[^"]*"|[{}\[\]:,]|[^\s{}\[\]:,"]+', text)
    pos = 0

    def value():
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "{":
            return message("}")
        if tok.startswith('"'):
            return tok[1:-1]
        return int(tok) if re.fullmatch(r"-?\d+", tok) else tok

    def message(end):
        nonlocal pos
        fields: dict[str, list] = {}
        while pos < len(tokens) and tokens[pos] != end:
            name = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            values = fields.setdefault(name, [])
            if tokens[pos] == "[":
                pos += 1
                while tokens[pos] != "]":
                    values.append(value())
                    pos += tokens[pos] == ","
                pos += 1
            else:
                values.append(value())
        pos += 1  # the closing brace
        return fields

    return message(None)


ONNX_TYPES = {"TYPE_FP32": onnx.TensorProto.FLOAT, "TYPE_INT64": onnx.TensorProto.INT64}


def _check_model(folder, name):
    config = _pbtxt((folder / "config.pbtxt").read_text())
    assert config["name"] == [name] and config["platform"] == ["onnxruntime_onnx"]
    assert config["max_batch_size"] == [0]
    graph = onnx.load(str(folder / "1" / "model.onnx")).graph
    for kind, values in (("input", graph.input), ("output", graph.output)):
        declared = [(t["name"][0], ONNX_TYPES[t["data_type"][0]], t["dims"])
                    for t in config[kind]]
        actual = [(v.name, v.type.tensor_type.elem_type,
                   [d.dim_value if d.HasField("dim_value") else -1
                    for d in v.type.tensor_type.shape.dim]) for v in values]
        assert declared == actual
    return graph


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_triton_repository_of_a_decoder_with_past(dtype, imported, tmp_path, capsys):
    """Both models, their config.pbtxt checked against the file's own IO (float32 either way;
    float16 weights inside with `--dtype float16`), and the with-past model equal to the plain
    one (1e-5; 1e-2 of the logit scale in float16, whose two files round differently)."""
    repo = tmp_path / "repo"
    assert main(["compile", *_args(imported / "llama"), "--triton", str(repo),
                 "--kv-cache", "--dtype", dtype]) == 0
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()) == [
        "llama/1/model.onnx", "llama/config.pbtxt", "llama_with_past/1/model.onnx",
        "llama_with_past/config.pbtxt"]
    plain = _check_model(repo / "llama", "llama")
    assert [v.name for v in plain.input] == ["input_ids", "attention_mask"]
    past = _check_model(repo / "llama_with_past", "llama_with_past")
    assert [v.name for v in past.output][:3] == ["logits", "present.0.key", "present.0.value"]
    import onnxruntime as ort  # the with-past model, with its weights, runs the same numbers

    ids = np.array([[3, 5, 7, 9]])
    full = ort.InferenceSession(str(repo / "llama" / "1" / "model.onnx")).run(
        ["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
    empty = {v.name: np.zeros((1, 2, 0, 8), np.float32) for v in past.input[2:]}
    step = ort.InferenceSession(str(repo / "llama_with_past" / "1" / "model.onnx")).run(
        ["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids), **empty})[0]
    half = {t.data_type for t in onnx.load(str(repo / "llama" / "1" / "model.onnx"))
            .graph.initializer} >= {onnx.TensorProto.FLOAT16}
    assert half == (dtype == "float16")
    np.testing.assert_allclose(step, full, atol=1e-5 if dtype == "float32" else
                               1e-2 * np.abs(full).max())


def test_triton_repository_of_an_encoder_decoder(tmp_path):
    repo = tmp_path / "repo"
    assert main(["compile", str(ROOT / "specs" / "t5_small_style.arch"), "--triton", str(repo),
                 "--kv-cache"]) == 0
    names = sorted(p.name for p in repo.iterdir())
    assert names == ["t5_small_style", "t5_small_style_decoder_with_past",
                     "t5_small_style_encoder"]
    for name in names:
        _check_model(repo / name, name)
    decoder = onnx.load(str(repo / names[1] / "1" / "model.onnx")).graph
    assert {"encoder_key_values.0.key", "past_key_values.0.key"} <= {v.name for v in
                                                                     decoder.input}


def test_triton_encoder_and_refusal(tmp_path, capsys):
    repo = tmp_path / "repo"
    assert main(["compile", str(ROOT / "specs" / "mini_bert.arch"), "--triton",
                 str(repo)]) == 0
    assert [p.name for p in repo.iterdir()] == ["mini_bert"]
    _check_model(repo / "mini_bert", "mini_bert")
    out = tmp_path / "other"
    _refused(["compile", str(ROOT / "specs" / "mini_bert.arch"), "--triton", str(out),
              "--kv-cache"], "E0400", "`mini_bert` keeps no KV cache", capsys, out)


def test_triton_repository_of_a_decoder_whose_state_is_a_running_sum(tmp_path):
    """The Linear Transformer keeps no keys or values, only `cumsum_cache` prefix sums, and is
    served with past all the same: the with-past model, fed a zero state, equals the plain one
    (1e-5) and returns the state after the prompt."""
    repo = tmp_path / "repo"
    assert main(["compile", str(ROOT / "specs" / "linear_transformer.arch"), "--triton",
                 str(repo), "--kv-cache"]) == 0
    plain = _check_model(repo / "linear_transformer", "linear_transformer")
    past = _check_model(repo / "linear_transformer_with_past", "linear_transformer_with_past")
    states = [v for v in past.input if v.name.startswith("past_key_values.")]
    assert states and {v.name.rsplit(".", 1)[1] for v in states} == {"kv_sum", "k_sum"}
    import onnxruntime as ort

    ids = np.array([[3, 5, 7, 9]])
    feeds = {v.name: np.ones_like(ids) for v in plain.input if v.name != "input_ids"}
    full = ort.InferenceSession(str(repo / "linear_transformer" / "1" / "model.onnx")).run(
        ["logits"], {"input_ids": ids, **feeds})[0]
    zero = {v.name: np.zeros([1 if d.dim_param else d.dim_value
                              for d in v.type.tensor_type.shape.dim], np.float32)
            for v in states}
    step = ort.InferenceSession(str(repo / "linear_transformer_with_past" / "1" / "model.onnx"))
    got = step.run(None, {"input_ids": ids, **feeds, **zero})
    np.testing.assert_allclose(got[0], full, atol=1e-5)
    assert len(got) == 1 + len(states) and all(np.abs(s).max() > 0 for s in got[1:])
