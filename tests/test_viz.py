"""`archc viz`: a well-formed, self-contained, deterministic SVG with a box per top-level layer,
repeats drawn once with ×N, shared weights marked, residual bypasses, norm placement, parallel
branches side by side, encoder and decoder side by side; `--ir`: the dataflow graph grouped by
layer; and the committed pictures in docs/viz/ are current."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from conftest import ROOT, check_golden
from conftest import SPECS as ALL_SPECS

import archc
from archc import cli_view
from archc.cli import main
from archc.explain import explain
from archc.lower import lower
from archc.viz import esc, html, svg, svg_ir

NS = "{http://www.w3.org/2000/svg}"
SPECS = ["llama_tiny", "t5_small_style", "interleaved_local_global", "universal_shared"]


def _graph(name: str):
    return lower(archc.parse_file(ROOT / "specs" / f"{name}.arch"))


def _tree(text: str) -> ET.Element:
    root = ET.fromstring(text)
    assert root.tag == NS + "svg"
    return root


def _groups(root: ET.Element, cls: str) -> list[ET.Element]:
    return [g for g in root.iter(NS + "g") if g.get("class") == cls]


def _texts(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(NS + "text")]


@pytest.mark.parametrize("name", SPECS)
def test_a_box_per_top_level_layer_and_a_frame_per_repeat(name):
    g = _graph(name)
    root = _tree(svg(g))
    lines = explain(g)
    repeats = [x.scope for x in lines if x.block == "repeat"]
    layers = [x.scope for x in lines if x.block != "repeat"]
    assert [r.get("data-scope") for r in _groups(root, "repeat")] == repeats
    scopes = {b.get("data-scope") for b in _groups(root, "layer")}
    assert set(layers) <= scopes
    # nothing fetched: no links, no external references, no scripts
    text = svg(g)
    assert "href" not in text and "<script" not in text and "@import" not in text


@pytest.mark.parametrize("name", SPECS)
def test_byte_identical_on_two_runs(name, tmp_path):
    a, b = tmp_path / "a.svg", tmp_path / "b.svg"
    spec = str(ROOT / "specs" / f"{name}.arch")
    assert main(["viz", spec, "-o", str(a)]) == 0
    assert main(["viz", spec, "-o", str(b)]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() == svg(_graph(name)).encode()


def test_repeat_labels_residuals_and_shared_weights():
    root = _tree(svg(_graph("llama_tiny")))
    texts = _texts(root)
    assert any("repeat layers.{0..3} ×4" in t for t in texts)
    assert "input_ids" in texts and any(t.startswith("logits: f32[batch,seq,1024]")
                                        for t in texts)
    assert "f32[batch,seq,256]" in texts  # shapes on the edges
    # pre-norm: two bypasses per layer, around the norm and its sublayer
    frame = _groups(root, "repeat")[0]
    assert len([p for p in frame.iter(NS + "path") if p.get("class") == "res"]) == 2
    assert len(list(frame.iter(NS + "circle"))) == 2
    shared = _tree(svg(_graph("universal_shared")))
    assert any("×6" in t and "shared weights" in t for t in _texts(shared))
    assert [r.get("class") for r in shared.iter(NS + "rect")
            if "frame" in (r.get("class") or "")] == ["frame shared"]


def test_interleaved_variants_side_by_side():
    root = _tree(svg(_graph("interleaved_local_global")))
    frames = _groups(root, "repeat")
    assert [f.get("data-scope") for f in frames] == ["layer.{0,2}", "layer.{1,3}"]
    (a, *_), (b, *_) = (list(f.iter(NS + "rect")) for f in frames)
    assert a.get("y") == b.get("y") and int(a.get("x")) < int(b.get("x"))


def test_encoder_and_decoder_side_by_side_with_cross_attention():
    root = _tree(svg(_graph("t5_small_style")))
    frames = {f.get("data-scope"): next(f.iter(NS + "rect")) for f in _groups(root, "repeat")}
    enc, dec = frames["encoder.{0..1}"], frames["decoder.{0..1}"]
    assert int(enc.get("x")) + int(enc.get("width")) < int(dec.get("x"))
    assert len([p for p in root.iter(NS + "path") if p.get("class") == "cross"]) == 1
    texts = _texts(root)
    assert "input_ids" in texts and "decoder_input_ids" in texts
    # one embedding shared by both stacks and the head: marked where it is reused
    assert texts.count("embed · tied to shared") == 1 and "lm_head · tied to shared" in texts


def test_names_are_escaped():
    g = _graph("llama_tiny")
    g.name = 'm<&>"\'x'
    text = svg(g)
    root = _tree(text)
    assert root.find(NS + "title").text == g.name
    assert "m&lt;&amp;&gt;&quot;&#39;x" in text
    assert esc('<a b="c">&') == "&lt;a b=&quot;c&quot;&gt;&amp;"
    page = html(g)
    assert page.startswith("<!DOCTYPE html>") and svg(g) in page


def test_cli_html_and_bad_extension(tmp_path, capsys):
    spec = str(ROOT / "specs" / "llama_tiny.arch")
    out = tmp_path / "m.html"
    assert main(["viz", spec, "-o", str(out)]) == 0
    assert "<svg" in out.read_text() and out.read_text().endswith("</html>\n")
    assert main(["viz", spec, "-o", str(tmp_path / "m.png")]) == 1
    assert "E0400" in capsys.readouterr().err
    assert not (tmp_path / "m.png").exists()


def _rect(g: ET.Element) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 of a group's first rect."""
    r = next(g.iter(NS + "rect"))
    x, y = int(r.get("x")), int(r.get("y"))
    return x, y, x + int(r.get("width")), y + int(r.get("height"))


