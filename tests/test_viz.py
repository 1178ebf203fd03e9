"""`archc viz`: a well-formed, self-contained, deterministic SVG with a box per top-level layer,
repeats drawn once with ×N, shared weights marked, residual bypasses, and encoder and decoder
side by side."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from conftest import ROOT

import archc
from archc.cli import main
from archc.explain import explain
from archc.lower import lower
from archc.viz import esc, html, svg

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
