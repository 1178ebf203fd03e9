"""A tiny random BigBird checkpoint (`BigBirdForMaskedLM`, `attention_type = "block_sparse"`)
with reference logits from transformers, for tests/test_hf_big_bird.py.

transformers falls back to full attention (for good: it switches the model's attention type)
when the length is at most (5 + 2 * num_random_blocks) * block_size, so the fixture uses 12
blocks of 4 tokens with 2 random blocks (threshold 36 < 48), and checks that the model still
runs block-sparse after the forward pass. Row 1 is padded at the end. In eval mode this
transformers version draws no random blocks: every random slot names block 0.

    python tools/make_bigbird_fixture.py
"""

from __future__ import annotations

import numpy as np
from make_fixtures import COMMON, OUT, randomise

BLOCK, BLOCKS, RANDOM, PAD = 4, 12, 2, 7
CONFIG = dict(COMMON, max_position_embeddings=BLOCK * BLOCKS, attention_type="block_sparse",
              block_size=BLOCK, num_random_blocks=RANDOM, type_vocab_size=2, pad_token_id=0,
              hidden_act="gelu_new")


def make(seed: int = 0) -> None:
    import torch
    import transformers

    cfg = transformers.AutoConfig.for_model("big_bird", **CONFIG)
    model = transformers.BigBirdForMaskedLM(cfg).eval().to(torch.float32)
    randomise(model, seed)
    path = OUT / "big_bird"
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    (path / "generation_config.json").unlink(missing_ok=True)
    seq = BLOCK * BLOCKS
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, cfg.vocab_size, (2, seq))
    mask = np.ones((2, seq), np.int64)
    mask[1, -PAD:] = 0
    ids[mask == 0] = cfg.pad_token_id
    types = (np.arange(seq)[None] >= 10).astype(np.int64).repeat(2, 0)
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    with torch.no_grad():
        logits = model(**{k: torch.tensor(v) for k, v in feeds.items()}).logits.numpy()
    assert model.bert.attention_type == "block_sparse", "transformers fell back to full attention"
    np.savez(path / "reference.npz", **feeds, logits=logits)
    print(f"big_bird: {sum(p.numel() for p in model.parameters())} params -> {path}")


if __name__ == "__main__":
    make()
