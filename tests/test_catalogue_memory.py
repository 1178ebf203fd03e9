"""The memory and retrieval catalogue (archc/stdlib/memory_retrieval.arch) against NumPy written
straight from the papers, never through archc's IR: Transformer-XL and the Compressive
Transformer streamed segment by segment (Session on both backends, the CLI, onnxruntime on the
exported model), RETRO's chunked cross-attention, Fusion-in-Decoder; exact parameter counts."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import onnxruntime as ort
import pytest
from conftest import ROOT

import archc
from archc.cli import main, random_inputs
from archc.diagnostics import ArchcError
from archc.kvcache import Session, seq2seq_incremental_logits

SPECS = ROOT / "specs"
BACKENDS = ("numpy", "onnxruntime")
rng = np.random.default_rng(11)


# ---------------------------------------------------------------- shared formulas
def _ln(x, w, p, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * \
        w[p + ".weight"] + w[p + ".bias"]


def _rms(x, g, eps=1e-6):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g


def _softmax(a):
    return (e := np.exp(a - a.max(-1, keepdims=True))) / e.sum(-1, keepdims=True)


def _gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def _mlp(w, p, x):
    return _gelu(x @ w[p + ".fc.weight"] + w[p + ".fc.bias"]) @ w[p + ".proj.weight"] + \
        w[p + ".proj.bias"]


def _mha(w, p, xq, xkv, heads, keep=None, bias=0.0, scaled=True, biased=True):
    """softmax(q kᵀ/√hd + bias, masked) v W_o over any leading axes; keep broadcasts."""
    d = xq.shape[-1]
    hd = d // heads

    def proj(n, x):
        y = x @ w[f"{p}.{n}.weight"] + (w[f"{p}.{n}.bias"] if biased else 0)
        return np.swapaxes(y.reshape(*y.shape[:-1], heads, hd), -2, -3)

    s = proj("q", xq) @ np.swapaxes(proj("k", xkv), -1, -2) / (math.sqrt(hd) if scaled else 1)
    s = s + bias if keep is None else np.where(keep, s + bias, -np.inf)
    o = np.swapaxes(_softmax(s) @ proj("v", xkv), -2, -3)
    return o.reshape(*o.shape[:-2], d) @ w[p + ".o.weight"] + (w[p + ".o.bias"] if biased else 0)


def _perturbed(graph, seed):
    w = archc.init_params(graph, seed)
    r = np.random.default_rng(seed)
    return {k: (v + r.normal(0, 0.2, v.shape)).astype(np.float32)
            if v.ndim == 1 or k.startswith("r_") else v for k, v in w.items()}


# ---------------------------------------------------------------- Transformer-XL, Compressive
def _txl_attention(w, p, h, past, heads):
    """Dai et al. eq. for A^rel_ij = q_iᵀk_j + q_iᵀW_R R_{i-j} + uᵀk_j + vᵀW_R R_{i-j}, query i at
    context position M + i, keys j over [past ++ h], R_δ = [sin(δω), cos(δω)]."""
    b, t, d = h.shape
    hd = d // heads
    ctx = np.concatenate([past, h], 1)
    i, j = np.arange(t)[:, None] + past.shape[1], np.arange(ctx.shape[1])[None]
    delta = np.maximum(i - j, 0)[..., None] * (1 / 10000 ** (np.arange(0, d, 2) / d))
    wr = (np.concatenate([np.sin(delta), np.cos(delta)], -1) @ w[p + "attn.r.weight"])
    wr = wr.reshape(t, ctx.shape[1], heads, hd)

    def heads_of(x, n):
        return (x @ w[f"{p}attn.{n}.weight"]).reshape(b, x.shape[1], heads, hd)

    q, k, v = heads_of(h, "q"), heads_of(ctx, "k"), heads_of(ctx, "v")
    a = np.einsum("bihd,bjhd->bhij", q + w["r_w_bias"], k) + \
        np.einsum("bihd,ijhd->bhij", q + w["r_r_bias"], wr)
    a = _softmax(np.where(j <= i, a / math.sqrt(hd), -np.inf))
    return np.einsum("bhij,bjhd->bihd", a, v).reshape(b, t, d) @ w[p + "attn.o.weight"]


def _memory_reference(w, ids, cuts, mem, layers=2, heads=4, cmem=0, f_c=None):
    """Stream segments ids[:, cuts[s]:cuts[s+1]]. Per layer n: attend over [cm, m, h], then
    m <- last `mem` of [m, h]; the states pushed out go through f_c onto cm (last `cmem`)."""
    d = w["embed.weight"].shape[1]
    m = [np.zeros((len(ids), 0, d))] * layers
    cm = list(m)
    outs = []
    for a, b in itertools.pairwise(cuts):
        h = w["embed.weight"][ids[:, a:b]].astype(np.float64) * math.sqrt(d)
        for n in range(layers):
            p = f"layers.{n}."
            o = _ln(h + _txl_attention(w, p, h, np.concatenate([cm[n], m[n]], 1), heads), w,
                    p + "attn_norm")
            ff = np.maximum(o @ w[p + "ffn.fc.weight"] + w[p + "ffn.fc.bias"], 0)
            full = np.concatenate([m[n], h], 1)
            if f_c is not None:
                cm[n] = np.concatenate([cm[n], f_c(w, p, full[:, :max(0, full.shape[1] - mem)])],
                                       1)[:, -cmem:]
            m[n] = full[:, -mem:]
            h = _ln(o + ff @ w[p + "ffn.proj.weight"] + w[p + "ffn.proj.bias"], w, p + "ffn_norm")
        outs.append(h @ w["embed.weight"].T)
    return np.concatenate(outs, 1), np.stack(m), np.stack(cm)


def _windows(old, rate=2):  # [B, E, d] -> [B, E // rate, rate, d]; the remainder is dropped
    n = old.shape[1] // rate
    return old[:, :n * rate].reshape(len(old), n, rate, old.shape[2])


F_C = {  # Rae et al. §3.1: the compression functions, kernel = stride = rate
    "conv1d": lambda w, p, old: np.einsum("bnkc,ock->bno", _windows(old), w[p + "compress.w"])
    + w[p + "compress.bias"],
    "avg_pool": lambda w, p, old: _windows(old).mean(2),
    "max_pool": lambda w, p, old: _windows(old).max(2),
}


def _stream(graph, w, backend, ids, cuts):
    s = Session(graph, w, backend)
    out = [s.prefill(ids[:, : cuts[1]])]
    out += [s.step(ids[:, a:b]) for a, b in itertools.pairwise(cuts[1:])]
    return np.concatenate(out, 1), s.past


# segments as long as the memory, shorter (it fills over calls), longer, and of one token
CUTS = [[0, 8, 16, 24], [0, 3, 6, 9, 12, 24], [0, 12, 13, 14, 24]]


@pytest.mark.parametrize("cuts", CUTS, ids=["equal", "short", "long-then-one"])
def test_transformer_xl_streams_like_the_paper(cuts):
    g = archc.compile(SPECS / "transformer_xl.arch")
    w = _perturbed(g, 1)
    ids = rng.integers(0, 64, (2, 24))
    ref, mem, _ = _memory_reference(w, ids, cuts, mem=8)
    for backend in BACKENDS:
        got, past = _stream(g, w, backend, ids, cuts)
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(past["memory"], mem, atol=1e-5, rtol=1e-5)


def test_transformer_xl_streams_from_the_cli(tmp_path):
    g = archc.compile(SPECS / "transformer_xl.arch")
    w = _perturbed(g, 2)
    archc.save_weights(w, str(tmp_path / "w.safetensors"))
    # the CLI's seeded ids (`--inputs` would also need a `memory` array: see the catalogue page)
    ids = random_inputs(archc.compile(SPECS / "transformer_xl.arch", level=0), 2, 11, 5)
    ref = _memory_reference(w, ids["input_ids"], [0, *range(5, 12)], mem=8)[0]
    for backend in BACKENDS:  # a segment of 5 tokens, then one token a call
        assert main(["run", str(SPECS / "transformer_xl.arch"), "--weights",
                     str(tmp_path / "w.safetensors"), "--batch", "2", "--seq", "11", "--seed",
                     "5", "--incremental", "5", "--backend", backend,
                     "--out", str(tmp_path / "out.npz")]) == 0
        np.testing.assert_allclose(np.load(tmp_path / "out.npz")["logits"], ref, atol=1e-5,
                                   rtol=1e-5)


def test_transformer_xl_streams_through_the_exported_onnx():
    g = archc.compile(SPECS / "transformer_xl.arch")
    w = _perturbed(g, 3)
    sess = ort.InferenceSession(archc.export_onnx(g, w).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "memory"]
    assert [o.name for o in sess.get_outputs()] == ["logits", "next.memory"]
    ids = rng.integers(0, 64, (3, 24))
    memory, outs = np.zeros((2, 3, 0, 32), np.float32), []  # empty, then next.memory
    for a, b in itertools.pairwise(CUTS[1]):
        logits, memory = sess.run(None, {"input_ids": ids[:, a:b], "memory": memory})
        outs.append(logits)
    ref, mem, _ = _memory_reference(w, ids, CUTS[1], mem=8)
    np.testing.assert_allclose(np.concatenate(outs, 1), ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(memory, mem, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fn", sorted(F_C))
def test_compressive_transformer_streams_like_the_paper(fn):
    text = (SPECS / "compressive.arch").read_text()
    g = archc.compile(archc.parse(text.replace("fn = conv1d", f"fn = {fn}"), "c.arch"))
    w = _perturbed(g, 4)
    ids = rng.integers(0, 64, (2, 24))
    # 4 = the memory, 2 < the memory, and 1 (rate 2: a lone evicted state is dropped)
    for cuts in ([0, 4, 8, 12, 16, 20, 24], [0, 2, 4, 6, 10, 12, 13, 14, 24]):
        ref, mem, cmem = _memory_reference(w, ids, cuts, mem=4, cmem=4, f_c=F_C[fn])
        assert cmem.shape == (2, 2, 4, 32)  # the compressed memory filled up
        for backend in BACKENDS:
            got, past = _stream(g, w, backend, ids, cuts)
            np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
            np.testing.assert_allclose(past["memory"], mem, atol=1e-5, rtol=1e-5)
            np.testing.assert_allclose(past["compressed"], cmem, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- RETRO
def _retro_encoder(w, p, ids, h, m, heads):
    """§2.3: each neighbour [R] embedded, encoded bidirectionally, cross-attending to the
    activations of its chunk C_u = h[u m : (u + 1) m] (zeros past the end)."""
    b, n, k, _ = ids.shape
    x = w["wte.weight"][ids].astype(np.float64)
    ctx = np.concatenate([h, np.zeros((b, n * m, h.shape[2]))], 1)[:, :n * m]
    ctx = np.broadcast_to(ctx.reshape(b, n, 1, m, -1), (b, n, k, m, h.shape[2]))
    q = p + ".layer.0"
    x = x + _mha(w, q + ".attn", _ln(x, w, q + ".ln1"), _ln(x, w, q + ".ln1"), heads)
    x = x + _mha(w, q + ".cross", _ln(x, w, q + ".ln2"), ctx, heads)
    x = x + _mlp(w, q + ".mlp", _ln(x, w, q + ".ln3"))
    return _ln(x, w, p + ".norm")


def _cca(w, p, h, e, m, heads):
    """§2.4, Listing 1: token t attends to E_c, c = (t + 1) // m - 1, all K·R of its tokens;
    the first m - 1 tokens (and any past the neighbours given) get 0."""
    out = np.zeros_like(h)
    for t in range(h.shape[1]):
        c = (t + 1) // m - 1
        if 0 <= c < e.shape[1]:
            ctx = e[:, c].reshape(len(h), -1, h.shape[2])
            out[:, t:t + 1] = _mha(w, p, h[:, t:t + 1], ctx, heads)
    return out


def _retro_reference(w, ids, nids, m=4, heads=4):
    t = ids.shape[1]
    x = w["wte.weight"][ids].astype(np.float64) + w["wpe.weight"][np.arange(t)]
    for n in range(2):
        p = f"layers.{n}"
        h = _ln(x, w, p + ".ln1")
        x = x + _mha(w, p + ".attn", h, h, heads, keep=np.tril(np.ones((t, t), bool)))
        if n == 1:
            e = _retro_encoder(w, p + ".encoder", nids, x, m, heads)
            x = x + _cca(w, p + ".cca.attn", _ln(x, w, p + ".ln_cca"), e, m, heads)
        x = x + _mlp(w, p + ".mlp", _ln(x, w, p + ".ln2"))
    return _ln(x, w, "ln_f") @ w["wte.weight"].T


# (tokens, chunks of neighbours): whole chunks, a partial last chunk, more neighbour sets
# than whole chunks, shorter than one chunk, exactly one chunk, one token
@pytest.mark.parametrize("seq, chunks", [(12, 3), (10, 2), (9, 3), (3, 1), (4, 1), (1, 1)])
def test_retro_matches_the_paper(seq, chunks):
    g = archc.compile(SPECS / "retro.arch")
    w = _perturbed(g, 5)
    ids, nids = rng.integers(0, 64, (2, seq)), rng.integers(0, 64, (2, chunks, 2, 6))
    ref = _retro_reference(w, ids, nids)
    for backend in BACKENDS:
        got = archc.run(g, {"input_ids": ids, "neighbour_ids": nids}, w, backend=backend)
        np.testing.assert_allclose(got["logits"], ref, atol=1e-5, rtol=1e-5)


def test_retro_causal_offset_reads_the_previous_chunks_neighbours():
    g = archc.compile(SPECS / "retro.arch")
    w = _perturbed(g, 6)
    ids, nids = rng.integers(0, 64, (1, 12)), rng.integers(0, 64, (1, 3, 2, 6))
    base = archc.run(g, {"input_ids": ids, "neighbour_ids": nids}, w)["logits"]
    for c in range(3):  # CCA is in the last layer: new neighbours for chunk c change exactly
        other = nids.copy()  # tokens (c+1)·4 - 1 .. (c+2)·4 - 2, the ones that read them
        other[:, c] = (other[:, c] + 1) % 64
        got = archc.run(g, {"input_ids": ids, "neighbour_ids": other}, w)["logits"]
        changed = np.abs(got - base).max(-1)[0] > 1e-6
        assert changed.tolist() == [(t + 1) // 4 - 1 == c for t in range(12)], c


def test_retro_cca_takes_encoded_neighbours():
    g = archc.compile(archc.parse("model m { input h: float32[batch, seq, 16] input neighbours: "
                                  "float32[batch, chunks, 3, 5, 16] "
                                  "output y = retro_cca(h, neighbours, 3, 2) as cca }"))
    w = _perturbed(g, 7)
    for seq, chunks in ((9, 3), (7, 2), (2, 1)):
        h = rng.standard_normal((2, seq, 16)).astype(np.float32)
        e = rng.standard_normal((2, chunks, 3, 5, 16)).astype(np.float32)
        ref = _cca(w, "cca.attn", h.astype(np.float64), e, 3, 2)
        for backend in BACKENDS:
            got = archc.run(g, {"h": h, "neighbours": e}, w, backend=backend)["y"]
            np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
        assert not ref[:, :2].any()  # the first chunk - 1 tokens attend to nothing


# ---------------------------------------------------------------- Fusion-in-Decoder
def _t5_bucket(rel, bidirectional, nb=32, max_distance=128):
    """Raffel et al. 2020's bucket of rel = key - query."""
    ret, n = 0, np.maximum(-rel, 0)
    if bidirectional:
        nb //= 2
        ret, n = (rel > 0) * nb, np.abs(rel)
    exact = nb // 2
    log = np.log(np.maximum(n, 1) / exact) / math.log(max_distance / exact) * (nb - exact)
    return ret + np.where(n < exact, n, np.minimum(exact + log.astype(np.int64), nb - 1))


