"""The mixture-of-experts and latent-attention families (qwen2_moe, qwen3_moe, deepseek_v2,
deepseek_v3, gpt_oss): their fixtures (tools/make_moe_fixtures.py: every router reaches every
expert, scaling factors != 1, yarn that moves the frequencies, a window shorter than the
sequence, a left-padded row) match transformers within 1e-4 on both backends, full and
incremental, through the DECODERS-wide tests in test_hf_import.py and test_kvcache.py. Here:
each distinctive feature, switched off in the imported spec, moves the logits by > 1e-3 (so a
dropped feature fails); the latent KV cache; and `--config-only` + `stats` against the
published parameter counts."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import ROOT

import archc
from archc.diagnostics import ArchcError
from archc.hf import DECODERS, import_checkpoint, import_hf
from archc.lower import lower
from archc.stats import param_stats

FIXTURES = ROOT / "tests" / "fixtures" / "hf"
MINE = ("qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "gpt_oss")
_CACHE: dict = {}


def _imported(family: str):
    if family not in _CACHE:
        _CACHE[family] = import_checkpoint(FIXTURES / family)
    return _CACHE[family]


def _logits(family: str, spec: str) -> np.ndarray:
    g = archc.optimize(lower(archc.parse(spec, f"<{family}>")))
    w = {k: v for k, v in _imported(family).weights.items() if k in g.params}
    ref = np.load(FIXTURES / family / "reference.npz")
    feeds = {"input_ids": ref["input_ids"], "attention_mask": ref["attention_mask"]}
    return archc.run(g, feeds, w)["logits"]


def test_the_families_are_registered_and_run_by_the_decoder_tests():
    assert set(MINE) <= set(DECODERS)
    for fam in MINE:
        ref = np.load(FIXTURES / fam / "reference.npz")
        real = ref["attention_mask"].astype(bool)
        assert not real.all()
        err = np.abs(_logits(fam, _imported(fam).spec) - ref["logits"])[real].max()
        assert err <= 1e-4, f"{fam}: {err:.3g}"


# (family, what is switched off, text in the imported spec, its replacement)
SWITCHES = [
    ("qwen2_moe", "shared expert's sigmoid gate", ", shared_gate)", ")"),
    ("qwen2_moe", "shared expert", ", shared_hidden = shared_ff, shared_gate", ""),
    ("qwen2_moe", "top-k not renormalised", "normalize = false", "normalize = true"),
    ("qwen3_moe", "q/k norm", ", qk_norm = rms_norm, qk_eps = eps", ""),
    ("qwen3_moe", "top-k renormalised", "normalize = true", "normalize = false"),
    ("deepseek_v3", "correction bias", "correction, ", ""),
    ("deepseek_v3", "grouped routing", "groups = 4, group_k = 2, ", ""),
    ("deepseek_v3", "routed scaling factor", "scale = 2.5, ", ""),
    ("deepseek_v3", "sigmoid router", "score = sigmoid", "score = softmax"),
    ("deepseek_v3", "shared experts", ", shared_hidden = shared_ff", ""),
    ("deepseek_v3", "yarn", "scaling = yarn", "scaling = default"),
    ("deepseek_v3", "yarn mscale in the score scale", " * 1.2964769927807063", ""),
    ("deepseek_v3", "rope on interleaved pairs", "interleaved = true, ", ""),
    ("deepseek_v2", "grouped routing by the best expert", "group_by = max", "group_by = top2"),
    ("deepseek_v2", "routed scaling factor", "scale = 1.5, ", ""),
    ("gpt_oss", "attention sinks", ", sinks)", ")"),
    ("gpt_oss", "clamped SwiGLU", "limit = 1.5", "limit = 0.0"),
    ("gpt_oss", "sliding window", "{ w = window }", "{ w = 0 }"),
    ("gpt_oss", "yarn", "scaling = yarn", "scaling = default"),
    ("gpt_oss", "router bias", "router_bias = true", "router_bias = false"),
]


@pytest.mark.parametrize("family, feature, old, new", SWITCHES,
                         ids=[f"{f}-{what}" for f, what, _, _ in SWITCHES])
def test_switching_a_feature_off_moves_the_logits(family, feature, old, new):
    spec = _imported(family).spec
    pattern = re.compile(r"\s*".join(map(re.escape, old.split())))  # wherever lines wrap
    assert len(pattern.findall(spec)) == 1, f"`{old}` not found once in\n{spec}"
    ref = np.load(FIXTURES / family / "reference.npz")
    real = ref["attention_mask"].astype(bool)
    moved = np.abs(_logits(family, pattern.sub(new, spec)) - ref["logits"])[real].max()
    assert moved > 1e-3, f"{family} without {feature}: logits move only {moved:.3g}"


def test_the_latent_cache_holds_the_latent_and_the_rope_key():
    spec = _imported("deepseek_v3").spec
    g = lower(archc.parse(spec), cache=True)
    shapes = {n: list(v.type.shape) for n, v in g.inputs.items() if n.startswith("past")}
    assert shapes["past_key_values.0.latent"] == ["batch", 1, "past", 16]  # kv_rank
    assert shapes["past_key_values.0.rope_key"] == ["batch", 1, "past", 8]  # rope_dim
    assert len(shapes) == 2 * 3
    assert param_stats(g)["kv_cache_bytes_per_token"]["float32"] == 3 * (16 + 8) * 4


# Full-size configs as published on the Hub (fields that matter to the shapes).
QWEN3_30B_A3B = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": 151936,
    "hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768,
    "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4,
    "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8, "norm_topk_prob": True,
    "decoder_sparse_step": 1, "mlp_only_layers": [], "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "rope_scaling": None, "attention_bias": False,
    "tie_word_embeddings": False, "use_sliding_window": False, "hidden_act": "silu"}
QWEN15_MOE_A27B = {
    "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "vocab_size": 151936,
    "hidden_size": 2048, "intermediate_size": 5632, "moe_intermediate_size": 1408,
    "shared_expert_intermediate_size": 5632, "num_hidden_layers": 24, "num_attention_heads": 16,
    "num_key_value_heads": 16, "num_experts": 60, "num_experts_per_tok": 4,
    "norm_topk_prob": False, "decoder_sparse_step": 1, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "tie_word_embeddings": False, "use_sliding_window": False}
DEEPSEEK_V3 = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": 129280,
    "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048,
    "num_hidden_layers": 61, "num_nextn_predict_layers": 1, "num_attention_heads": 128,
    "num_key_value_heads": 128, "n_shared_experts": 1, "n_routed_experts": 256,
    "routed_scaling_factor": 2.5, "kv_lora_rank": 512, "q_lora_rank": 1536,
    "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128, "topk_method": "noaux_tc",
    "n_group": 8, "topk_group": 4, "num_experts_per_tok": 8, "moe_layer_freq": 1,
    "first_k_dense_replace": 3, "norm_topk_prob": True, "scoring_func": "sigmoid",
    "hidden_act": "silu", "max_position_embeddings": 163840, "rms_norm_eps": 1e-6,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                     "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                     "type": "yarn"},
    "rope_theta": 10000, "tie_word_embeddings": False, "attention_bias": False}
DEEPSEEK_V2_LITE = {
    **DEEPSEEK_V3, "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
    "vocab_size": 102400, "hidden_size": 2048, "intermediate_size": 10944,
    "moe_intermediate_size": 1408, "num_hidden_layers": 27, "num_attention_heads": 16,
    "num_key_value_heads": 16, "n_shared_experts": 2, "n_routed_experts": 64,
    "routed_scaling_factor": 1.0, "q_lora_rank": None, "topk_method": "greedy", "n_group": 1,
    "topk_group": 1, "num_experts_per_tok": 6, "first_k_dense_replace": 1,
    "norm_topk_prob": False, "scoring_func": "softmax",
    "rope_scaling": {**DEEPSEEK_V3["rope_scaling"], "mscale": 0.707, "mscale_all_dim": 0.707}}
GPT_OSS_20B = {
    "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "vocab_size": 201088,
    "hidden_size": 2880, "intermediate_size": 2880, "head_dim": 64, "num_attention_heads": 64,
    "num_key_value_heads": 8, "num_hidden_layers": 24, "num_local_experts": 32,
    "num_experts_per_tok": 4, "attention_bias": True, "sliding_window": 128,
    "layer_types": ["sliding_attention", "full_attention"] * 12, "rms_norm_eps": 1e-5,
    "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                     "original_max_position_embeddings": 4096, "rope_type": "yarn",
                     "truncate": False},
    "rope_theta": 150000, "swiglu_limit": 7.0, "tie_word_embeddings": False}

# total: what the checkpoint stores, transformers' own count of parameters (numel summed over
# `parameters()`, built on the meta device) plus its persistent buffers: DeepSeek-V3's 58
# routers' `e_score_correction_bias` (256 each), 671,026,404,352 + 14,848. archc stores the
# correction bias as a parameter and `stats` reports it under `buffers`, as transformers does,
# so parameters + buffers is checked.
# active: archc's count per token (router, shared experts, k/E of routed experts, and both
# embedding tables); of the published figures (Qwen: 3.3B and 2.7B activated; DeepSeek-V3:
# 37B; V2-Lite: 2.4B; GPT-OSS-20B: 3.61B), the last two leave out the input embedding.
# kv: bytes per token at float16: per layer 2 x kv_heads x head_dim, or for latent attention
# kv_rank + rope_dim (DeepSeek-V3: 61 x 576 x 2 = 70,272).
COUNTS = [
    (QWEN3_30B_A3B, 30_532_122_624, 3_353_032_704, 0, 3.3e9, 48 * 2 * 4 * 128 * 2),
    (QWEN15_MOE_A27B, 14_315_784_192, 2_689_173_504, 0, 2.7e9, 24 * 2 * 16 * 128 * 2),
    (DEEPSEEK_V3, 671_026_419_200, 37_552_297_472, 0, 37e9, 61 * (512 + 64) * 2),
    (DEEPSEEK_V2_LITE, 15_706_484_224, 2_661_150_208, 209_715_200, 2.4e9, 27 * (512 + 64) * 2),
    (GPT_OSS_20B, 20_914_757_184, 4_187_440_704, 579_133_440, 3.61e9, 24 * 2 * 8 * 64 * 2),
]


@pytest.mark.parametrize("config, total, active, lookup, published, kv16", COUNTS,
                         ids=["qwen3-30b-a3b", "qwen1.5-moe-a2.7b", "deepseek-v3",
                              "deepseek-v2-lite", "gpt-oss-20b"])
def test_published_parameter_counts(tmp_path, config, total, active, lookup, published, kv16):
    (tmp_path / "config.json").write_text(json.dumps(config))
    import_hf(tmp_path, tmp_path / "out", config_only=True)
    s = param_stats(lower(archc.parse_file(tmp_path / "out" / "model.arch")))
    assert s["parameters"] + s.get("buffers", 0) == total
    assert s["active_per_token"] + s.get("buffers", 0) == active
    assert abs(active - lookup - published) / published < 0.03  # the published rounding
    assert s["kv_cache_bytes_per_token"]["float16"] == kv16


def test_a_bad_config_value_is_refused_before_it_reaches_the_spec(tmp_path):
    for base, key, value in ((QWEN15_MOE_A27B, "num_experts", "4; output x = 1"),
                             (QWEN15_MOE_A27B, "moe_intermediate_size", 1.5),
                             (DEEPSEEK_V3, "routed_scaling_factor", "nan"),
                             (DEEPSEEK_V3, "kv_lora_rank", -512),
                             (GPT_OSS_20B, "swiglu_limit", -1.0)):
        (tmp_path / "config.json").write_text(json.dumps({**base, key: value}))
        with pytest.raises(ArchcError, match=rf"`{key}` is"):
            import_hf(tmp_path, tmp_path / "out", config_only=True)


def _gates_reference(x, w, corr, top_k, groups, group_k, sigmoid, normalize, scale):
    """expert_gates from its equations (docs/catalogue/latent_experts.md), in NumPy."""
    logits = x @ w
    if sigmoid:
        s = 1 / (1 + np.exp(-logits))
    else:
        e = np.exp(logits - logits.max(-1, keepdims=True))
        s = e / e.sum(-1, keepdims=True)
    c = s + corr
    per = c.shape[-1] // groups
    ranked = np.sort(c.reshape(*c.shape[:-1], groups, per), -1)[..., -2:].sum(-1)
    kept = np.argsort(-ranked, -1, kind="stable")[..., :group_k]
    allowed = np.zeros_like(ranked, bool)
    np.put_along_axis(allowed, kept, True, -1)
    c = np.where(np.repeat(allowed, per, -1), c, -np.inf)
    picks = np.argsort(-c, -1, kind="stable")[..., :top_k]
    g = np.zeros_like(s)
    np.put_along_axis(g, picks, np.take_along_axis(s, picks, -1), -1)
    if normalize:
        g = g / g.sum(-1, keepdims=True)
    return g * scale


@pytest.mark.parametrize("opts, ref", [
    ("score = sigmoid, normalize = true, groups = 4, group_k = 2, correction, scale = 2.5",
     {"top_k": 3, "groups": 4, "group_k": 2, "sigmoid": True, "normalize": True, "scale": 2.5}),
    ("normalize = false", {"top_k": 3, "groups": 1, "group_k": 1, "sigmoid": False,
                           "normalize": False, "scale": 1.0}),
])
def test_expert_gates_follow_their_equations(opts, ref):
    spec = f"""model gates {{
      input x: float32[batch, seq, 16]
      output g = expert_gates(x, 8, 3, {opts}) as router
    }}"""
    g = lower(archc.parse(spec))
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, 16)).astype(np.float32)
    w = {"router.weight": rng.normal(size=(16, 8)).astype(np.float32)}
    corr = np.zeros(8, np.float32)
    if "correction" in opts:
        corr = w["router.correction_bias"] = rng.normal(0, 0.3, 8).astype(np.float32)
    want = _gates_reference(x, w["router.weight"], corr, **ref)
    for backend in ("numpy", "onnxruntime"):
        got = archc.run(g, {"x": x}, w, backend=backend)["g"]
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_fused_expert_layout_imports_the_same(tmp_path):
    """transformers 5 holds experts fused in memory ([E, 2ff, d] gate_up_proj, [E, d, ff]
    down_proj); published checkpoints store them per expert. Both import to the same weights."""
    import shutil

    from safetensors.numpy import load_file, save_file

    src = tmp_path / "fused"
    shutil.copytree(FIXTURES / "qwen3_moe", src)
    t = load_file(str(src / "model.safetensors"))
    for i in range(2):
        p = f"model.layers.{i}.mlp.experts"
        parts = {k: np.stack([t.pop(f"{p}.{e}.{k}.weight") for e in range(4)])
                 for k in ("gate_proj", "up_proj", "down_proj")}
        t[f"{p}.gate_up_proj"] = np.concatenate([parts["gate_proj"], parts["up_proj"]], 1)
        t[f"{p}.down_proj"] = parts["down_proj"]
    save_file(t, str(src / "model.safetensors"))
    fused, split = import_checkpoint(src).weights, _imported("qwen3_moe").weights
    assert fused.keys() == split.keys()
    for k in split:
        np.testing.assert_array_equal(fused[k], split[k])
