"""Tiny random checkpoints of the mixture-of-experts and latent-attention families, with their
reference logits (full and incremental, a left-padded row), for tests/test_hf_moe_families.py.

Same recipe as tools/make_fixtures.py (every parameter and persistent buffer re-randomised,
float32 eager attention), plus a check that every router sends some token to every expert, so
no expert's weights go untested. Each config switches its family's features on observably:
scaling factors != 1, yarn that changes the frequencies at this head size, a window shorter
than the sequence.

    python tools/make_moe_fixtures.py [FAMILY ...]      # default: every family here
"""

from __future__ import annotations

import sys

import numpy as np
from make_fixtures import COMMON, OUT, randomise, reference

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
        "beta_fast": 8.0, "beta_slow": 1.0}
FAMILIES: dict[str, tuple[str, str, dict]] = {
    "qwen2_moe": ("qwen2_moe", "Qwen2MoeForCausalLM", dict(
        COMMON, num_hidden_layers=3, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=16, shared_expert_intermediate_size=24, norm_topk_prob=False,
        mlp_only_layers=[1])),
    "qwen3_moe": ("qwen3_moe", "Qwen3MoeForCausalLM", dict(
        COMMON, num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=16, norm_topk_prob=True)),
    "deepseek_v3": ("deepseek_v3", "DeepseekV3ForCausalLM", dict(
        COMMON, num_hidden_layers=3, num_key_value_heads=4, n_routed_experts=8,
        num_experts_per_tok=2, moe_intermediate_size=16, n_shared_experts=2, n_group=4,
        topk_group=2, routed_scaling_factor=2.5, first_k_dense_replace=1, q_lora_rank=24,
        kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=12,
        rope_parameters=dict(YARN, rope_theta=10000.0, mscale=0.7, mscale_all_dim=1.0),
        rope_interleave=True)),
    "deepseek_v2": ("deepseek_v2", "DeepseekV2ForCausalLM", dict(
        COMMON, num_hidden_layers=2, num_key_value_heads=4, n_routed_experts=8,
        num_experts_per_tok=2, moe_intermediate_size=16, n_shared_experts=1, n_group=4,
        topk_group=2, topk_method="group_limited_greedy", routed_scaling_factor=1.5,
        q_lora_rank=None, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
        rope_parameters=dict(YARN, rope_theta=10000.0, mscale=0.7, mscale_all_dim=0.7))),
    "gpt_oss": ("gpt_oss", "GptOssForCausalLM", dict(
        COMMON, num_key_value_heads=2, head_dim=8, num_local_experts=4, num_experts_per_tok=2,
        sliding_window=4, swiglu_limit=1.5, layer_types=["sliding_attention", "full_attention"],
        rope_parameters=dict(YARN, rope_theta=10000.0, truncate=False))),
}


def all_experts_hit(model, ids, mask) -> None:
    """Every router picks every expert at least once on the fixture's tokens."""
    import torch

    seen: dict[str, set] = {}

    def hook(name):
        def record(_module, _inputs, out):
            seen.setdefault(name, set()).update(out[-1].flatten().tolist())
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if type(m).__name__.lower().endswith("router")]
    assert handles, "no router found"
    with torch.no_grad():
        model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    for h in handles:
        h.remove()
    for name, got in seen.items():
        n = getattr(model.config, "num_experts", None) or getattr(
            model.config, "n_routed_experts", None) or model.config.num_local_experts
        assert got == set(range(n)), f"{name} hits only experts {sorted(got)} of {n}"


def make(family: str, seed: int = 0) -> None:
    import torch
    import transformers

    model_type, arch, kwargs = FAMILIES[family]
    cfg = transformers.AutoConfig.for_model(model_type, **kwargs)
    cfg._attn_implementation = "eager"
    model = getattr(transformers, arch)(cfg).eval().to(torch.float32)
    for attempt in range(seed, seed + 50):  # the first seed whose tokens reach every expert
        randomise(model, attempt)
        ref = reference(model, cfg.vocab_size, attempt)
        try:
            all_experts_hit(model, ref["input_ids"], ref["attention_mask"])
            break
        except AssertionError as e:
            print(f"{family}: seed {attempt}: {e}")
    else:
        raise SystemExit(f"{family}: no seed reaches every expert")
    path = OUT / family
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    (path / "generation_config.json").unlink(missing_ok=True)
    np.savez(path / "reference.npz", **ref)
    print(f"{family}: {sum(p.numel() for p in model.parameters())} params -> {path}")


if __name__ == "__main__":
    for fam in sys.argv[1:] or FAMILIES:
        make(fam)