def _layer(root: ET.Element, scope: str) -> tuple[int, int, int, int]:
    return _rect(next(g for g in _groups(root, "layer") if g.get("data-scope") == scope))


def test_parallel_branches_side_by_side():
    """GPT-J: attention and MLP both read ln_1's output and are summed: next to each other,
    above the norm, meeting in one ⊕ that the one bypass also ends in."""
    root = _tree(svg(_graph("gptj_parallel")))
    (par,) = _groups(root, "parallel")
    assert [g.get("data-scope") for g in _groups(par, "layer")] == ["h.0.attn", "h.0.mlp"]
    attn, mlp, norm = (_layer(root, f"h.0.{s}") for s in ("attn", "mlp", "ln_1"))
    assert attn[1] < mlp[3] and mlp[1] < attn[3]  # y-ranges overlap
    assert attn[2] < mlp[0]  # x-ranges are disjoint
    assert norm[1] > max(attn[3], mlp[3])  # the norm below both (y grows downwards)
    frame = _groups(root, "repeat")[0]
    assert len([p for p in frame.iter(NS + "path") if p.get("class") == "res"]) == 1
    assert len(list(frame.iter(NS + "circle"))) == 1


def test_sequential_layers_are_not_parallel():
    """llama: the MLP reads the sum after attention, so the two stack."""
    root = _tree(svg(_graph("llama_tiny")))
    assert _groups(root, "parallel") == []
    attn, mlp = _layer(root, "layers.0.self_attn"), _layer(root, "layers.0.mlp")
    assert mlp[3] < attn[1]


def test_summed_embeddings_side_by_side_with_their_inputs():
    """BERT: word, position and token-type embeddings are independent branches of one sum."""
    root = _tree(svg(_graph("bert_base")))
    (par,) = _groups(root, "parallel")
    assert [g.get("data-scope") for g in _groups(par, "layer")] == ["word", "position",
                                                                   "token_type"]
    boxes = [_layer(root, s) for s in ("word", "position", "token_type")]
    assert len({b[1] for b in boxes}) == 1
    assert boxes[0][2] < boxes[1][0] and boxes[1][2] < boxes[2][0]
    texts = _texts(root)
    assert "token_type_ids" in texts and texts.count("input_ids") == 2
    assert "f32[seq,768]" in texts  # the position table's broadcast type, on its branch


@pytest.mark.parametrize("name, placement", [("llama_tiny", "pre-norm"),
                                             ("bert_base", "post-norm"),
                                             ("sandwich", "sandwich norm")])
def test_norm_placement(name, placement):
    root = _tree(svg(_graph(name)))
    heads = [t for t in _texts(root) if t.startswith("repeat ")]
    assert heads and all(t.endswith(f"·  {placement}") for t in heads)


