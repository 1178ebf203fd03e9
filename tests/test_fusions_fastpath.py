"""The attention fast paths: with the key mask beside the bias (`sdpa` / `sdpa_past` with a fifth
/ seventh input), the ONNX lowering puts an If in front of the exact lowering:

- a full sequence: mask right-padded (or all ones) -> GroupQueryAttention with
  seqlens_k = L - 1 and no bias; else (left padding, an empty row) the exact path;
- over a KV cache: mask all ones (and GQA able to run) -> GroupQueryAttention with past and no
  bias; else the CACHED_ATTENTION lowering with the bias.

Every case is checked against the unfused graph on NumPy (-O1), on right-padded, left-padded,
unpadded and empty-row batches, full and incremental, and onnxruntime's profile says which
branch ran (the branches' nodes are named `fast_*` and `exact_*`)."""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import onnxruntime as ort
import pytest
from conftest import ROOT, perturbed_params

import archc
from archc.backends.onnx_export import export_onnx, model_bytes
from archc.kvcache import incremental_logits
from archc.lower import lower
from archc.ops import sdpa_past

B, T = 3, 9
LENS = {"unpadded": (9, 9, 9), "right": (9, 6, 1)}
MASKS = {
    "unpadded": np.ones((B, T), np.int64),
    "right": (np.arange(T)[None] < np.array(LENS["right"])[:, None]).astype(np.int64),
    "left": (np.arange(T)[None] >= np.array([0, 3, 8])[:, None]).astype(np.int64),
    "empty_row": (np.arange(T)[None] < np.array([9, 0, 4])[:, None]).astype(np.int64),
    "hole": np.array([[1] * 9, [1, 1, 0, 1, 1, 1, 1, 1, 1], [1] * 9]),
}
FAST_FULL = {"unpadded", "right"}


@pytest.fixture(scope="module")
def llama():
    module = archc.parse_file(ROOT / "specs" / "llama_tiny.arch")
    graphs = {(cache, lvl): archc.optimize(lower(module, cache=cache), lvl)
              for cache in (False, True) for lvl in (1, 2)}
    w = perturbed_params(graphs[False, 1])
    ids = np.random.default_rng(3).integers(0, 1024, (B, T))
    return graphs, w, ids


def _branches(graph, w, feeds) -> tuple[np.ndarray, Counter]:
    """(the first output, how many nodes of each If branch ran), from onnxruntime's profile."""
    opts = ort.SessionOptions()
    opts.enable_profiling, opts.profile_file_prefix = True, "/tmp/archc_fastpath"
    opts.intra_op_num_threads, opts.log_severity_level = 1, 3
    s = ort.InferenceSession(model_bytes(export_onnx(graph, w)), opts)
    out = s.run(None, feeds)[0]
    path = s.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    ran = Counter()  # a node in branch "fast" or "exact" (or nested in one), or "gated": one
    for e in events:  # the exact branches' shared values (the bias) computed behind their gate
        head = e["name"].split("_")[:2] if e.get("cat") == "Node" else []
        ran.update(x for x in ("fast", "exact") if x in head)
        ran.update(["gated"] if e.get("cat") == "Node" and e["name"].startswith("gated/") else [])
    return out, ran


def test_the_rules_attach_the_key_mask(llama):
    graphs, _, _ = llama
    for cache, op, n in ((False, "sdpa", 5), (True, "sdpa_past", 7)):
        nodes = [x for x in graphs[cache, 2].nodes() if x.kind == "op" and x.op == op]
        assert nodes and all(len(x.inputs) == n for x in nodes)
        assert all(x.inputs[-1].kind == "input" and x.inputs[-1].name == "attention_mask"
                   for x in nodes)


@pytest.mark.parametrize("kind", sorted(MASKS))
def test_full_sequence_fast_path_equals_the_exact_path(llama, kind, monkeypatch):
    graphs, w, ids = llama
    feeds = {"input_ids": ids, "attention_mask": MASKS[kind]}
    ref = archc.run(graphs[False, 1], feeds, w)["logits"]  # unfused, the bias spelled out
    got = archc.run(graphs[False, 2], feeds, w)["logits"]
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)  # padding rows too
    out, ran = _branches(graphs[False, 2], w, feeds)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
    taken = {"fast"} if kind in FAST_FULL else {"exact", "gated"}  # the bias only for exact
    assert set(ran) == taken, ran
    _against_the_exact_lowering(graphs[False, 2], w, feeds, out, monkeypatch)


