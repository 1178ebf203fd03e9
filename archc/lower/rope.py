"""Rotary position embeddings: the `rope(...)` config and its frequency schedules.

`rope(theta, fraction, dim, interleaved, scaling = ...)` describes how `rotary` turns positions
into angles (angle = position * inv_freq[i], i < rot/2) and how much it scales cos and sin:

- `default`: inv_freq[i] = theta^(-2i/rot) (Su et al., 2021).
- `linear`: inv_freq / factor (position interpolation, Chen et al., 2023).
- `llama3`: Llama 3.1's bands: wavelengths above original_max/low_freq_factor are divided by
  factor, below original_max/high_freq_factor kept, and those between interpolated smoothly.
- `yarn`: YaRN (Peng et al., 2023): a ramp between interpolated and extrapolated frequencies over
  the dims whose rotation counts fall between beta_fast and beta_slow, and cos/sin scaled by the
  attention factor (0.1 ln(factor) + 1 unless given; DeepSeek's mscale/mscale_all_dim ratio).
- `dynamic`: dynamic NTK: when the current length L = (largest position + 1) exceeds max_pos,
  theta becomes theta * (factor L / max_pos - (factor - 1))^(rot / (rot - 2)). L is the current
  call's (past + new tokens); transformers keeps the largest L seen in a session instead, which
  differs only for a later, shorter call that is still longer than max_pos.
- `longrope`: Phi-3's LongRoPE: per-dim factors, `short_factor` up to original_max tokens and
  `long_factor` past it (chosen from L at run time), cos/sin scaled by
  sqrt(1 + ln(factor) / ln(original_max)) unless `attention_factor` is given.

The frequency arithmetic follows transformers' `modeling_rope_utils` in float32, so imported
checkpoints match.
"""

from __future__ import annotations

import math

import numpy as np

from archc.lower.layers import layer
from archc.lower.signature import Arg, Rope

SCALINGS = ("default", "linear", "llama3", "yarn", "dynamic", "longrope")


@layer("rope", 0, Arg("theta", "float", 10000.0), Arg("fraction", "float", 1.0),
       Arg("dim", "int", None), Arg("interleaved", "bool", False),
       Arg("scaling", "enum", "default", SCALINGS), Arg("factor", "float", 1.0),
       Arg("original_max", "int", 0), Arg("max_pos", "int", 0),
       Arg("low_freq_factor", "float", 1.0), Arg("high_freq_factor", "float", 4.0),
       Arg("beta_fast", "float", 32.0), Arg("beta_slow", "float", 1.0),
       Arg("attention_factor", "float", None), Arg("mscale", "float", 0.0),
       Arg("mscale_all_dim", "float", 0.0), Arg("truncate", "bool", True),
       Arg("short_factor", "list", ()), Arg("long_factor", "list", ()), owns=False,
       doc="a rotary-embedding config for attention(..., rope = rope(...))")
def rope(b, theta, fraction, dim, interleaved, scaling, factor, original_max, max_pos,
         low_freq_factor, high_freq_factor, beta_fast, beta_slow, attention_factor, mscale,
         mscale_all_dim, truncate, short_factor, long_factor):
    need = {"llama3": ("original_max",), "yarn": ("original_max",), "dynamic": ("max_pos",),
            "longrope": ("original_max", "short_factor", "long_factor")}.get(scaling, ())
    for name in need:
        if not locals()[name]:
            b.fail("E0103", f"`rope(scaling = {scaling})` needs `{name}`", "here",
                   span=b.at("scaling"))
    if factor <= 0 or theta <= 0:
        b.fail("E0200", "`theta` and `factor` must be positive", "here")
    least = {"llama3": 1, "yarn": 1, "longrope": 2}.get(scaling)  # longrope divides by its log
    if least and original_max < least:
        b.fail("E0200", f"`original_max` = {original_max} must be at least {least}", "here",
               span=b.at("original_max"))
    if scaling == "dynamic" and max_pos < 1:
        b.fail("E0200", f"`max_pos` = {max_pos} must be positive", "here", span=b.at("max_pos"))
    if scaling == "llama3" and not 0 < low_freq_factor < high_freq_factor:
        b.fail("E0200", f"llama3 needs 0 < `low_freq_factor` < `high_freq_factor`, got "
               f"{low_freq_factor} and {high_freq_factor}", "here")
    for name, values in (("short_factor", short_factor), ("long_factor", long_factor)):
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            b.fail("E0104", f"`{name}` must be a list of numbers", "here", span=b.at(name))
    return Rope(theta, fraction, dim, interleaved, scaling, factor, original_max, max_pos,
                low_freq_factor, high_freq_factor, beta_fast, beta_slow, attention_factor,
                mscale, mscale_all_dim, truncate, tuple(map(float, short_factor)),
                tuple(map(float, long_factor)))