def test_sandwich_bypass_goes_around_both_norms():
    root = _tree(svg(_graph("sandwich")))
    pre, post = (_layer(root, f"layer.0.sandwich.{s}") for s in ("pre_ffn", "post_ffn"))
    ys = [[int(v) for v in p.get("d").replace("M", "").replace("L", " ").replace(",", " ")
           .split()[1::2]] for p in root.iter(NS + "path") if p.get("class") == "res"]
    assert len(ys) == 3
    assert any(y[0] > pre[3] and y[-1] < post[1] for y in ys)


# ------------------------------------------------------------ --ir
def _ir(name: str, *args: str, tmp_path) -> ET.Element:
    out = tmp_path / f"{name}.svg"
    assert main(["viz", str(ROOT / "specs" / f"{name}.arch"), "--ir", *args, "-o", str(out)]) == 0
    return _tree(out.read_text())


def _nodes(root: ET.Element) -> list[ET.Element]:
    return [g for g in root.iter(NS + "g") if g.get("class") == "node"]


def test_ir_clusters_per_layer_and_collapsed_repeats(tmp_path):
    root = _ir("llama_tiny", tmp_path=tmp_path)
    clusters = [g for g in root.iter(NS + "g") if (g.get("class") or "").startswith("cluster")]
    assert [(g.get("data-scope"), g.get("class")) for g in clusters] == [
        ("embed_tokens", "cluster"), ("layers.0", "cluster"),
        ("layers.1", "cluster collapsed"), ("layers.2", "cluster collapsed"),
        ("layers.3", "cluster collapsed"), ("norm", "cluster"), ("lm_head", "cluster")]
    graph = archc.optimize(_graph("llama_tiny"), 1)
    ops = [n for n in graph.nodes() if n.kind == "op"]
    layer0 = [n for n in ops if n.scope.startswith("layers.0.") or n.scope == "layers.0"]
    assert len([g for g in _nodes(clusters[1]) if g.get("data-kind") == "op"]) == len(layer0)
    subs = {g.get("data-scope") for g in clusters[1].iter(NS + "g") if g.get("class") == "sub"}
    assert {"layers.0.input_norm", "layers.0.self_attn", "layers.0.mlp"} <= subs
    # every op is drawn, or counted in a collapsed step
    counted = sum(int(t.split(" ops")[0]) for t in _texts(root) if " ops · " in t)
    drawn = len([g for g in _nodes(root) if g.get("data-kind") == "op"])
    assert drawn + counted == len(ops)
    texts = _texts(root)
    assert "input_ids" in texts and "logits" in texts and "f32[batch,seq,1024]" in texts


@pytest.mark.parametrize("after", [None, "fuse"])
def test_ir_shared_repeat_split_into_its_steps(after, tmp_path):
    """`repeat 6 shared`: every step has the same scope; the id ranges lowering recorded (and,
    for the ops a pass made, their operands) say which step a node belongs to."""
    root = _ir("universal_shared", *(["--after", after] if after else []), tmp_path=tmp_path)
    steps = [(g.get("data-scope"), g.get("class")) for g in root.iter(NS + "g")
             if g.get("data-scope", "").startswith("layer.")
             and g.get("class").startswith("cluster")]
    assert steps == [("layer.0", "cluster")] + [(f"layer.{i}", "cluster collapsed")
                                                 for i in range(1, 6)]
    graph = _graph("universal_shared")
    graph = archc.optimize(graph, 1) if after is None else cli_view.ir_after(graph, after)
    ops = [n for n in graph.nodes() if n.kind == "op"]
    counts = [int(t.split(" ops")[0]) for t in _texts(root) if " ops · " in t]
    drawn = len([g for g in _nodes(root) if g.get("data-kind") == "op"])
    assert drawn + sum(counts) == len(ops)
    assert len(set(counts)) == 1  # five identical steps


def test_ir_two_layer_model_expanded_without_overlaps(tmp_path):
    root = _ir("t5_small_style", tmp_path=tmp_path)
    assert not [g for g in root.iter(NS + "g") if "collapsed" in (g.get("class") or "")]
    boxes = sorted(_rect(g) for g in _nodes(root))
    for a in boxes:  # no two node boxes overlap
        for b in boxes:
            if a is not b and a != b:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    assert len(set(boxes)) == len(boxes)


