"""Today's decoder families and their features (issue 10): rope scalings (llama3, dynamic, yarn,
linear, longrope), q/k norms per head and over the whole projection, post-sublayer norms, local
and global layers with ropes of their own, fused checkpoint layouts, multipliers, parallel
blocks, NoPE layers. The families in `DECODERS` are checked against transformers in full and
incrementally by test_hf_import.py and test_kvcache.py; the llama variants here. Each feature
is also switched off in the generated spec, which must move the logits by > 1e-3: a feature
the importer dropped would fail."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from conftest import ROOT
from safetensors.numpy import load_file

import archc
from archc.hf import import_hf
from archc.kvcache import incremental_logits
from archc.lower import lower

FIXTURES = ROOT / "tests" / "fixtures" / "hf"
TOL = 1e-4
VARIANTS = ("llama3", "llama_dynamic", "stablelm_parallel", "phi_qk_layernorm",
            "bloom_post_ln", "opt_350m", "falcon_alibi")  # other options of a family


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root, cache = tmp_path_factory.mktemp("new"), {}

    def get(fixture):
        if fixture not in cache:
            res = import_hf(FIXTURES / fixture, root / fixture)
            cache[fixture] = (res.spec, load_file(str(root / fixture / "model.safetensors")))
        return cache[fixture]
    return get


def _feeds(ref):
    return {"input_ids": ref["input_ids"], "attention_mask": ref["attention_mask"]}


# llama_dynamic runs past its context length on purpose (dynamic rope scales there)
@pytest.mark.filterwarnings("ignore:.*past the model's context length")
@pytest.mark.parametrize("fixture", VARIANTS)
def test_variant_logits_match_transformers_full_and_incremental(fixture, imported):
    spec, w = imported(fixture)
    ref = np.load(FIXTURES / fixture / "reference.npz")
    real = ref["attention_mask"].astype(bool)
    g = archc.compile(spec)
    gc = archc.optimize(lower(archc.parse(spec), cache=True))
    for backend in ("numpy", "onnxruntime"):
        err = np.abs(archc.run(g, _feeds(ref), w, backend=backend)["logits"] - ref["logits"])
        assert err[real].max() <= TOL, f"{fixture} on {backend}: {err[real].max():.3g}"
        got = incremental_logits(gc, w, ref["input_ids"], ref["attention_mask"],
                                 int(ref["prefill"]), backend)
        err = np.abs(got - ref["incremental_logits"])[real].max()
        assert err <= TOL, f"{fixture} incremental on {backend}: {err:.3g}"


_NO_SCALING = (r"rope_cfg = rope\([^)]*\)", "rope_cfg = rope(theta = 10000.0)")
_NO_QK_NORM = (r",\s*qk_norm(_all)? = \w+, qk_eps = eps", "")
OFF = {  # fixture -> feature -> (regex in the generated spec, replacement): the feature off
    "llama3": {"llama3 rope": _NO_SCALING},
    "llama_dynamic": {"dynamic rope": _NO_SCALING},
    "qwen3": {"yarn rope": _NO_SCALING, "q/k norm per head": _NO_QK_NORM},
    "olmo2": {"linear rope": _NO_SCALING, "q/k norm over the projection": _NO_QK_NORM,
              "norm after attention": (r"rms_norm\(a, eps\) as post_attention_norm", "a"),
              "norm after mlp": (r"rms_norm\(f, eps\) as post_feedforward_norm", "f")},
    "gemma3_text": {"q/k norm (1 + w)": _NO_QK_NORM,
                    "global rope scaling": (r"rope_cfg = rope\([^)]*\)",
                                            "rope_cfg = rope(theta = 1000.0)"),
                    "local rope base": (r"r = rope_local", "r = rope_cfg"),
                    "sliding window": (r"w = window ", "w = 0 "),
                    "embedding scale": (r"x = x \* sqrt\(d\)\n", ""),
                    "norm after mlp": (r"rms_norm\(f, eps, unit_offset = true\) as "
                                       r"post_feedforward_norm", "f")},
    "phi3": {"longrope": (r"rope_cfg = rope\([^)]*\)",
                          "rope_cfg = rope(theta = 10000.0, fraction = 0.5)"),
             "long factors": (r"long_factor = \[[^]]*\]", "long_factor = [1.0, 1.5]"),
             "sliding window": (r",\s*window = window", "")},
    "granite": {"embedding multiplier": (r"x = x \* 3\.0\n", ""),
                "attention multiplier": (r",\s*scale = 0\.2", ""),
                "residual multiplier": (r" \* 0\.5\n", "\n"),
                "logits scaling": (r" / 4\.0\n", "\n")},
    "cohere": {"logit scale": (r" \* 0\.5\n", "\n"), "q/k norm per head": _NO_QK_NORM,
               "interleaved rotary": (r", interleaved = true", "")},
    "starcoder2": {"sliding window": (r",\s*window = window", ""),
                   "mlp biases": (r"mlp\(h, ff, act = gelu_tanh, bias = true\)",
                                  "mlp(h, ff, act = gelu_tanh, bias = false)")},
    "stablelm": {"q/k norm per head": _NO_QK_NORM,
                 "partial rotary": (r"fraction = 0\.5", "fraction = 1.0")},
    "stablelm_parallel": {"parallel block": (r"x = x \+ a \+ glu\(h,", "x = x + a + glu(x,")},
    "phi_qk_layernorm": {"q/k LayerNorm per head": _NO_QK_NORM},
    "bloom_post_ln": {"residual after the norm": (r"x = h \+ ", "x = x + ")},
    "falcon_alibi": {"alibi": (r",\s*position_bias = bias", ""),
                     "alibi in bfloat16": (r"= bfloat16_round\(", "= (")},
    "opt_350m": {"norm after the residual": (r"x = layer_norm\(x \+ a, eps\) as input_norm",
                                             "x = x + a")},
    "smollm3": {"NoPE layers": (r"r = none", "r = rope_cfg")},
    "cohere2": {"NoPE global layers": (r"r = none", "r = rope_cfg"),
                "sliding window": (r"w = window", "w = 0")},
    "glm4": {"interleaved rotary": (r", interleaved = true", ""),
             "norm after attention": (r"rms_norm\(a, eps\) as post_attention_norm", "a"),
             "norm after mlp": (r"rms_norm\(f, eps\) as post_feedforward_norm", "f")},
}


@pytest.mark.parametrize("fixture, feature", [(f, k) for f, v in OFF.items() for k in v])
def test_switching_a_feature_off_moves_the_logits(fixture, feature, imported):
    spec, w = imported(fixture)
    pattern, replacement = OFF[fixture][feature]
    off, n = re.subn(pattern, replacement, spec)
    assert n >= 1, f"`{pattern}` not in the {fixture} spec:\n{spec}"
    ref = np.load(FIXTURES / fixture / "reference.npz")
    g = archc.compile(off)
    got = archc.run(g, _feeds(ref), {k: w[k] for k in g.params})["logits"]
    moved = np.abs(got - ref["logits"])[ref["attention_mask"].astype(bool)].max()
    assert moved > 1e-3, f"{fixture} without {feature}: logits moved only {moved:.3g}"


def _as_4x(config: dict) -> dict:
    """A transformers 5 config in the 4.x layout: rope_theta (and partial_rotary_factor) at
    the top level, the scaling in `rope_scaling` under its old key `type`."""
    params = dict(config.pop("rope_parameters"))
    config["rope_theta"] = params.pop("rope_theta")
    if "partial_rotary_factor" in params:
        config["partial_rotary_factor"] = params.pop("partial_rotary_factor")
    params["type"] = params.pop("rope_type")
    config["rope_scaling"] = params
    return config


@pytest.mark.parametrize("fixture", ["llama3", "llama_dynamic", "qwen3", "phi3", "gemma3_text"])
def test_transformers_4_rope_layout_gives_the_same_spec(fixture, tmp_path):
    src = tmp_path / fixture
    shutil.copytree(FIXTURES / fixture, src)
    config = json.loads((src / "config.json").read_text())
    if fixture == "gemma3_text":  # local base, global theta + scaling, a layer pattern
        params = config.pop("rope_parameters")
        config["rope_local_base_freq"] = params["sliding_attention"]["rope_theta"]
        config["rope_parameters"] = params["full_attention"]
        config = _as_4x(config)
        del config["layer_types"]
        config["sliding_window_pattern"] = 3
    else:
        config = _as_4x(config)
    if fixture == "phi3":
        config["rope_scaling"].pop("original_max_position_embeddings")  # top level only
    (src / "config.json").write_text(json.dumps(config))
    new = import_hf(FIXTURES / fixture, tmp_path / "a", config_only=True).spec
    assert import_hf(src, tmp_path / "b", config_only=True).spec == new
    assert "scaling = " in new


@pytest.mark.parametrize("fixture, field, value", [("smollm3", "no_rope_layer_interval", 2),
                                                   ("cohere2", "sliding_window_pattern", 2)])
def test_transformers_4_layer_patterns_give_the_same_spec(fixture, field, value, tmp_path):
    src = tmp_path / fixture
    shutil.copytree(FIXTURES / fixture, src)
    config = json.loads((src / "config.json").read_text())
    config.pop("no_rope_layers" if fixture == "smollm3" else "layer_types")
    config[field] = value
    (src / "config.json").write_text(json.dumps(config))
    new = import_hf(FIXTURES / fixture, tmp_path / "a", config_only=True).spec
    assert import_hf(src, tmp_path / "b", config_only=True).spec == new
    assert "r = none" in new


def test_unknown_rope_scaling_is_refused(tmp_path):
    from archc.diagnostics import ArchcError

    src = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / "llama3", src)
    config = json.loads((src / "config.json").read_text())
    config["rope_parameters"]["rope_type"] = "proportional"
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArchcError, match="rope scaling `proportional` is not supported"):
        import_hf(src, tmp_path / "out", config_only=True)


def _erf(x):
    import math
    return np.vectorize(math.erf)(x)


def _softplus(x):
    return np.log1p(np.exp(x))


_GELU = lambda x: 0.5 * x * (1 + _erf(x / np.sqrt(2)))  # noqa: E731
_GELU_TANH = lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))  # noqa: E731
FORMULAS = {  # transformers.activations, written out in float64
    "gelu": _GELU, "gelu_python": _GELU, "gelu_new": _GELU_TANH,
    "gelu_pytorch_tanh": _GELU_TANH, "gelu_python_tanh": _GELU_TANH, "gelu_accurate": _GELU_TANH,
    "gelu_fast": lambda x: 0.5 * x * (1 + np.tanh(x * 0.7978845608 * (1 + 0.044715 * x * x))),
    "quick_gelu": lambda x: x / (1 + np.exp(-1.702 * x)),
    "gelu_10": lambda x: np.clip(_GELU(x), -10, 10),
    "relu": lambda x: np.maximum(x, 0), "relu2": lambda x: np.maximum(x, 0) ** 2,
    "relu6": lambda x: np.clip(x, 0, 6), "leaky_relu": lambda x: np.where(x >= 0, x, 0.01 * x),
    "hardswish": lambda x: x * np.clip(x + 3, 0, 6) / 6,
    "mish": lambda x: x * np.tanh(_softplus(x)),
    "laplace": lambda x: 0.5 * (1 + _erf((x - 0.707107) / (0.282095 * np.sqrt(2)))),
    "sqrtsoftplus": lambda x: np.sqrt(_softplus(x)), "linear": lambda x: x,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)), "tanh": np.tanh,
    "silu": lambda x: x / (1 + np.exp(-x)), "swish": lambda x: x / (1 + np.exp(-x)),
}


def test_every_transformers_activation_name_is_its_formula():
    from archc.hf.llama import ACTS

    assert set(ACTS) == set(FORMULAS)
    names = sorted(ACTS)
    outs = "\n".join(f"  output o{i} = {ACTS[n]}(x)" for i, n in enumerate(names))
    g = archc.compile(f"model acts {{\n  input x: float32[batch, 64]\n{outs}\n}}\n")
    x = np.linspace(-12, 12, 128, dtype=np.float32).reshape(2, 64)
    for backend in ("numpy", "onnxruntime"):
        got = archc.run(g, {"x": x}, {}, backend=backend)
        for i, n in enumerate(names):
            want = FORMULAS[n](x.astype(np.float64))
            np.testing.assert_allclose(got[f"o{i}"], want, rtol=1e-5, atol=1e-5, err_msg=n)
