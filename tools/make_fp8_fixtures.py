"""Tiny FP8 checkpoints and their reference logits, for tests/test_hf_fp8.py: the recipe of
tools/make_fixtures.py (every parameter re-randomised, float32 eager attention), then each
linear weight quantized to float8_e4m3fn with its scales beside it, as config.json's
`quantization_config` says. The reference logits come from the same model holding the
dequantized weights (what the fp8 checkpoint means); `reference.npz` also keeps torch's decoding
of every fp8 byte, for the decode tables' test.

    python tools/make_fp8_fixtures.py [NAME ...]      # default: every fixture here
"""

# ruff: noqa: C408  (model configs read best as keyword arguments, as transformers writes them)
from __future__ import annotations

import json
import sys

import numpy as np
from make_fixtures import COMMON, OUT, randomise, reference

# Odd sizes, so that blocks end part-filled.
FP8: dict[str, tuple[str, str, dict, dict]] = {  # name -> (model_type, class, config, quant)
    "llama_fp8": ("llama", "LlamaForCausalLM", dict(
        COMMON, hidden_size=40, intermediate_size=56, num_key_value_heads=2,
        tie_word_embeddings=False), dict(quant_method="fp8", fmt="e4m3",
                                         activation_scheme="dynamic", weight_block_size=[16, 16])),
    "qwen3_fp8_channel": ("qwen3", "Qwen3ForCausalLM", dict(
        COMMON, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False), dict(
        quant_method="compressed-tensors", format="float-quantized", config_groups={"group_0": {
            "targets": ["Linear"], "weights": {"num_bits": 8, "type": "float",
                                               "strategy": "channel", "symmetric": True},
            "input_activations": {"num_bits": 8, "type": "float", "strategy": "token",
                                  "dynamic": True}}}, ignore=["lm_head"])),
}


def quantize_fp8(model, quant: dict) -> dict:
    """The fp8 checkpoint's tensors: each linear weight W [out, in] (not the embeddings or the
    head) as float8_e4m3fn q with scales s, one per block (rows, cols) of W, s = amax / 448;
    the model's own weights become q * s broadcast over the blocks, in place."""
    import torch

    fp8 = quant["quant_method"] == "fp8"
    tensors = {}
    for name, p in model.state_dict().items():
        if not (name.endswith("proj.weight") and p.ndim == 2):
            tensors[name] = p.contiguous()
            continue
        rows, cols = quant["weight_block_size"] if fp8 else (1, p.shape[1])
        r, c = -(-p.shape[0] // rows), -(-p.shape[1] // cols)
        padded = torch.zeros(r * rows, c * cols)
        padded[:p.shape[0], :p.shape[1]] = p
        amax = padded.reshape(r, rows, c, cols).abs().amax(dim=(1, 3))
        scale = (amax / 448).clamp(min=1e-12)
        if not fp8:  # compressed-tensors stores its scales in bf16
            scale = scale.to(torch.bfloat16).float()
        full = scale.repeat_interleave(rows, 0).repeat_interleave(cols, 1)
        full = full[:p.shape[0], :p.shape[1]]
        q = (p / full).to(torch.float8_e4m3fn)
        with torch.no_grad():
            p.copy_(q.float() * full)
        tensors[name] = q
        tensors[name + ("_scale_inv" if fp8 else "_scale")] = \
            scale if fp8 else scale.to(torch.bfloat16)
    return tensors


def make(name: str, seed: int = 0) -> None:
    import torch
    import transformers
    from safetensors.torch import save_file

    model_type, arch, kwargs, quant = FP8[name]
    cfg = transformers.AutoConfig.for_model(model_type, **kwargs)
    cfg._attn_implementation = "eager"
    model = getattr(transformers, arch)(cfg).eval().to(torch.float32)
    randomise(model, seed)
    path = OUT / name
    path.mkdir(parents=True, exist_ok=True)
    save_file(quantize_fp8(model, quant), path / "model.safetensors")
    cfg.save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "quantization_config": quant},
                                                 indent=2) + "\n")
    ref = reference(model, cfg.vocab_size, seed)
    codes = torch.arange(256, dtype=torch.uint8)  # torch's decoding of every fp8 byte
    for dtype in ("float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu"):
        ref[dtype] = codes.view(getattr(torch, dtype)).float().numpy()
    np.savez(path / "reference.npz", **ref)
    print(f"{name}: fp8 {quant['quant_method']} -> {path}")


if __name__ == "__main__":
    for name in sys.argv[1:] or FP8:
        make(name)
