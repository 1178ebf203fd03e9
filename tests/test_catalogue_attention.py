"""The attention catalogue (archc/stdlib/sparse_attention.arch, docs/catalogue/attention.md):
each layer against NumPy written straight from its paper's equations (not through archc's IR)
on both backends, its edge cases, decoding with a constant-size state, exact `stats`, and the
NumPy `sdpa` kernels (plain, chunked, flash) against each other and in memory."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from conftest import ROOT, perturbed_params
from test_ops import _check_against_onnxruntime

import archc
from archc.backends.numpy_interp import run_graph
from archc.diagnostics import ArchcError
from archc.kvcache import Session
from archc.lower import lower
from archc.lower.cat_sparse import bigbird_table, orthogonal_gaussian
from archc.ops.fused import LOWEST, attention_kernel, attention_kernel_as, sdpa
from archc.stats import param_stats

SPECS = ROOT / "specs"
BACKENDS = ("numpy", "onnxruntime")
rng = np.random.default_rng(11)

# tests/test_ops.py checks that every op has a case somewhere; these run below.
OP_CASES = {
    "dilated_band_mask": [([np.arange(9), np.arange(9)], {"radius": 2, "dilation": (1, 2, 3)}),
                          ([np.arange(3, 8), np.arange(8)], {"radius": 1, "dilation": (2,)})],
}


@pytest.mark.parametrize("op", sorted(OP_CASES))
def test_op_kernels_match_onnxruntime(op):
    for arrays, attrs in OP_CASES[op]:
        _check_against_onnxruntime(op, arrays, attrs)


# ---------------------------------------------------------------- helpers
def _graph(call: str, seq="seq", d=16):
    src = (f"model t {{\n  input x: float32[batch, {seq}, {d}]\n"
           f"  input attention_mask: int64[batch, {seq}]\n"
           f"  input global_attention_mask: int64[batch, {seq}]\n"
           f"  output y = {call}\n}}\n")
    return archc.compile(archc.parse(src, "t.arch"))


def _run(g, x, mask, glob=None, weights=None):
    """Both backends agree within 1e-5; returns the weights and the NumPy result."""
    w = weights or perturbed_params(g, seed=5)
    feeds = {"x": x, "attention_mask": mask,
             "global_attention_mask": np.zeros_like(mask) if glob is None else glob}
    outs = [archc.run(g, feeds, w, backend=b)["y"] for b in BACKENDS]
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    return w, outs[0]


def _inputs(b, t, d=16, pad=2):
    x = rng.standard_normal((b, t, d)).astype(np.float32)
    mask = np.ones((b, t), np.int64)
    mask[-1, t - pad:] = 0  # the last row ends in padding
    return x, mask


def _heads(x, w, name, heads):  # [B, T, d] -> [B, H, T, hd], float64
    y = x.astype(np.float64) @ w[f"attn.{name}.weight"] + w[f"attn.{name}.bias"]
    b, t, d = y.shape
    return y.reshape(b, t, heads, d // heads).transpose(0, 2, 1, 3)


def _softmax_attention(q, k, v, keep):  # keep [B|1, H|1, Tq, Tk]; every row keeps a key
    s = np.where(keep, q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1]), -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def _project_out(out, w):  # [B, H, T, hd] -> [B, T, d]
    b, h, t, hd = out.shape
    return out.transpose(0, 2, 1, 3).reshape(b, t, h * hd) @ w["attn.o.weight"] + \
        w["attn.o.bias"]


# ---------------------------------------------------------------- Longformer
def _longformer_ref(x, mask, glob, w, heads, window, dilation, shared):
    """Beltagy et al. 2020: query i of head h sees key j when |j - i| <= (w/2) d_h and d_h
    divides j - i, plus every global token; a global token sees every token (through the
    local projections in the paper, through q/k/v_global in Hugging Face's model)."""
    q, k, v = (_heads(x, w, n, heads) for n in "qkv")
    t = x.shape[1]
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    d = np.asarray(dilation).reshape(-1, 1, 1)
    keep = (np.abs(j - i) <= (window // 2) * d) & ((j - i) % d == 0)  # [H, T, T]
    g, real = glob.astype(bool), mask.astype(bool)
    keep = keep[None] | g[:, None, None, :]
    if shared:
        keep = keep | g[:, None, :, None]
    out = _softmax_attention(q, k, v, keep & real[:, None, None, :])
    if not shared:
        qg, kg, vg = (_heads(x, w, f"{n}_global", heads) for n in "qkv")
        full = _softmax_attention(qg, kg, vg, real[:, None, None, :])
        out = np.where(g[:, None, :, None], full, out)
    return _project_out(out, w)


@pytest.mark.parametrize("dilation,shared,window,last_global", [
    ([1, 2], True, 4, False), ([1, 3], False, 4, True), ([2, 1], True, 64, True),
    (1, True, 2, True)], ids=["dilated-shared", "dilated-hf", "window>seq-shared", "band"])
def test_longformer_matches_the_paper(dilation, shared, window, last_global):
    dil = f"dilation = {list(dilation)}, " if isinstance(dilation, list) else ""
    g = _graph(f"longformer_attention(x, 2, {window}, {dil}global_mask = global_attention_mask, "
               f"mask = attention_mask, shared_global = {str(shared).lower()}) as attn")
    x, mask = _inputs(2, 9)
    glob = np.zeros_like(mask)
    glob[0, 1] = 1
    glob[:, 6 if last_global else 3] = 1  # row 0: two global tokens, one at the last real spot
    if last_global:
        glob[0, 8] = 1
    w, got = _run(g, x, mask, glob)
    heads_dil = dilation if isinstance(dilation, list) else [dilation] * 2
    ref = _longformer_ref(x, mask, glob, w, 2, window, heads_dil, shared)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)


def test_plain_longformer_window_is_the_library_attention():
    call = "(x, 2, window = 4, global_mask = global_attention_mask, mask = attention_mask) as a"
    ours, lib = _graph("longformer_attention" + call), _graph("attention" + call)
    assert archc.print_graph(ours) == archc.print_graph(lib)


def test_longformer_dilation_needs_one_entry_per_head():
    with pytest.raises(ArchcError, match=r"`dilation` needs one entry per head \(2\)"):
        _graph("longformer_attention(x, 2, 4, dilation = [1, 2, 3], shared_global) as attn")


# ---------------------------------------------------------------- BigBird
def _bigbird_ref(x, mask, w, heads, bs, g, win, rand, seed):
    """Zaheer et al. 2020, ITC: blocks of bs tokens; a query in a global block (the first and
    last g) sees every token; any other query block sees the global blocks, the `win` blocks
    around it and its random blocks. Keys past the sequence (block padding) do not exist."""
    q, k, v = (_heads(x, w, n, heads) for n in "qkv")
    t = x.shape[1]
    n = -(-t // bs)
    globals_ = set(range(g)) | set(range(n - g, n))
    keep = np.zeros((heads, t, t), bool)
    if n > 2 * g:
        blocks, slots = bigbird_table(t, bs, heads, win, g, rand, seed)
        first_random = 2 * g + win
    for h in range(heads):
        for i in range(t):
            bi = i // bs
            if bi in globals_:
                keep[h, i] = True
                continue
            row = bi - g
            randoms = {int(blocks[h, row, s]) for s in range(first_random, blocks.shape[2])
                       if slots[h, row, s * bs]}
            seen = globals_ | set(range(bi - win // 2, bi + win // 2 + 1)) | randoms
            keep[h, i] = np.isin(np.arange(t) // bs, sorted(seen))
    out = _softmax_attention(q, k, v, keep[None] & mask.astype(bool)[:, None, None, :])
    return _project_out(out, w)


@pytest.mark.parametrize("t,bs,rand", [(30, 4, 2), (32, 4, 3), (6, 8, 1), (12, 4, 2)],
                         ids=["padded", "whole-blocks", "one-block", "no-random-room"])
def test_bigbird_matches_the_paper(t, bs, rand):
    g = _graph(f"bigbird_attention(x, 2, block_size = {bs}, random = {rand}, seed = 5, "
               "mask = attention_mask) as attn", seq=t)
    x, mask = _inputs(2, t, pad=3)
    w, got = _run(g, x, mask)
    ref = _bigbird_ref(x, mask, w, 2, bs, 1, 3, rand, 5)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)


def test_bigbird_computes_only_the_kept_blocks():
    g = _graph("bigbird_attention(x, 2, block_size = 4, random = 2, seed = 5) as attn", seq=64)
    scores = {n.type.shape for n in g.nodes() if n.op == "matmul" and
              n.inputs[1].op == "transpose" and n.inputs[1].attrs["perm"] == (0, 1, 3, 2)}
    assert scores == {("batch", 2 * 14, 4, 7 * 4),  # 14 local blocks x 7 key blocks of 4
                      ("batch", 2, 2 * 4, 64)}  # the 2 global blocks see all 64 keys


def test_bigbird_random_blocks_are_seeded_distinct_and_outside_the_window():
    blocks, keep = bigbird_table(100, 4, 3, 3, 1, 3, seed=9)
    again, _ = bigbird_table(100, 4, 3, 3, 1, 3, seed=9)
    other, _ = bigbird_table(100, 4, 3, 3, 1, 3, seed=10)
    assert (blocks == again).all() and (blocks != other).any()
    rand = blocks[:, :, 5:]  # slots: 2 global, 3 window, 3 random
    for h in range(3):
        for row in range(blocks.shape[1]):
            i = row + 1
            picked = set(rand[h, row].tolist())
            assert len(picked) == 3 and not picked & {0, 24, i - 1, i, i + 1}
    assert (rand != rand[:1]).any()  # drawn per head
    blocks, keep = bigbird_table(30, 4, 1, 3, 1, 2, seed=9)  # 8 blocks, the last 2 keys pads
    assert keep.shape == (1, 6, 7 * 4) and (blocks[0, :, 1] == 7).all()  # slot 1: last block
    assert keep[0, :, 4:6].all() and not keep[0, :, 6:8].any()


def test_bigbird_needs_a_static_length():
    with pytest.raises(ArchcError, match="the sequence length must be a static positive "
                                         "integer, not the symbolic dim `seq`") as e:
        _graph("bigbird_attention(x, 2, block_size = 4) as attn")
    assert str(e.value).count("error[") == 1


# ---------------------------------------------------------------- linear attention
def _elu1(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0))) + 1


def _kernel_ref(qf, kf, v, mask, causal, eps):
    """Katharopoulos et al. 2020, eq. 4 and 9: V'_i = phi(Q_i)^T S_i / (phi(Q_i)^T Z_i),
    S_i = sum_j phi(K_j) V_j^T, Z_i = sum_j phi(K_j), over j <= i when causal."""
    kf = kf * mask[:, None, :, None]
    out = np.zeros(qf.shape[:3] + v.shape[3:])
    for i in range(qf.shape[2]):
        upto = i + 1 if causal else kf.shape[2]
        s = np.einsum("bhjf,bhje->bhfe", kf[:, :, :upto], v[:, :, :upto])
        z = kf[:, :, :upto].sum(2)
        out[:, :, i] = np.einsum("bhf,bhfe->bhe", qf[:, :, i], s) / (
            np.einsum("bhf,bhf->bh", qf[:, :, i], z)[..., None] + eps)
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_linear_transformer_matches_the_paper(causal):
    flag = ", causal" if causal else ""
    g = _graph(f"linear_transformer_attention(x, 2{flag}, mask = attention_mask) as attn")
    x, mask = _inputs(2, 7)
    w, got = _run(g, x, mask)
    q, k, v = (_heads(x, w, n, 2) for n in "qkv")
    ref = _project_out(_kernel_ref(_elu1(q), _elu1(k), v, mask, causal, 1e-6), w)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)


def _favor(x, proj):
    """FAVOR+ (Choromanski et al. 2021, eq. 7 with h(x) = exp(-|x|^2/2), f = exp), on
    x / d^(1/4) so that E[phi(q) . phi(k)] = exp(q.k / sqrt(d))."""
    x = x / x.shape[-1] ** 0.25
    return np.exp(x @ proj.T.astype(np.float64) - (x * x).sum(-1, keepdims=True) / 2) / \
        math.sqrt(len(proj))


@pytest.mark.parametrize("causal", [False, True])
def test_performer_matches_the_paper(causal):
    flag = ", causal" if causal else ""
    g = _graph(f"performer_attention(x, 2, features = 12, seed = 3{flag}, "
               "mask = attention_mask) as attn")
    x, mask = _inputs(2, 7)
    w, got = _run(g, x, mask)
    proj = orthogonal_gaussian(12, 8, 3)
    q, k, v = (_heads(x, w, n, 2) for n in "qkv")
    ref = _project_out(_kernel_ref(_favor(q, proj), _favor(k, proj), v, mask, causal, 0), w)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)


def test_performer_features_are_orthogonal_seeded_constants_that_approximate_softmax():
    proj = orthogonal_gaussian(20, 8, 4)
    unit = proj / np.linalg.norm(proj, axis=1, keepdims=True)
    np.testing.assert_allclose(unit[:8] @ unit[:8].T, np.eye(8), atol=1e-5)  # one block
    assert (proj == orthogonal_gaussian(20, 8, 4)).all()
    assert (proj != orthogonal_gaussian(20, 8, 5)).any()
    src = "performer_attention(x, 2, features = {}, seed = {}) as attn"
    g7, g8 = _graph(src.format(16, 7)), _graph(src.format(16, 8))
    assert set(g7.params) == {f"attn.{n}.{p}" for n in "qkvo" for p in ("weight", "bias")}
    x, mask = _inputs(1, 6, pad=0)
    w, a = _run(g7, x, mask)
    _, b = _run(g8, x, mask, weights=w)
    assert np.abs(a - b).max() > 1e-3  # a new seed redraws the features
    many, exact = _graph(src.format(4096, 1)), _graph("attention(x, 2) as attn")
    _, approx = _run(many, x * 0.3, mask, weights=w)
    _, soft = _run(exact, x * 0.3, mask, weights=w)
    assert np.abs(approx - soft).max() < 0.05 * np.abs(soft).max()


# ---------------------------------------------------------------- decoding with a state
@pytest.mark.parametrize("layer", ["linear_transformer", "performer"])
def test_causal_linear_attention_decodes_with_a_constant_size_state(layer):
    text = (SPECS / "linear_transformer.arch").read_text()
    if layer == "performer":
        text = text.replace("linear_transformer_attention(layer_norm(x) as ln1, heads,",
                            "performer_attention(layer_norm(x) as ln1, heads, seed = 3,")
    module = archc.parse(text, f"{layer}.arch")
    full = archc.compile(module)
    cached = archc.optimize(lower(module, cache=True))
    assert [k for k in cached.outputs if k.startswith("present.")] == [
        "present.0.kv_sum", "present.0.k_sum", "present.1.kv_sum", "present.1.k_sum"]
    w = perturbed_params(full)
    ids = rng.integers(0, 256, (2, 9))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    ref = archc.run(full, {"input_ids": ids, "attention_mask": mask}, w)["logits"]
    for backend in BACKENDS:
        s = Session(cached, w, backend)
        got = [s.prefill(ids[:, :3], mask[:, :3])]
        for t in range(3, 9):
            got.append(s.step(ids[:, t:t + 1], mask[:, t:t + 1]))
            f = 16 if layer == "linear_transformer" else 64  # elu+1: hd; FAVOR+: 4 hd features
            assert s.past["past_key_values.1.kv_sum"].shape == (2, 4, f, 16)
            assert s.past["past_key_values.1.k_sum"].shape == (2, 4, f)
        np.testing.assert_allclose(np.concatenate(got, 1), ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- stats
def _encoder_params(vocab, d, layers, attn):
    per_layer = 2 * 2 * d + attn + (d * 4 * d + 4 * d + 4 * d * d + d)
    return vocab * d + layers * per_layer + 2 * d


@pytest.mark.parametrize("spec,expected", [
    ("longformer_full", _encoder_params(512, 64, 2, 4 * (64 * 64 + 64)) + 3 * (64 * 64 + 64)),
    ("bigbird_itc", _encoder_params(512, 64, 2, 4 * (64 * 64 + 64))),
    ("linear_transformer", _encoder_params(256, 64, 2, 4 * (64 * 64 + 64))),
    ("performer", _encoder_params(512, 64, 2, 4 * (64 * 64 + 64)))])
def test_stats_are_exact_and_count_no_random_features(spec, expected):
    g = archc.compile(SPECS / f"{spec}.arch")
    s = param_stats(g)
    assert s["parameters"] == s["active_per_token"] == expected
    assert s["kv_cache_bytes_per_token"]["float32"] == 0


# ---------------------------------------------------------------- the NumPy sdpa kernels
def _f(*s):
    return rng.standard_normal(s).astype(np.float32)


@pytest.mark.parametrize("tq,tk,causal,window,masked,cap", [
    (600, 600, True, 0, True, 0.0), (600, 600, True, 90, False, 2.0),
    (300, 520, False, 0, True, 0.0), (257, 257, False, 0, False, 0.0)])
def test_chunked_and_flash_equal_plain_attention(tq, tk, causal, window, masked, cap):
    q, k, v = _f(2, 4, tq, 16), _f(2, 2, tk, 16), _f(2, 2, tk, 8)
    bias = None
    if masked:  # padding; batch 0's first 5 keys are padding, so its first causal rows see none
        keep = rng.random((2, 1, 1, tk)) > 0.3
        keep[0, ..., :5] = False
        if causal:
            keep = keep & (np.arange(tk)[None, :] <= np.arange(tq)[:, None])
        bias = np.where(keep, 0, LOWEST).astype(np.float32)
    outs = {}
    for kind in ("plain", "chunked", "flash"):
        with attention_kernel_as(kind):
            outs[kind] = sdpa(q, k, v, bias, scale=0.3, softcap=cap, causal=causal,
                              window=window)
    for kind in ("chunked", "flash"):
        np.testing.assert_allclose(outs[kind], outs["plain"], atol=1e-5, rtol=0)


def test_the_kernel_is_chosen_per_run_or_by_environment(monkeypatch):
    g = archc.compile(SPECS / "longformer_full.arch", level=2)
    w = perturbed_params(g)
    ids = rng.integers(0, 512, (2, 9))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
             "global_attention_mask": (np.arange(9) == 8)[None].repeat(2, 0).astype(np.int64)}
    outs = {k: run_graph(g, feeds, w, attention=k)["logits"] for k in ("plain", "flash")}
    np.testing.assert_allclose(outs["flash"], outs["plain"], atol=1e-5, rtol=0)
    assert attention_kernel() == "chunked"
    monkeypatch.setenv("ARCHC_ATTENTION", "flash")
    assert attention_kernel() == "flash"
    with attention_kernel_as("plain"):
        assert attention_kernel() == "plain"
    monkeypatch.setenv("ARCHC_ATTENTION", "fast")
    with pytest.raises(ValueError, match="unknown attention kernel 'fast'"):
        attention_kernel()


def test_flash_and_chunked_peak_memory_is_linear_in_the_length():
    peaks = {}
    for t in (512, 1024):
        q, k, v = _f(1, 1, t, 32), _f(1, 1, t, 32), _f(1, 1, t, 32)
        for kind in ("plain", "chunked", "flash"):
            tracemalloc.start()
            with attention_kernel_as(kind):
                sdpa(q, k, v, scale=0.2, causal=True, block=128)
            peaks[kind, t] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    assert peaks["plain", 1024] > 3.5 * peaks["plain", 512]  # T^2
    for kind in ("chunked", "flash"):
        assert peaks[kind, 1024] < 2.5 * peaks[kind, 512]  # T
    assert peaks["flash", 1024] * 8 < peaks["plain", 1024]
