"""`archc stats` completed: FLOPs per token against the standard estimate, MoE counting active
experts, weight and KV-cache bytes, and the peak activation memory of a NumPy forward pass
from the schedule, checked against tracemalloc."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from conftest import ROOT

import archc
from archc.backends import numpy_interp
from archc.cli import main
from archc.explain import explain
from archc.lower import lower
from archc.stats import activation_peak, bind, dim_size, flop_stats, full_stats, param_stats
from archc.weights import init_params


def _graph(name: str):
    return lower(archc.parse_file(ROOT / "specs" / f"{name}.arch"))


@pytest.mark.parametrize("seq", [16, 1024, 2048])
def test_flops_are_the_kaplan_estimate_plus_attention_mixing(seq):
    # Kaplan et al. (2020): C_forward = 2N + 2 n_layer n_ctx d_attn per token, N the weights of
    # the matmuls; its attention term counts q k^T, and softmax(.) v adds the same again.
    layers, d, kv, ff, vocab, d_attn = 4, 256, 64, 688, 1024, 256
    n = layers * (2 * d * d + 2 * d * kv + 3 * d * ff) + d * vocab
    f = flop_stats(_graph("llama_tiny"), seq)
    kaplan = 2 * n + 2 * layers * seq * d_attn
    assert f["weights"] == 2 * n
    assert f["attention"] == 2 * 2 * layers * seq * d_attn
    assert f["total"] == kaplan + 2 * layers * seq * d_attn


def test_gpt2_flops_within_the_estimates_approximation():
    # Kaplan's N is the non-embedding parameters (biases and norms included, which do no
    # matmul); the tied head adds the de-embedding, 2 d_model n_vocab. Within 0.2%.
    g = _graph("gpt2_small")
    s, f = param_stats(g), flop_stats(g, 1024)
    n, layers, d, vocab = s["breakdown"]["non-embedding"], 12, 768, 50257
    assert f["weights"] == 2 * (layers * 12 * d * d + d * vocab)  # exact: the matmul weights
    kaplan = 2 * n + 2 * d * vocab + 2 * layers * 1024 * d
    assert f["total"] == pytest.approx(kaplan + 2 * layers * 1024 * d, rel=2e-3)


def test_moe_counts_the_active_experts_only():
    # moe_general: top-2 of 8 experts plus one shared expert; every weight but the embedding
    # and the norms is a matmul weight, so the weight FLOPs are 2 x the active parameters less
    # those (the experts scaled by top_k/experts, as `active_per_token` is).
    g = _graph("moe_general")
    s, f = param_stats(g), flop_stats(g, 128)
    norms = sum(p.type.shape[0] for name, p in g.params.items() if "norm" in name)
    assert f["moe_active_only"]
    assert f["weights"] == 2 * (s["active_per_token"] - s["breakdown"]["token embedding"] - norms)
    assert f["weights"] < 2 * (s["parameters"] - s["breakdown"]["token embedding"] - norms)


@pytest.mark.parametrize("name", ["llama_tiny", "moe_general", "t5_small_style"])
def test_explain_counts_the_same_matmuls(name):
    g = _graph(name)
    total = sum(x.flops * x.count for x in explain(g, 64))
    assert total == pytest.approx(flop_stats(g, 64)["total"], rel=1e-12)


def test_weight_and_kv_cache_bytes():
    s = full_stats(_graph("llama_tiny"), seq=100, batch=3)
    n = s["parameters"]
    # int4 as compile stores it, written out for llama_tiny (d 256, kv 2 x 32, ff 688, vocab
    # 1024, 4 layers): a [K, N] weight has nb = ceil(K / 32) blocks a column, each 16 bytes of
    # codes, a 4-byte scale and half a byte of zero point (rounded up per column)
    def w4(k, n):
        nb = -(-k // 32)
        return n * nb * 16 + 4 * n * nb + n * -(-nb // 2)
    layer = 2 * w4(256, 256) + 2 * w4(256, 64) + 2 * w4(256, 688) + w4(688, 256)
    norms = 4 * (4 * 2 * 256 + 256)  # float32: two a layer and the final one
    table = 1024 * (256 + 4 * 8 + 8)  # 8-bit rows: codes, a scale and a zero point a block
    assert s["weight_bytes"] == {"float32": 4 * n, "float16/bfloat16": 2 * n,
                                 "int8": s["weight_bytes"]["int8"],
                                 "int4": 4 * layer + norms + table + w4(256, 1024)}
    # 4 layers x (k + v) x 2 kv heads x 32 = 512 values per token
    assert s["kv_cache_bytes"] == {"batch": 3, "seq": 100, "float32": 512 * 4 * 300,
                                   "float16": 512 * 2 * 300}


def test_dims_are_sized_from_their_text():
    dims = {"batch": 2, "seq": 10, "m": 6, "passages": 3}
    assert [dim_size(d, dims) for d in (7, "seq", "m+seq", "batch*passages", "(m+seq)[-8:]",
                                        "(m+seq)[:-4]+2", "pool(seq,2,2)", "seq*(m+seq)")] == \
        [7, 10, 16, 6, 8, 14, 5, 160]
    assert dim_size("unknown", dims) is None and dim_size("__import__('os')", dims) is None
    assert bind(_graph("t5_small_style"), 2, 9) == {"batch": 2, "seq": 9, "tgt": 9}


def _held_peak(graph, batch: int, seq: int) -> int:
    """The most bytes the interpreter holds right after a node runs (before it frees the inputs
    that node read last), measured with tracemalloc around a real run."""
    dims = bind(graph, batch, seq)
    feeds = {n: np.ones([dim_size(d, dims) for d in node.type.shape], np.int64)
             for n, node in graph.inputs.items()}
    params = {k: np.asarray(v, np.float32) for k, v in init_params(graph, 0).items()}
    held: list[int] = []
    evaluate = numpy_interp._evaluate

    def measured(*args):
        out = evaluate(*args)
        held.append(tracemalloc.get_traced_memory()[0])
        return out

    numpy_interp.run_graph(graph, feeds, params)  # warm: first-run caches are not activations
    numpy_interp._evaluate = measured
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        numpy_interp.run_graph(graph, feeds, params)
    finally:
        tracemalloc.stop()
        numpy_interp._evaluate = evaluate
    return max(held) - base


@pytest.mark.parametrize("name, level", [("llama_tiny", 0), ("llama_tiny", 1),
                                         ("llama_tiny", 2), ("t5_small_style", 1),
                                         ("moe_general", 2)])
def test_peak_activations_match_a_measurement(name, level):
    # Tolerance: the measurement also holds Python objects (array headers, the interpreter's
    # dict), so it may exceed the estimate by 2% plus 64 KiB, never fall below it. Measured
    # over every bundled spec at batch 2, seq 64/128, -O0/1/2: 0.1% to 14% (small runs) over.
    graph = archc.optimize(_graph(name), level)
    estimate = activation_peak(graph, 2, 96)["bytes"]
    measured = _held_peak(graph, 2, 96)
    assert estimate <= measured <= 1.02 * estimate + 64 * 1024


def test_peak_grows_with_the_score_square():
    g = archc.optimize(_graph("llama_tiny"), 1)
    small, big = (activation_peak(g, 1, t)["bytes"] for t in (512, 1024))
    assert 3 < big / small <= 4  # the [1, 8, T, T] scores dominate at these lengths


def test_cli_text_and_json(capsys):
    spec = str(ROOT / "specs" / "llama_tiny.arch")
    assert main(["stats", spec]) == 0
    text = capsys.readouterr().out
    assert "forward FLOPs/token at seq 2,048" in text and "weight bytes int4" in text
    assert "peak activation bytes, batch 1 × seq 2,048" in text
    assert main(["stats", spec, "--json", "--seq", "64", "--batch", "2", "-O", "2"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["flops_per_token"]["seq"] == 64 and s["kv_cache_bytes"]["batch"] == 2
    assert s["peak_activation_bytes"]["opt"] == 2 and s["peak_activation_bytes"]["bytes"] > 0
    assert s["parameters"] == 3_295_488
    with pytest.raises(SystemExit):
        main(["stats", spec, "--seq", "0"])
