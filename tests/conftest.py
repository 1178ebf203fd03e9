"""Shared test helpers: the golden-file switch and small model utilities."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
SPECS = sorted((ROOT / "specs").glob("*.arch"))
UPDATE = bool(os.environ.get("ARCHC_UPDATE_GOLDEN"))
# a one-layer GPT-2-style decoder, for the tests of hostile input and flags
TINY = """model tiny {
  let vocab = 50, d = 16, heads = 2, layers = 1, eps = 1e-5
  serving eos_token_id = 2, context_length = 12
  input input_ids: int64[batch, seq]
  input attention_mask: int64[batch, seq]
  x = embed(input_ids, vocab, d) as wte
  x = x + pos_embed(input_ids, 12, d) as wpe
  repeat layers as h {
    x = x + attention(layer_norm(x, eps) as ln_1, heads, causal, mask = attention_mask) as attn
  }
  output logits = lm_head(layer_norm(x, eps) as ln_f, vocab, tied = wte)
}
"""


def check_golden(path: Path, actual: str) -> None:
    """Compare with a golden file; ARCHC_UPDATE_GOLDEN=1 rewrites it instead."""
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(f"missing golden {path.relative_to(ROOT)}; run with ARCHC_UPDATE_GOLDEN=1")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        return
    assert actual == path.read_text(), f"{path.relative_to(ROOT)} differs (ARCHC_UPDATE_GOLDEN=1)"


def perturbed_params(graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded init with every norm scale and bias moved off 1/0, so a dropped bias or a
    misplaced norm changes the numbers."""
    import archc

    weights = archc.init_params(graph, seed)
    rng = np.random.default_rng(seed + 1)
    for name, w in weights.items():
        if w.ndim == 1:
            weights[name] = (w + rng.normal(0, 0.2, w.shape)).astype(np.float32)
    return weights
