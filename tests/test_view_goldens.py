"""The commands that look at a model, pinned: `archc explain` and `archc stats` text for every
bundled spec and `archc diff` for pairs of designs, in tests/golden/view/ (refresh with
ARCHC_UPDATE_GOLDEN=1); FLOPs per token counted by hand for a GPT-2 and an encoder-decoder;
and docs/cli.md's field tables equal to the JSON the commands print.

The stats goldens leave out the peak-activation row: it is exact for a given schedule, but the
schedule (and the node it names) is the optimiser's, which every new fusion changes; it is
checked against tracemalloc in tests/test_stats_full.py instead. Nothing else they hold
depends on the machine, and nothing depends on a spec's layout (no line numbers)."""

from __future__ import annotations

import json
import re

import pytest
from conftest import GOLDEN, ROOT, SPECS, check_golden
from test_diff import graph

from archc.cli import main
from archc.diff import diff, render
from archc.stats import flop_stats, param_stats

VIEW = GOLDEN / "view"
SEQ, BATCH = 128, 2

# name -> (spec a, spec b, integer lets changed in b): decoder, encoder, encoder-decoder,
# mixture of experts, a shared repeat, repeats of different lengths, and no change at all.
PAIRS = {
    "decoder_gqa": ("llama_tiny", "llama_tiny", {"heads": 16, "kv": 4}),
    "decoder_depth": ("gpt2_small", "gpt2_small", {"layers": 14}),
    "encoder": ("bert_base", "mini_bert", {}),
    "encdec": ("t5_small_style", "t5_small_style", {"layers": 3, "ff": 1024}),
    "moe_experts": ("moe_general", "moe_general", {"experts": 16, "top_k": 4}),
    "moe_designs": ("moe_general", "switch", {}),
    "shared_steps": ("universal_shared", "universal_shared", {"steps": 8}),
    "window": ("interleaved_local_global", "interleaved_local_global", {"window": 16}),
    "longformer": ("longformer_style", "longformer_full", {}),
    "identical": ("gpt2_small", "gpt2_small", {}),
}


