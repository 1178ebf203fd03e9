"""`archc stats` on full-size configs imported with --config-only gives the published counts."""

from __future__ import annotations

import json

import pytest

import archc
from archc.hf import import_hf
from archc.stats import param_stats

LLAMA2_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000,
             "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 32, "rms_norm_eps": 1e-05,
             "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu"}
MISTRAL_7B = {**LLAMA2_7B, "architectures": ["MistralForCausalLM"], "model_type": "mistral",
              "intermediate_size": 14336, "num_key_value_heads": 8, "sliding_window": 4096}
MIXTRAL_8X7B = {**MISTRAL_7B, "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
                "num_local_experts": 8, "num_experts_per_tok": 2, "sliding_window": None,
                "rope_theta": 1e6}
GPT2 = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 50257,
        "n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024}


@pytest.mark.parametrize("config, total, active, kv_bytes", [
    (LLAMA2_7B, 6_738_415_616, 6_738_415_616, 32 * 2 * 4096 * 4),
    (MISTRAL_7B, 7_241_732_096, 7_241_732_096, 32 * 2 * 1024 * 4),
    (MIXTRAL_8X7B, 46_702_792_704, 12_879_925_248, 32 * 2 * 1024 * 4),
    (GPT2, 124_439_808, 124_439_808, 12 * 2 * 768 * 4),
], ids=["llama-2-7b", "mistral-7b", "mixtral-8x7b", "gpt2"])
def test_published_parameter_counts(tmp_path, config, total, active, kv_bytes):
    (tmp_path / "config.json").write_text(json.dumps(config))
    import_hf(tmp_path, tmp_path / "out", config_only=True)
    assert not (tmp_path / "out" / "model.safetensors").exists()
    s = param_stats(archc.lower(archc.parse_file(tmp_path / "out" / "model.arch")))
    assert s["parameters"] == total
    assert s["active_per_token"] == active
    assert s["kv_cache_bytes_per_token"]["float32"] == kv_bytes
    assert s["kv_cache_bytes_per_token"]["float16"] == kv_bytes // 2


BERT_BASE = {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": 30522,
             "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072, "max_position_embeddings": 512, "type_vocab_size": 2,
             "hidden_act": "gelu", "layer_norm_eps": 1e-12}
T5_SMALL = {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
            "vocab_size": 32128, "d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6,
            "num_heads": 8, "relative_attention_num_buckets": 32, "feed_forward_proj": "relu"}
BART_BASE = {"architectures": ["BartModel"], "model_type": "bart", "vocab_size": 50265,
             "d_model": 768, "encoder_layers": 6, "decoder_layers": 6,
             "encoder_attention_heads": 12, "decoder_attention_heads": 12,
             "encoder_ffn_dim": 3072, "decoder_ffn_dim": 3072, "max_position_embeddings": 1024,
             "activation_function": "gelu"}


@pytest.mark.parametrize("config, total", [
    (BERT_BASE, 109_482_240), (T5_SMALL, 60_506_624), (BART_BASE, 139_420_416),
], ids=["bert-base-uncased", "t5-small", "bart-base"])
def test_published_encoder_counts(tmp_path, config, total):
    (tmp_path / "config.json").write_text(json.dumps(config))
    import_hf(tmp_path, tmp_path / "out", config_only=True)
    s = param_stats(archc.lower(archc.parse_file(tmp_path / "out" / "model.arch")))
    assert s["parameters"] == total


# Published configs of today's decoders; each count equals transformers' own (the model built on
# the meta device, tied weights once) and, where the card gives one, the published number
# (Llama-3.1-8B 8,030,261,248; Phi-3-mini 3,821,079,552; Qwen3-8B "8.2B, 6.95B non-embedding").
LLAMA31_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
              "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
              "max_position_embeddings": 131072, "rope_theta": 500000.0,
              "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 8192, "rope_type": "llama3"},
              "tie_word_embeddings": False, "hidden_act": "silu", "head_dim": 128}
QWEN3_8B = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936,
            "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
            "rms_norm_eps": 1e-06, "max_position_embeddings": 40960, "rope_theta": 1000000,
            "rope_scaling": None, "tie_word_embeddings": False, "use_sliding_window": False,
            "sliding_window": None, "max_window_layers": 36, "hidden_act": "silu"}
GEMMA3_4B_TEXT = {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
                  "vocab_size": 262208, "hidden_size": 2560, "intermediate_size": 10240,
                  "num_hidden_layers": 34, "num_attention_heads": 8, "num_key_value_heads": 4,
                  "head_dim": 256, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
                  "sliding_window": 1024, "sliding_window_pattern": 6,
                  "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
                  "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                  "max_position_embeddings": 131072, "hidden_activation": "gelu_pytorch_tanh"}
OLMO2_7B = {"architectures": ["Olmo2ForCausalLM"], "model_type": "olmo2", "vocab_size": 100352,
            "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 32, "rms_norm_eps": 1e-06,
            "max_position_embeddings": 4096, "rope_theta": 500000, "rope_scaling": None,
            "tie_word_embeddings": False, "attention_bias": False, "hidden_act": "silu"}
PHI3_MINI = {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "vocab_size": 32064,
             "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 32, "rms_norm_eps": 1e-05,
             "max_position_embeddings": 4096, "original_max_position_embeddings": 4096,
             "rope_theta": 10000.0, "rope_scaling": None, "sliding_window": 2047,
             "tie_word_embeddings": False, "hidden_act": "silu"}


@pytest.mark.parametrize("config, total, kv_bytes", [
    (LLAMA31_8B, 8_030_261_248, 32 * 2 * 8 * 128 * 4),
    (QWEN3_8B, 8_190_735_360, 36 * 2 * 8 * 128 * 4),
    (GEMMA3_4B_TEXT, 3_880_263_168, 34 * 2 * 4 * 256 * 4),
    (OLMO2_7B, 7_298_617_344, 32 * 2 * 4096 * 4),
    (PHI3_MINI, 3_821_079_552, 32 * 2 * 3072 * 4),
], ids=["llama-3.1-8b", "qwen3-8b", "gemma-3-4b-text", "olmo-2-7b", "phi-3-mini"])
def test_published_counts_of_todays_decoders(tmp_path, config, total, kv_bytes):
    (tmp_path / "config.json").write_text(json.dumps(config))
    import_hf(tmp_path, tmp_path / "out", config_only=True)
    s = param_stats(archc.lower(archc.parse_file(tmp_path / "out" / "model.arch")))
    assert s["parameters"] == s["active_per_token"] == total
    assert s["kv_cache_bytes_per_token"]["float32"] == kv_bytes


def test_deepseek_v3_correction_bias_is_a_buffer(tmp_path):
    """transformers keeps `e_score_correction_bias` as a buffer: on the fixture's config
    `sum(p.numel() for p in DeepseekV3ForCausalLM(config).parameters())` is 59,992 (measured
    with transformers 5.24) and the two MoE layers' biases are 2 x 8 buffer elements."""
    from pathlib import Path

    fixture = Path(__file__).parent / "fixtures" / "hf" / "deepseek_v3"
    import_hf(fixture, tmp_path / "out", config_only=True)
    s = param_stats(archc.lower(archc.parse_file(tmp_path / "out" / "model.arch")))
    assert (s["parameters"], s["buffers"]) == (59_992, 16)
