"""RoPE scaling schedules against float64 formulas written from their papers (and checked once
against transformers' `modeling_rope_utils`: every schedule within 1 float32 ulp), and the
length-dependent ones (dynamic NTK, LongRoPE) picking their frequencies at run time on both
backends."""

from __future__ import annotations

import math

import numpy as np
import pytest

import archc
from archc.lower.rope import attention_factor, inv_freq
from archc.lower.signature import Rope

DIM, THETA = 64, 500000.0
BASE = 1 / THETA ** (np.arange(0, DIM, 2) / DIM)  # float64: theta^(-2i/d)
SHORT, LONG = tuple(np.linspace(1, 2, 32)), tuple(np.linspace(1, 8, 32))


def _llama3(factor=8.0, low=1.0, high=4.0, orig=1024):
    wavelen = 2 * math.pi / BASE
    smooth = (orig / wavelen - low) / (high - low)
    out = np.where(wavelen > orig / low, BASE / factor, BASE)
    mid = (wavelen >= orig / high) & (wavelen <= orig / low)
    return np.where(mid, (1 - smooth) * BASE / factor + smooth * BASE, out)


def _yarn(factor=4.0, orig=1024, fast=32, slow=1):
    def dim_of(rot):
        return DIM * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(THETA))
    lo, hi = max(math.floor(dim_of(fast)), 0), min(math.ceil(dim_of(slow)), DIM - 1)
    ramp = np.clip((np.arange(DIM // 2) - lo) / (hi - lo), 0, 1)
    return BASE / factor * ramp + BASE * (1 - ramp)


@pytest.mark.parametrize("rope, ref, scale", [
    (Rope(THETA, scaling="linear", factor=4.0), BASE / 4, 1.0),
    (Rope(THETA, scaling="llama3", factor=8.0, original_max=1024), _llama3(), 1.0),
    (Rope(THETA, scaling="yarn", factor=4.0, original_max=1024), _yarn(),
     0.1 * math.log(4) + 1),
    (Rope(THETA, scaling="longrope", factor=4.0, original_max=1024, short_factor=SHORT,
          long_factor=LONG), BASE / np.array(SHORT), math.sqrt(1 + math.log(4) / math.log(1024))),
], ids=["linear", "llama3", "yarn", "longrope"])
def test_schedules_match_their_formulas(rope, ref, scale):
    np.testing.assert_allclose(inv_freq(rope, DIM), ref, rtol=2e-6)
    assert attention_factor(rope) == pytest.approx(scale)


def _rotated(rope: str, seq: int) -> np.ndarray:
    src = f"""
    model m {{
      input input_ids: int64[batch, seq]
      input q: float32[batch, 2, seq, 8]
      output y = rotary(q, positions(input_ids), {rope})
    }}"""
    g = archc.compile(archc.parse(src))
    q = np.ones((1, 2, seq, 8), np.float32)
    ids = np.zeros((1, seq), np.int64)
    outs = [archc.run(g, {"input_ids": ids, "q": q}, backend=b)["y"] for b in
            ("numpy", "onnxruntime")]
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)
    return outs[0]


def _rope_ref(freq: np.ndarray, seq: int, scale: float = 1.0) -> np.ndarray:
    ang = np.arange(seq)[:, None] * freq[None, :]  # rotate-half of a ones vector
    cos, sin = np.cos(ang), np.sin(ang)
    return np.concatenate([cos - sin, sin + cos], -1) * scale


def test_dynamic_ntk_stretches_theta_past_max_pos_only():
    base = 1 / 100.0 ** (np.arange(0, 8, 2) / 8)
    short = _rotated("rope(theta = 100, scaling = dynamic, factor = 2, max_pos = 6)", 6)
    np.testing.assert_allclose(short[0, 0], _rope_ref(base, 6), atol=1e-5)
    long = _rotated("rope(theta = 100, scaling = dynamic, factor = 2, max_pos = 6)", 9)
    theta = 100.0 * (2 * 9 / 6 - 1) ** (8 / 6)
    np.testing.assert_allclose(long[0, 0], _rope_ref(1 / theta ** (np.arange(0, 8, 2) / 8), 9),
                               atol=1e-5)


def test_longrope_switches_to_long_factors_past_original_max():
    spec = ("rope(theta = 100, scaling = longrope, factor = 2, original_max = 6, "
            "short_factor = [1, 1, 2, 2], long_factor = [1, 2, 4, 8])")
    base = 1 / 100.0 ** (np.arange(0, 8, 2) / 8)
    scale = math.sqrt(1 + math.log(2) / math.log(6))
    np.testing.assert_allclose(_rotated(spec, 6)[0, 0],
                               _rope_ref(base / [1, 1, 2, 2], 6, scale), atol=1e-5)
    np.testing.assert_allclose(_rotated(spec, 7)[0, 0],
                               _rope_ref(base / [1, 2, 4, 8], 7, scale), atol=1e-5)


def test_scaling_options_are_checked():
    with pytest.raises(archc.ArchcError, match="needs `original_max`"):
        _rotated("rope(scaling = llama3, factor = 8)", 4)