def _t5_bias(table, tq, tk, bidirectional):  # [heads, tq, tk]
    return np.moveaxis(table[_t5_bucket(np.arange(tk) - np.arange(tq)[:, None], bidirectional)],
                       -1, 0)


def _t5_stack(w, p, x, layers, kinds, heads=4):
    for n in range(layers):
        for i, (kind, kv, keep, bias) in enumerate(kinds):
            q, h = f"{p}{n}.{kind}", _rms(x, w[f"{p}{n}.rms_norm{f'_{i}' if i else ''}.weight"])
            x = x + (np.maximum(h @ w[q + ".fc.weight"], 0) @ w[q + ".proj.weight"]
                     if kind == "ffn" else _mha(w, q, h, h if kv is None else kv, heads, keep,
                                                bias, scaled=False, biased=False))
    return x


def _fid_reference(w, ids, mask, dids, layers=2):
    """§3: every (question, passage) pair encoded on its own, the encodings concatenated."""
    e, p = w["shared.weight"], "encoder.passage_encoder."
    enc = []
    for i in range(ids.shape[1]):
        bias = _t5_bias(w[p + "rel.weight"], ids.shape[2], ids.shape[2], True)
        x = _t5_stack(w, p + "layer.", e[ids[:, i]].astype(np.float64), layers,
                      [("self_attn", None, mask[:, i, None, None] > 0, bias), ("ffn",) * 4])
        enc.append(_rms(x, w[p + "norm.weight"]))
    t = dids.shape[1]
    self_bias = _t5_bias(w["decoder_rel.weight"], t, t, False)
    y = _t5_stack(w, "decoder.", e[dids].astype(np.float64), layers, [
        ("self_attn", None, np.tril(np.ones((t, t), bool)), self_bias),
        ("cross_attn", np.concatenate(enc, 1), mask.reshape(len(ids), 1, 1, -1) > 0, 0.0),
        ("ffn",) * 4])
    return _rms(y, w["decoder_norm.weight"]) @ e.T