def _cli(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_explain_and_stats_goldens(spec, capsys):
    check_golden(VIEW / f"{spec.stem}.explain.txt", _cli(capsys, "explain", str(spec), "--seq",
                                                         str(SEQ)))
    stats = _cli(capsys, "stats", str(spec), "--seq", str(SEQ), "--batch", str(BATCH))
    kept = [x for x in stats.splitlines(keepends=True) if "peak activation" not in x]
    assert len(kept) == stats.count("\n") - 1  # exactly the one row left out
    check_golden(VIEW / f"{spec.stem}.stats.txt", "".join(kept))


def _pair(name: str) -> dict:
    a, b, lets = PAIRS[name]
    changed = ", ".join(f"{k} = {v}" for k, v in lets.items())
    files = (f"specs/{a}.arch", f"specs/{b}.arch" + (f" with {changed}" if lets else ""))
    return diff(graph(a), graph(b, **lets), SEQ, files)


@pytest.mark.parametrize("name", PAIRS)
def test_diff_goldens(name):
    d = _pair(name)
    assert d["identical"] == (name == "identical")
    check_golden(VIEW / "diff" / f"{name}.txt", render(d))
    if name == "decoder_depth":  # the JSON form, once
        check_golden(VIEW / "diff" / f"{name}.json", json.dumps(d, indent=2, sort_keys=True) +
                     "\n")


# ---------------------------------------------------------------- FLOPs by hand
@pytest.mark.parametrize("seq", [64, 1024])
def test_gpt2_flops_by_hand(seq):
    # Forward FLOPs per token = 2 x m x n x k per matmul / T. Per layer and token:
    d, layers, vocab = 768, 12, 50257
    qkv = 2 * d * (3 * d)  # c_attn: [T, d] x [d, 3d]
    scores = 2 * seq * d  # q.k^T: heads x [T, hd] x [hd, T] = T x T x d per T tokens
    mix = 2 * seq * d  # probs.v: the same sizes
    out = 2 * d * d  # c_proj
    fc, proj = 2 * d * (4 * d), 2 * (4 * d) * d  # the MLP
    head = 2 * d * vocab  # the tied LM head (the embedding lookups are no matmul)
    f = flop_stats(graph("gpt2_small"), seq)
    assert f["weights"] == layers * (qkv + out + fc + proj) + head
    assert f["attention"] == layers * (scores + mix)
    assert f["total"] == layers * (qkv + scores + mix + out + fc + proj) + head


@pytest.mark.parametrize("seq", [64, 1024])
def test_encoder_decoder_flops_by_hand(seq):
    # t5_small_style at T source = T target tokens, per token (the stats divide by T):
    d, ff, layers, vocab = 128, 512, 2, 512
    attn_proj = 4 * 2 * d * d  # q, k, v, o: [T, d] x [d, d]; cross-attention's k, v run
    # on the T encoder states, so per token they cost the same
    attn_mix = 2 * seq * d + 2 * seq * d  # q.k^T and probs.v
    ffn = 2 * d * ff + 2 * ff * d  # wi, wo (ReLU, no gate)
    encoder = attn_proj + ffn
    decoder = 2 * attn_proj + ffn  # self- and cross-attention
    head = 2 * d * vocab  # the head tied to `shared`
    g = graph("t5_small_style")
    f = flop_stats(g, seq)
    assert f["weights"] == layers * (encoder + decoder) + head
    assert f["attention"] == layers * 3 * attn_mix  # encoder self, decoder self and cross
    assert f["total"] == f["weights"] + f["attention"]
    # Kaplan et al. (2020): C_forward ~ 2N + 2 n_layer n_ctx d_attn, N the non-embedding
    # parameters, n_layer the attention layers (here 2 + 2 + 2 cross). Its N counts the norm
    # scales (7 x 128 + 5 x 128) and relative-bias tables (2 x 32 x 4), which do no matmul,
    # and leaves out the tied head's de-embedding (added here); its attention term counts
    # q.k^T only, and probs.v adds as much again.
    n = param_stats(g)["breakdown"]["non-embedding"]
    assert n - (f["weights"] - head) // 2 == 12 * 128 + 2 * 32 * 4
    kaplan = 2 * n + head + 2 * (3 * layers) * seq * d
    assert f["total"] == pytest.approx(kaplan + 2 * (3 * layers) * seq * d, rel=2e-3)


# ---------------------------------------------------------------- docs/cli.md
DOC = ROOT / "docs" / "cli.md"
ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|([^|]*)\|", re.M)


def _documented(command: str) -> tuple[set[str], set[str]]:
    """Field paths of `## archc COMMAND --json` in docs/cli.md: all, and those that must be
    present (not marked optional)."""
    text = DOC.read_text(encoding="utf-8")
    m = re.search(rf"^## `archc {command} --json`\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"docs/cli.md has no section `archc {command} --json`"
    rows = ROW.findall(m.group(1))
    paths = {p for p, _ in rows}
    required = {p for p, kind in rows if "optional" not in kind}
    return paths, required


def _paths(value, path: str, doc: set[str]):
    """Leaf paths of a JSON value (`model`, `flops_per_token.seq`, `[].block`): lists as `[]`,
    the keys of a map documented as `*` as `*`; a value is a leaf where the doc lists nothing
    under it."""
    under = not path or any(p.startswith((path + ".", path + "[]")) for p in doc)
    if not under or not isinstance(value, dict | list) or not value:
        yield path
    elif isinstance(value, list):
        for v in value:
            yield from _paths(v, path + "[]", doc)
    else:
        star = f"{path}.*" if path else "*"
        wild = any(p == star or p.startswith((star + ".", star + "[]")) for p in doc)
        for k, v in value.items():
            yield from _paths(v, star if wild else f"{path}.{k}" if path else k, doc)


def _check(command: str, actual, complete: bool = True) -> None:
    """Every field printed is documented; with `complete`, every documented field printed."""
    doc, required = _documented(command)
    seen = set(_paths(actual, "", doc))
    leaves = {p for p in required if not any(q.startswith((p + ".", p + "[]")) for q in doc)}
    assert seen - doc == set(), f"`archc {command} --json` fields not in docs/cli.md"
    missing = leaves - seen if complete else set()
    assert missing == set(), f"docs/cli.md fields `archc {command} --json` lacks"


def test_cli_doc_matches_the_json(capsys):
    spec = str(ROOT / "specs" / "t5_small_style.arch")
    _check("explain", json.loads(_cli(capsys, "explain", spec, "--json")))
    _check("stats", json.loads(_cli(capsys, "stats", spec, "--json", "--seq", "64")))
    _check("diff", _pair("encoder"))
    _check("diff", _pair("identical"), complete=False)  # no layers to show their fields


def test_cli_doc_matches_verify_json(capsys):
    spec = str(ROOT / "specs" / "llama_tiny.arch")
    _check("verify", json.loads(_cli(capsys, "verify", spec, "--json")))