def test_ir_after_a_pass(tmp_path):
    def ops(root):
        return {next(g.iter(NS + "text")).text for g in _nodes(root)
                if g.get("data-kind") == "op"}
    before, after = (ops(_ir("llama_tiny", "--after", p, tmp_path=tmp_path))
                     for p in ("fold_constants", "fuse"))
    assert "reduce_mean" in before and "rms_norm" not in before
    assert "fused_rms_norm" in after and "reduce_mean" not in after


def test_ir_byte_identical_and_html(tmp_path):
    spec = str(ROOT / "specs" / "gptj_parallel.arch")
    a, b, c = tmp_path / "a.svg", tmp_path / "b.svg", tmp_path / "c.html"
    for out in (a, b, c):
        assert main(["viz", spec, "--ir", "-o", str(out)]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_text() == svg_ir(archc.optimize(_graph("gptj_parallel"), 1))
    assert c.read_text().startswith("<!DOCTYPE html>") and a.read_text() in c.read_text()


@pytest.mark.parametrize("args, message", [
    (["--ir", "--after", "fold_constant"], "did you mean `fold_constants`?"),
    (["--ir", "--after", "nothing"], "passes: infer_shapes, fold_constants"),
    (["--after", "fuse"], "it needs `--ir`")])
def test_ir_bad_arguments(args, message, tmp_path, capsys):
    out = tmp_path / "x.svg"
    assert main(["viz", str(ROOT / "specs" / "llama_tiny.arch"), *args, "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "E0400" in err and message in err and "Traceback" not in err
    assert not out.exists()


# ------------------------------------------------------------ docs/viz
@pytest.mark.parametrize("spec", ALL_SPECS, ids=[p.stem for p in ALL_SPECS])
def test_docs_pictures_are_current(spec):
    """docs/viz/<spec>.svg is what `archc viz` draws today (ARCHC_UPDATE_GOLDEN=1 redraws)."""
    graph = lower(archc.parse_file(spec))
    text = svg(graph)
    root = _tree(text)
    assert "href" not in text and "<script" not in text
    lines = explain(graph)
    assert [r.get("data-scope") for r in _groups(root, "repeat")] == \
        [x.scope for x in lines if x.block == "repeat"]
    for x in lines:
        if x.block == "repeat" and x.count > 1:
            assert any(f"×{x.count}" in t for t in _texts(root))
    check_golden(ROOT / "docs" / "viz" / f"{spec.stem}.svg", text)


def test_docs_ir_picture_is_current():
    check_golden(ROOT / "docs" / "viz" / "llama_tiny.ir.svg",
                 svg_ir(archc.optimize(_graph("llama_tiny"), 1)))


def test_browser_check_decodes_every_png_filter():
    """tools/viz_browser_check.py reads Chromium's screenshots without an imaging library:
    its decoder must undo each of the five PNG row filters."""
    import importlib.util
    import struct
    import zlib

    spec = importlib.util.spec_from_file_location("vbc", ROOT / "tools" / "viz_browser_check.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    width, ch = 7, 4
    rows = [bytes((17 * x + 31 * y * y + 5) % 256 for x in range(width * ch)) for y in range(10)]

    def paeth(a, b, c):
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        return a if pa <= pb and pa <= pc else b if pb <= pc else c

    raw, prev = b"", bytes(width * ch)
    for y, row in enumerate(rows):
        kind, out = y % 5, bytearray()
        for i, v in enumerate(row):
            a, b = row[i - ch] if i >= ch else 0, prev[i]
            c = prev[i - ch] if i >= ch else 0
            out.append((v - [0, a, b, (a + b) // 2, paeth(a, b, c)][kind]) % 256)
        raw += bytes([kind]) + bytes(out)
        prev = row

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", 0)
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, 10, 8, 6, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    w, h, decoded = tool.decode_png(png)
    assert (w, h) == (width, 10) and decoded == rows
    assert tool.pixels(w, decoded)[1] == tuple(rows[0][4:7])
