"""Build tiny random Hugging Face checkpoints and their reference logits, for archc's tests.

Needs the `fixtures` extra (torch==2.13.0, transformers); the tests themselves need neither.
For each family: a tiny config, a model whose EVERY parameter and persistent buffer is
re-randomised (non-persistent buffers such as rotary caches are derived, not stored, and stay
as built; the default init leaves biases at 0 and norm scales at 1, which would hide a
dropped bias), `config.json` + `model.safetensors` written by `save_pretrained`, and
`reference.npz` with inputs and float32 eager-attention logits: the full sequence, and the same
sequence decoded incrementally (a prefill of K tokens, then one token at a time with the cache).

    python tools/make_fixtures.py [FAMILY ...]      # default: every family
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "hf"
SEQ, PREFILL, PAD = 9, 5, 3  # row 1 of the batch has PAD left-padding tokens

COMMON = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=48, max_position_embeddings=64)

FAMILIES: dict[str, tuple[str, dict]] = {
    "gpt2": ("GPT2LMHeadModel", dict(vocab_size=96, n_embd=32, n_layer=2, n_head=4,
                                     n_positions=64, activation_function="gelu_new")),
    "llama": ("LlamaForCausalLM", dict(COMMON, num_key_value_heads=2, rope_theta=5000.0)),
    "mistral": ("MistralForCausalLM", dict(COMMON, num_key_value_heads=2, sliding_window=4)),
    "mixtral": ("MixtralForCausalLM", dict(COMMON, num_key_value_heads=2, num_local_experts=4,
                                           num_experts_per_tok=2, sliding_window=None)),
    "qwen2": ("Qwen2ForCausalLM", dict(COMMON, num_key_value_heads=2)),
    "gemma": ("GemmaForCausalLM", dict(COMMON, num_key_value_heads=1, head_dim=16)),
    "gemma2": ("Gemma2ForCausalLM", dict(COMMON, num_hidden_layers=4, num_key_value_heads=2,
                                         head_dim=16, sliding_window=4,
                                         query_pre_attn_scalar=24, attn_logit_softcapping=5.0,
                                         final_logit_softcapping=3.0)),
    "phi": ("PhiForCausalLM", dict(COMMON, partial_rotary_factor=0.5)),
    "gpt_neox": ("GPTNeoXForCausalLM", dict(COMMON, rotary_pct=0.25, use_parallel_residual=True)),
    "gptj": ("GPTJForCausalLM", dict(vocab_size=96, n_embd=32, n_layer=2, n_head=4, rotary_dim=4,
                                     n_positions=64)),
    "falcon": ("FalconForCausalLM", dict(vocab_size=96, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, multi_query=True,
                                         parallel_attn=True, new_decoder_architecture=False,
                                         bias=False, alibi=False)),
    "bloom": ("BloomForCausalLM", dict(vocab_size=96, hidden_size=32, n_layer=2, n_head=4)),
    "opt": ("OPTForCausalLM", dict(vocab_size=96, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, ffn_dim=48, max_position_embeddings=64,
                                   word_embed_proj_dim=32)),
    # Today's families: each distinctive feature switched on and observable at these sizes
    # (rope scalings that move the frequencies of an 8- or 16-dim head within 9 positions,
    # windows shorter than the sequence, multipliers != 1).
    "qwen3": ("Qwen3ForCausalLM", dict(COMMON, num_key_value_heads=2, head_dim=16,
                                       rope_parameters=dict(rope_type="yarn", rope_theta=10000.0,
                                                            factor=4.0,
                                                            original_max_position_embeddings=16))),
    "olmo2": ("Olmo2ForCausalLM", dict(COMMON, num_key_value_heads=2, rope_parameters=dict(
        rope_type="linear", rope_theta=10000.0, factor=2.0))),
    "gemma3_text": ("Gemma3ForCausalLM", dict(
        COMMON, num_hidden_layers=4, num_key_value_heads=2, head_dim=16, sliding_window=4,
        query_pre_attn_scalar=24, layer_types=["sliding_attention", "sliding_attention",
                                               "full_attention", "sliding_attention"],
        rope_parameters={"sliding_attention": dict(rope_type="default", rope_theta=10.0),
                         "full_attention": dict(rope_type="linear", rope_theta=1000.0,
                                                factor=4.0)})),
    "phi3": ("Phi3ForCausalLM", dict(
        COMMON, num_key_value_heads=2, sliding_window=5, original_max_position_embeddings=6,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
        rope_parameters=dict(rope_type="longrope", rope_theta=10000.0, partial_rotary_factor=0.5,
                             short_factor=[1.0, 1.5], long_factor=[3.0, 7.0]))),
    "granite": ("GraniteForCausalLM", dict(
        COMMON, num_key_value_heads=2, embedding_multiplier=3.0, attention_multiplier=0.2,
        residual_multiplier=0.5, logits_scaling=4.0)),
    "cohere": ("CohereForCausalLM", dict(COMMON, num_key_value_heads=2, logit_scale=0.5,
                                         use_qk_norm=True)),
    "cohere2": ("Cohere2ForCausalLM", dict(COMMON, num_hidden_layers=4, num_key_value_heads=2,
                                           logit_scale=0.5, sliding_window=4,
                                           layer_types=["sliding_attention", "full_attention",
                                                        "sliding_attention", "full_attention"])),
    "starcoder2": ("Starcoder2ForCausalLM", dict(COMMON, num_key_value_heads=2, sliding_window=4,
                                                 use_bias=True)),
    "stablelm": ("StableLmForCausalLM", dict(COMMON, num_key_value_heads=2,
                                             partial_rotary_factor=0.5, use_qkv_bias=True,
                                             qk_layernorm=True)),
    "smollm3": ("SmolLM3ForCausalLM", dict(COMMON, num_key_value_heads=2, num_hidden_layers=4,
                                           no_rope_layer_interval=2, pad_token_id=0,
                                           bos_token_id=1, eos_token_id=2)),
    "glm4": ("Glm4ForCausalLM", dict(COMMON, num_key_value_heads=2, head_dim=16,
                                     partial_rotary_factor=0.5, attention_bias=True,
                                     pad_token_id=0, eos_token_id=2)),
}
# Fixtures of a family with other options: name -> (model_type, class, config).
VARIANTS: dict[str, tuple[str, str, dict]] = {
    "phi_qk_layernorm": ("phi", "PhiForCausalLM", dict(COMMON, partial_rotary_factor=0.5,
                                                       qk_layernorm=True)),
    "bloom_post_ln": ("bloom", "BloomForCausalLM", dict(
        vocab_size=96, hidden_size=32, n_layer=2, n_head=4,
        apply_residual_connection_post_layernorm=True)),
    "opt_350m": ("opt", "OPTForCausalLM", dict(
        vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=48,
        max_position_embeddings=64, word_embed_proj_dim=24, do_layer_norm_before=False)),
    "llama3": ("llama", "LlamaForCausalLM", dict(
        COMMON, num_key_value_heads=2, rope_parameters=dict(
            rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
            high_freq_factor=4.0, original_max_position_embeddings=64))),
    "llama_dynamic": ("llama", "LlamaForCausalLM", dict(
        COMMON, num_key_value_heads=2, max_position_embeddings=6, rope_parameters=dict(
            rope_type="dynamic", rope_theta=10000.0, factor=3.0))),
    "stablelm_parallel": ("stablelm", "StableLmForCausalLM", dict(
        COMMON, num_hidden_layers=3, num_key_value_heads=4, use_parallel_residual=True,
        rope_parameters=dict(rope_type="default", rope_theta=500.0,
                             partial_rotary_factor=0.25))),
    # Falcon-RW's layout (ALiBi, sequential block, a qkv per head, biases); 24 heads take both
    # of ALiBi's slope sequences, with slopes bfloat16 does not hold exactly.
    "falcon_alibi": ("falcon", "FalconForCausalLM", dict(
        vocab_size=96, hidden_size=96, num_hidden_layers=2, num_attention_heads=24,
        ffn_hidden_size=64, multi_query=False, parallel_attn=False,
        new_decoder_architecture=False, bias=True, alibi=True)),
}
# transformers' default attention, where eager differs: Falcon's eager path adds its ALiBi twice
# (once to the scores and again through the mask it is folded into); SDPA, the default, adds it
# once, as the original Falcon-RW code does.
ATTENTION = {"falcon_alibi": "sdpa"}

# Encoders and encoder-decoders: padding at the END of row 1 (as tokenizers pad them).
ENCODERS: dict[str, tuple[str, str, dict]] = {
    "bert": ("bert", "BertForPreTraining", dict(COMMON, type_vocab_size=2)),
    "roberta": ("roberta", "RobertaForMaskedLM", dict(COMMON, max_position_embeddings=66,
                                                      pad_token_id=1, type_vocab_size=1)),
    "longformer": ("longformer", "LongformerForMaskedLM", dict(
        COMMON, max_position_embeddings=66, pad_token_id=1, type_vocab_size=1,
        attention_window=[4, 4])),
    "t5": ("t5", "T5ForConditionalGeneration", dict(
        vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
        feed_forward_proj="relu", tie_word_embeddings=True, decoder_start_token_id=0)),
    "t5_v1_1": ("t5", "T5ForConditionalGeneration", dict(
        vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0)),
    # variants: other sizes, windows, bucket counts, so nothing is tuned to one fixture
    "longformer_w6": ("longformer", "LongformerForMaskedLM", dict(
        COMMON, hidden_size=36, num_attention_heads=3, num_hidden_layers=3,
        max_position_embeddings=66, pad_token_id=1, type_vocab_size=1,
        attention_window=[6, 6, 6])),
    "t5_variant": ("t5", "T5ForConditionalGeneration", dict(
        vocab_size=80, d_model=24, d_kv=12, d_ff=40, num_layers=3, num_decoder_layers=1,
        num_heads=2, relative_attention_num_buckets=16, relative_attention_max_distance=10,
        feed_forward_proj="gated-gelu", decoder_start_token_id=0)),
    "bart": ("bart", "BartForConditionalGeneration", dict(
        vocab_size=96, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
        decoder_ffn_dim=48, max_position_embeddings=64, pad_token_id=1,
        decoder_start_token_id=2, forced_eos_token_id=None)),
}
# Multimodal checkpoints archc imports as their text decoder: a tiny vision tower and projector
# saved beside it, reference logits of a text-only prompt. The image token is a token of the
# prompt inside the vocabulary (as gemma-3-4b-it's 262144 < 262208): without images it is an
# ordinary token. The final softcap is set: Gemma3ForConditionalGeneration does not apply it.
MULTIMODAL: dict[str, tuple[str, str, dict, dict]] = {  # name -> (type, class, text, top level)
    "gemma3_multimodal": ("gemma3", "Gemma3ForConditionalGeneration", dict(
        COMMON, hidden_size=40, num_hidden_layers=6, num_key_value_heads=1, head_dim=12,
        sliding_window=3, sliding_window_pattern=3, query_pre_attn_scalar=20,
        attn_logit_softcapping=4.0, final_logit_softcapping=2.0,
        rope_parameters={"sliding_attention": dict(rope_type="default", rope_theta=20.0),
                         "full_attention": dict(rope_type="linear", rope_theta=500.0,
                                                factor=2.0)}),
        dict(vision_config=dict(model_type="siglip_vision_model", hidden_size=16,
                                intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                                image_size=16, patch_size=4),
             mm_tokens_per_image=4, boi_token_index=93, eoi_token_index=94)),
}
TGT = 7  # decoder length; row 1 of the decoder batch has 2 padding tokens at the end


def randomise(model, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    saved = set(model.state_dict())  # parameters and persistent buffers: what the file holds
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if name not in saved or not p.is_floating_point():
                continue
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            else:  # norm scales (and Gemma's zero-centred ones)
                p.copy_(p + torch.randn(p.shape, generator=g) * 0.2)


def reference(model, vocab: int, seed: int) -> dict[str, np.ndarray]:
    import torch

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (2, SEQ))
    mask = np.ones((2, SEQ), np.int64)
    mask[1, :PAD] = 0
    t_ids, t_mask = torch.tensor(ids), torch.tensor(mask)
    with torch.no_grad():
        full = model(input_ids=t_ids, attention_mask=t_mask).logits.numpy()
        out = model(input_ids=t_ids[:, :PREFILL], attention_mask=t_mask[:, :PREFILL],
                    use_cache=True)
        steps, past = [out.logits.numpy()], out.past_key_values
        for t in range(PREFILL, SEQ):
            out = model(input_ids=t_ids[:, t:t + 1], attention_mask=t_mask[:, :t + 1],
                        past_key_values=past, use_cache=True)
            steps.append(out.logits.numpy())
            past = out.past_key_values
    return {"input_ids": ids, "attention_mask": mask, "logits": full,
            "incremental_logits": np.concatenate(steps, axis=1), "prefill": np.array(PREFILL)}


def encoder_reference(model, family: str, vocab: int, seed: int) -> dict[str, np.ndarray]:
    import torch

    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, (2, SEQ))
    mask = np.ones((2, SEQ), np.int64)
    mask[1, -PAD:] = 0
    if family in ("roberta", "bart") or family.startswith("longformer"):
        ids[mask == 0] = 1  # their padding token, which roberta's positions depend on
    feeds = {"input_ids": ids, "attention_mask": mask}
    if family == "bert":
        feeds["token_type_ids"] = (np.arange(SEQ)[None] >= 4).astype(np.int64).repeat(2, 0)
    if family.startswith("longformer"):
        glob = np.zeros((2, SEQ), np.int64)
        glob[:, 0] = 1
        glob[0, 5] = 1
        glob[1, rng.integers(1, SEQ - PAD)] = 1
        feeds["global_attention_mask"] = glob
    out: dict[str, np.ndarray] = dict(feeds)
    t = {k: torch.tensor(v) for k, v in feeds.items()}
    with torch.no_grad():
        if family.startswith(("t5", "bart")):
            dec = rng.integers(3, vocab, (2, TGT))
            dmask = np.ones((2, TGT), np.int64)
            dmask[1, -2:] = 0
            out.update(decoder_input_ids=dec, decoder_attention_mask=dmask)
            td, tdm = torch.tensor(dec), torch.tensor(dmask)
            full = model(**t, decoder_input_ids=td, decoder_attention_mask=tdm)
            out["logits"] = full.logits.numpy()
            enc = model.get_encoder()(**t)
            step = model(encoder_outputs=enc, attention_mask=t["attention_mask"],
                         decoder_input_ids=td[:, :PREFILL - 1],
                         decoder_attention_mask=tdm[:, :PREFILL - 1], use_cache=True)
            steps, past = [step.logits.numpy()], step.past_key_values
            for i in range(PREFILL - 1, TGT):
                step = model(encoder_outputs=enc, attention_mask=t["attention_mask"],
                             decoder_input_ids=td[:, i:i + 1],
                             decoder_attention_mask=tdm[:, :i + 1], past_key_values=past,
                             use_cache=True)
                steps.append(step.logits.numpy())
                past = step.past_key_values
            out["incremental_logits"] = np.concatenate(steps, axis=1)
            out["prefill"] = np.array(PREFILL - 1)
        else:
            res = model(**t)
            out["logits"] = res.logits.numpy() if hasattr(res, "logits") else \
                res.prediction_logits.numpy()
            if family == "bert":
                out["nsp_logits"] = res.seq_relationship_logits.numpy()
    return out


def make(family: str, seed: int = 0) -> None:
    import torch
    import transformers

    if family in ENCODERS:
        model_type, arch, kwargs = ENCODERS[family]
    elif family in VARIANTS:
        model_type, arch, kwargs = VARIANTS[family]
    else:
        model_type, (arch, kwargs) = family, FAMILIES[family]
    cfg = transformers.AutoConfig.for_model(model_type, **kwargs)
    cfg._attn_implementation = ATTENTION.get(family, "eager")
    model = getattr(transformers, arch)(cfg).eval().to(torch.float32)
    randomise(model, seed)
    path = OUT / family
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    (path / "generation_config.json").unlink(missing_ok=True)
    ref = encoder_reference(model, family, cfg.vocab_size, seed) if family in ENCODERS else \
        reference(model, cfg.vocab_size, seed)
    np.savez(path / "reference.npz", **ref)
    print(f"{family}: {sum(p.numel() for p in model.parameters())} params -> {path}")


def make_multimodal(name: str, seed: int = 0) -> None:
    import torch
    import transformers

    model_type, arch, text, top = MULTIMODAL[name]
    vocab = text["vocab_size"]
    image_token = int(np.random.default_rng(seed).integers(0, vocab, (2, SEQ))[0, 2])
    cfg = transformers.AutoConfig.for_model(model_type, text_config=text,
                                            image_token_index=image_token, **top)
    cfg._attn_implementation = "eager"
    model = getattr(transformers, arch)(cfg).eval().to(torch.float32)
    assert model.model.language_model.config._attn_implementation == "eager"
    randomise(model, seed)
    path = OUT / name
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    (path / "generation_config.json").unlink(missing_ok=True)
    ref = reference(model, vocab, seed)
    assert image_token in ref["input_ids"]
    with torch.no_grad():  # the processor's token_type_ids (0: text) change nothing
        ids, mask = torch.tensor(ref["input_ids"]), torch.tensor(ref["attention_mask"])
        typed = model(input_ids=ids, attention_mask=mask, token_type_ids=0 * ids).logits
    assert np.array_equal(typed.numpy(), ref["logits"])
    np.savez(path / "reference.npz", **ref)
    text_params = sum(p.numel() for p in model.model.language_model.parameters())
    print(f"{name}: {text_params} of {sum(p.numel() for p in model.parameters())} params "
          f"in the text model -> {path}")


if __name__ == "__main__":
    for fam in sys.argv[1:] or [*FAMILIES, *VARIANTS, *ENCODERS, *MULTIMODAL]:
        make_multimodal(fam) if fam in MULTIMODAL else make(fam)