def _against_the_exact_lowering(graph, w, feeds, out, monkeypatch):
    """onnxruntime: the build with the If against the exact lowering alone (no If)."""
    monkeypatch.setattr(sdpa_past, "FAST_PATHS", False)
    exact, ran = _branches(graph, w, feeds)
    assert not ran
    np.testing.assert_allclose(out, exact, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", sorted(MASKS))
@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_incremental_fast_path_equals_the_exact_path(llama, kind, backend):
    graphs, w, ids = llama
    mask = MASKS[kind]
    unfused = incremental_logits(graphs[True, 1], w, ids, mask, 4)
    got = incremental_logits(graphs[True, 2], w, ids, mask, 4, backend)
    np.testing.assert_allclose(got, unfused, atol=1e-5, rtol=0)
    if kind != "empty_row":  # against the full sequence, where a token has a key
        full = archc.run(graphs[False, 1], {"input_ids": ids, "attention_mask": mask}, w)
        real = mask.astype(bool)
        assert np.abs(got - full["logits"])[real].max() <= 1e-4


def _past_feeds(graph, ids, mask, past: int) -> dict:
    feeds = {"input_ids": ids, "attention_mask": mask}
    for name, x in graph.inputs.items():
        if name.startswith("past_key_values."):
            _, kv, _, d = x.type.shape
            feeds[name] = np.random.default_rng(len(feeds)).standard_normal(
                (ids.shape[0], kv, past, d)).astype(np.float32)
    return feeds


@pytest.mark.parametrize("rows,new,past,ones,taken", [
    (3, 1, 5, True, "fast"),  # a decode step, every key kept
    (3, 1, 5, False, "exact"),  # a decode step with padding
    (1, 4, 5, True, "fast"),  # a chunked prefill of one row
    (3, 4, 5, True, "exact"),  # several rows, new tokens after a past: GQA's CPU kernel refuses
    (3, 4, 0, True, "fast"),  # a prefill into an empty cache
])
def test_incremental_if_takes_each_branch(llama, rows, new, past, ones, taken, monkeypatch):
    graphs, w, ids = llama
    mask = np.ones((rows, past + new), np.int64)
    if not ones:
        mask[-1, :2] = 0
    feeds = _past_feeds(graphs[True, 2], ids[:rows, :new], mask, past)
    ref = archc.run(graphs[True, 1], feeds, w)["logits"]
    out, ran = _branches(graphs[True, 2], w, feeds)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
    assert set(ran) == ({"fast"} if taken == "fast" else {"exact", "gated"}), ran
    _against_the_exact_lowering(graphs[True, 2], w, feeds, out, monkeypatch)


@pytest.mark.parametrize("kind, taken", [
    ("unpadded", {"fast"}), ("right_short", {"fast"}), ("right", {"fast", "exact", "gated"}),
    ("left", {"exact", "gated"})])
def test_a_sliding_window_takes_the_fast_path_with_local_window_size(kind, taken, monkeypatch):
    """interleaved_local_global: its windowed layers (window 4, T = 9) pass the key mask too,
    and the fast branch is GroupQueryAttention with local_window_size = 4 (key j > i - 4, the
    count archc's window means); padded rows included, against the unfused graph (1e-5). A
    padded row T - L >= 4 places past its row's end has no key at all (the mean of v), which
    GQA does not give: with lengths (9, 6, 1) the windowed layers take the exact path (the
    global ones still the fast one), with (9, 7, 6) every layer the fast one."""
    module = archc.parse_file(ROOT / "specs" / "interleaved_local_global.arch")
    plain, fused = archc.optimize(lower(module), 1), archc.optimize(lower(module), 2)
    sdpas = [x for x in fused.nodes() if x.kind == "op" and x.op == "sdpa"]
    assert {x.attrs.get("window", 0) for x in sdpas} == {0, 4}
    assert all(x.inputs[-1].kind == "input" for x in sdpas)  # every layer has the mask hint
    w = perturbed_params(plain)
    feeds = {"input_ids": np.random.default_rng(4).integers(0, 1024, (B, T)),
             "attention_mask": MASKS[kind] if kind in MASKS else
             (np.arange(T)[None] < np.array([9, 7, 6])[:, None]).astype(np.int64)}
    ref = archc.run(plain, feeds, w)["logits"]
    model = export_onnx(fused, w)
    windows = [a.i for n in model.graph.node if n.op_type == "If"
               for g in n.attribute if g.name == "then_branch" for m in g.g.node
               if m.op_type == "GroupQueryAttention" for a in m.attribute
               if a.name == "local_window_size"]
    assert windows == [4, 4]  # layers 0 and 2
    out, ran = _branches(fused, w, feeds)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
    assert set(ran) == taken, ran
    _against_the_exact_lowering(fused, w, feeds, out, monkeypatch)