def base_inv_freq(theta, dim: int) -> np.ndarray:
    """1 / theta^(2i/dim), i < dim/2, in float32 as transformers computes it."""
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    return (np.float32(1.0) / (np.float32(theta) ** exponent)).astype(np.float32)


def inv_freq(r: Rope, dim: int, long: bool = False) -> np.ndarray:
    """The static frequencies of `r` for `dim` rotary dims (longrope: its short or long set)."""
    f = base_inv_freq(r.theta, dim)
    if r.scaling == "linear":
        return (f / np.float32(r.factor)).astype(np.float32)
    if r.scaling == "llama3":
        return _llama3(r, f)
    if r.scaling == "yarn":
        return _yarn(r, dim)
    if r.scaling == "longrope":
        ext = np.asarray(r.long_factor if long else r.short_factor, np.float32)
        exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
        return (np.float32(1.0) / (ext * np.float32(r.theta) ** exponent)).astype(np.float32)
    return f


def _llama3(r: Rope, f: np.ndarray) -> np.ndarray:
    low_wavelen = r.original_max / r.low_freq_factor
    high_wavelen = r.original_max / r.high_freq_factor
    wavelen = np.float32(2 * math.pi) / f
    scaled = np.where(wavelen > low_wavelen, f / np.float32(r.factor), f).astype(np.float32)
    smooth = ((np.float32(r.original_max) / wavelen - np.float32(r.low_freq_factor))
              / np.float32(r.high_freq_factor - r.low_freq_factor)).astype(np.float32)
    smoothed = (1 - smooth) * scaled / np.float32(r.factor) + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def _yarn(r: Rope, dim: int) -> np.ndarray:
    def correction_dim(rotations):  # the dim that turns `rotations` times over original_max
        turns = r.original_max / (rotations * 2 * math.pi)
        return (dim * math.log(turns)) / (2 * math.log(r.theta))

    low, high = correction_dim(r.beta_fast), correction_dim(r.beta_slow)
    if r.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as transformers: avoid a zero-width ramp
    pos_freqs = np.float32(r.theta) ** (np.arange(0, dim, 2).astype(np.float32) / np.float32(dim))
    extrapolation = np.float32(1.0) / pos_freqs
    interpolation = np.float32(1.0) / (np.float32(r.factor) * pos_freqs)
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - np.float32(low))
                   / np.float32(high - low), 0, 1).astype(np.float32)
    keep = (1 - ramp).astype(np.float32)  # the share of extrapolation
    return (interpolation * (1 - keep) + extrapolation * keep).astype(np.float32)


def attention_factor(r: Rope) -> float:
    """How much cos and sin are scaled (YaRN and LongRoPE; 1 otherwise)."""
    if r.attention_factor is not None:
        return r.attention_factor
    if r.scaling == "yarn":
        def mscale(scale, m=1.0):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0
        if r.mscale and r.mscale_all_dim:
            return float(mscale(r.factor, r.mscale) / mscale(r.factor, r.mscale_all_dim))
        return mscale(r.factor)
    if r.scaling == "longrope":
        return 1.0 if r.factor <= 1.0 else math.sqrt(1 + math.log(r.factor) /
                                                      math.log(r.original_max))
    return 1.0


__all__ = ["SCALINGS", "Rope", "attention_factor", "base_inv_freq", "inv_freq"]