def test_fusion_in_decoder_matches_the_paper_full_and_incremental():
    module = archc.parse_file(SPECS / "fid.arch")
    g = archc.compile(module)
    w = _perturbed(g, 8)
    ids, mask = rng.integers(0, 64, (2, 3, 5)), np.ones((2, 3, 5), np.int64)
    mask[0, 1, 3:] = mask[1, 2, 1:] = 0  # passages padded differently
    dids = rng.integers(0, 64, (2, 6))
    feeds = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dids,
             "decoder_attention_mask": np.ones_like(dids)}
    ref = _fid_reference(w, ids, mask, dids)
    for backend in BACKENDS:
        got = archc.run(g, feeds, w, backend=backend)["logits"]
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
        # encode every passage once, then decode one token a step
        inc = seq2seq_incremental_logits(module, w, feeds, 2, backend)
        np.testing.assert_allclose(inc, ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- stats, primitives, errors
def _expected_params(spec, v=64, d=32, ff=64, layers=2):
    mlp, ln, attn = d * ff + ff + ff * d + d, 2 * d, 4 * d * d  # biased mlp / LN; bare MHA
    if spec in ("transformer_xl", "compressive"):  # q k v r o, no biases; u, v shared
        conv = d * d * 2 + d if spec == "compressive" else 0
        return v * d + 2 * d + layers * (5 * d * d + 2 * ln + mlp + conv)
    if spec == "retro":  # wte, wpe; 2 decoder layers; cca; a 1-layer encoder
        layer = attn + 4 * d + 2 * ln + mlp
        return v * d + 64 * d + layers * layer + (attn + 4 * d + ln) + \
            (2 * (attn + 4 * d) + 3 * ln + mlp + ln) + ln
    ffn_t5, bias = 2 * d * ff, 32 * 4  # fid: T5 blocks, RMSNorm weights only
    return v * d + (layers * (attn + ffn_t5 + 2 * d) + bias + d) + \
        (layers * (2 * attn + ffn_t5 + 3 * d) + bias + d)


@pytest.mark.parametrize("spec", ["transformer_xl", "compressive", "retro", "fid"])
def test_stats_are_exact(spec, capsys):
    assert main(["stats", str(SPECS / f"{spec}.arch"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["parameters"] == _expected_params(spec)
    tied = 2 if spec in ("retro", "fid") else 1  # the head, and the encoder's embedding
    assert stats["with_duplicates"] - stats["parameters"] == 64 * 32 * tied


def test_merge_axes_and_split_axis_fold_symbolic_axes():
    src = ("model m {\n  input x: float32[batch, n, 4, 3]\n  f = merge_axes(merge_axes(x))\n"
           "  output y = split_axis(split_axis(f, merge_axes(x)), x)\n"
           "  output z = merge_axes(x, axis = -2)\n  output f = f\n}\n")
    g = archc.compile(archc.parse(src))
    assert {k: str(v.type) for k, v in g.outputs.items()} == {
        "y": "f32[batch,n,4,3]", "z": "f32[batch,n,12]", "f": "f32[batch*n*4,3]"}
    x = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
    for backend in BACKENDS:
        out = archc.run(g, {"x": x}, backend=backend)
        np.testing.assert_array_equal(out["y"], x)
        np.testing.assert_array_equal(out["f"], x.reshape(40, 3))


@pytest.mark.parametrize("text, message", [
    ("input x: float32[batch, 6] output y = split_axis(x, zeros(2, 4), axis = 1, like_axis = 0)",
     "cannot split dim 6 of f32[batch,6] into 2 x 4"),
    ("input x: float32[batch, 6] output y = merge_axes(x, axis = 1)", "has no next axis"),
    ("input x: float32[batch, 6, 8] output y = compress_memory(x, 2, fn = softmax)",
     "`fn` must be avg_pool, max_pool or conv1d"),
    ("input x: float32[batch, 6, 8] output y = txl_sinusoid(x, 7)", "`width` = 7 must be even"),
], ids=["split", "merge", "compress-fn", "sinusoid"])
def test_mistakes_are_located_errors(text, message):
    with pytest.raises(ArchcError) as e:
        archc.compile(archc.parse(f"model m {{ {text} }}", "bad.arch"))
    assert message in str(e.value) and "--> bad.arch:1:" in str(e.value)
