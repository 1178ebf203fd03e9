"""Tiny random checkpoints of the newer encoder and encoder-decoder families, with reference
logits from transformers (float32, eager attention). The shared helpers (re-randomising every
stored tensor, the sequence lengths, end padding) come from tools/make_fixtures.py.

Each fixture switches its family's distinctive features on so that a dropped one shows:
ELECTRA's embedding projection (embedding_size != hidden_size), Marian's and Pegasus's
sinusoidal positions (not stored) and a random `final_logits_bias`, and so on.

    python tools/make_encoder_fixtures.py [FAMILY ...]      # default: every family
"""

# ruff: noqa: C408  (model configs read best as keyword arguments, as transformers writes them)
from __future__ import annotations

import sys

import numpy as np
from make_fixtures import COMMON, OUT, PAD, PREFILL, SEQ, TGT, randomise

SEQ2SEQ = dict(vocab_size=96, d_model=32, encoder_layers=2, decoder_layers=2,
               encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
               decoder_ffn_dim=48, max_position_embeddings=64, pad_token_id=1,
               decoder_start_token_id=2, forced_eos_token_id=None)

FAMILIES: dict[str, tuple[str, str, dict]] = {  # fixture -> (model_type, class, config)
    "xlm-roberta": ("xlm-roberta", "XLMRobertaForMaskedLM", dict(
        COMMON, max_position_embeddings=66, pad_token_id=1, type_vocab_size=1)),
    "electra": ("electra", "ElectraForMaskedLM", dict(
        COMMON, embedding_size=16, type_vocab_size=2, hidden_act="gelu")),
    "electra_discriminator": ("electra", "ElectraForPreTraining", dict(
        COMMON, embedding_size=24, type_vocab_size=2, hidden_act="gelu_new")),
    "distilbert": ("distilbert", "DistilBertForMaskedLM", dict(
        vocab_size=96, dim=32, n_layers=2, n_heads=4, hidden_dim=48,
        max_position_embeddings=64, activation="gelu")),
    "marian": ("marian", "MarianMTModel", dict(
        SEQ2SEQ, activation_function="swish", scale_embedding=True, decoder_vocab_size=96,
        share_encoder_decoder_embeddings=True)),
    # separate source and target vocabularies, the head tied to the decoder's embedding or not
    "marian_separate_vocab": ("marian", "MarianMTModel", dict(
        SEQ2SEQ, activation_function="swish", scale_embedding=True, decoder_vocab_size=112,
        share_encoder_decoder_embeddings=False)),
    "marian_untied": ("marian", "MarianMTModel", dict(
        SEQ2SEQ, activation_function="swish", scale_embedding=True, decoder_vocab_size=80,
        share_encoder_decoder_embeddings=False, tie_word_embeddings=False)),
    "marian_shared_untied": ("marian", "MarianMTModel", dict(  # transformers 5 unties it all
        SEQ2SEQ, activation_function="swish", scale_embedding=True, decoder_vocab_size=96,
        share_encoder_decoder_embeddings=True, tie_word_embeddings=False)),
    "pegasus": ("pegasus", "PegasusForConditionalGeneration", dict(
        SEQ2SEQ, activation_function="relu", scale_embedding=True)),
    "mbart": ("mbart", "MBartForConditionalGeneration", dict(
        SEQ2SEQ, activation_function="gelu", scale_embedding=True)),
    "mt5": ("mt5", "MT5ForConditionalGeneration", dict(
        vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0)),
    "modernbert": ("modernbert", "ModernBertForMaskedLM", dict(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
        num_attention_heads=4, max_position_embeddings=64, local_attention=4,
        pad_token_id=1, bos_token_id=2, eos_token_id=0, cls_token_id=2, sep_token_id=0,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 160000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10.0}})),
    "deberta-v2": ("deberta-v2", "DebertaV2ForMaskedLM", dict(
        COMMON, relative_attention=True, position_buckets=4, max_relative_positions=16,
        pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm", share_att_key=True,
        position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7, pad_token_id=0)),
    # the other switches: separate position projections, absolute positions, token types
    "deberta_v2_unshared": ("deberta-v2", "DebertaV2Model", dict(
        COMMON, relative_attention=True, position_buckets=6, max_relative_positions=12,
        pos_att_type=["c2p"], norm_rel_ebd="none", share_att_key=False,
        position_biased_input=True, type_vocab_size=2, embedding_size=24, pad_token_id=0)),
    # deberta-v2-xlarge's convolution layer after the first layer (grouped here, to show the
    # block-diagonal weight), three layers so that later ones read its output
    "deberta_v2_conv": ("deberta-v2", "DebertaV2ForMaskedLM", dict(
        COMMON, num_hidden_layers=3, relative_attention=True, position_buckets=4,
        max_relative_positions=16, pos_att_type="p2c|c2p", norm_rel_ebd="layer_norm",
        share_att_key=True, position_biased_input=False, type_vocab_size=0, pad_token_id=0,
        conv_kernel_size=3, conv_act="gelu", conv_groups=2)),
    # global layers that follow no every-n pattern, written out as `layer_types`
    "modernbert_layer_types": ("modernbert", "ModernBertForMaskedLM", dict(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=5,
        num_attention_heads=4, max_position_embeddings=64, local_attention=4,
        pad_token_id=1, bos_token_id=2, eos_token_id=0, cls_token_id=2, sep_token_id=0,
        layer_types=["sliding_attention", "full_attention", "full_attention",
                     "sliding_attention", "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 160000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10.0}})),
}
PAD_ID = {"xlm-roberta": 1, "marian": 1, "pegasus": 1, "mbart": 1,
          "modernbert": 1, "modernbert_layer_types": 1, "marian_separate_vocab": 1,
          "marian_untied": 1, "marian_shared_untied": 1}  # padding ids (positions)


def restore_derived(model) -> None:
    """Sinusoidal position tables are derived, not stored: put back what `randomise` moved."""
    import torch

    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "create_weight"):
                m.weight.copy_(m.create_weight())


def reference(model, name: str, vocab: int, seed: int) -> dict[str, np.ndarray]:
    import torch

    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, (2, SEQ))
    mask = np.ones((2, SEQ), np.int64)
    mask[1, -PAD:] = 0
    if name in PAD_ID:
        ids[mask == 0] = PAD_ID[name]
    feeds = {"input_ids": ids, "attention_mask": mask}
    if name in ("electra", "electra_discriminator", "deberta_v2_unshared"):
        feeds["token_type_ids"] = (np.arange(SEQ)[None] >= 4).astype(np.int64).repeat(2, 0)
    out: dict[str, np.ndarray] = dict(feeds)
    t = {k: torch.tensor(v) for k, v in feeds.items()}
    with torch.no_grad():
        if not model.config.is_encoder_decoder:
            res = model(**t)  # a bare `...Model` gives its hidden states
            key = "logits" if hasattr(res, "logits") else "last_hidden_state"
            out[key] = getattr(res, key).numpy()
            return out
        target = getattr(model.config, "decoder_vocab_size", None) or vocab  # Marian's own
        dec = rng.integers(3, target, (2, TGT))
        dmask = np.ones((2, TGT), np.int64)
        dmask[1, -2:] = 0
        out.update(decoder_input_ids=dec, decoder_attention_mask=dmask)
        td, tdm = torch.tensor(dec), torch.tensor(dmask)
        out["logits"] = model(**t, decoder_input_ids=td, decoder_attention_mask=tdm).logits.numpy()
        enc = model.get_encoder()(**t)
        kw = dict(encoder_outputs=enc, attention_mask=t["attention_mask"], use_cache=True)
        step = model(**kw, decoder_input_ids=td[:, :PREFILL - 1],
                     decoder_attention_mask=tdm[:, :PREFILL - 1])
        steps, past = [step.logits.numpy()], step.past_key_values
        for i in range(PREFILL - 1, TGT):
            step = model(**kw, decoder_input_ids=td[:, i:i + 1],
                         decoder_attention_mask=tdm[:, :i + 1], past_key_values=past)
            steps.append(step.logits.numpy())
            past = step.past_key_values
        out["incremental_logits"] = np.concatenate(steps, axis=1)
        out["prefill"] = np.array(PREFILL - 1)
    return out


def make(name: str, seed: int = 0) -> None:
    import torch
    import transformers

    model_type, arch, kwargs = FAMILIES[name]
    cfg = transformers.AutoConfig.for_model(model_type, **kwargs)
    cfg._attn_implementation = "eager"
    model = getattr(transformers, arch)(cfg).eval().to(torch.float32)
    randomise(model, seed)
    restore_derived(model)
    path = OUT / name
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    (path / "generation_config.json").unlink(missing_ok=True)
    np.savez(path / "reference.npz", **reference(model, name, cfg.vocab_size, seed))
    print(f"{name}: {sum(p.numel() for p in model.parameters())} params -> {path}")


if __name__ == "__main__":
    for fam in sys.argv[1:] or FAMILIES:
        make(fam)
