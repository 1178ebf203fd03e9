"""Open `archc viz` pictures in a real headless browser and check they draw something.

    python tools/viz_browser_check.py [FILE.svg|FILE.html ...]

With no files it draws specs/llama_tiny.arch (block diagram, SVG and HTML) and its `--ir`
graph into a temporary folder first. Each file is rendered by headless Chromium with the
network off (`--disable-background-networking`, and the files reference nothing outside
themselves) into a PNG, which is decoded here (zlib and the five PNG filters, no imaging
library) and must be non-blank: enough non-white pixels, and the box fill colours present.
Exits 0 when every file passes, 1 when one fails, 2 when no Chromium is installed
(Debian: `apt-get install -y chromium`).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOX_BLUE = (0xDB, 0xE9, 0xF6)  # `.box` / `.op` fill in archc/viz


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the unfiltered rows (RGB or RGBA, 8 bits) of a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + size]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6), f"unexpected PNG format {depth}/{color}"
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += size + 12
    raw, stride, rows = zlib.decompress(idat), width * channels, []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride if kind else 0):
            a = line[i - channels] if i >= channels else 0
            b, c = prev[i], prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, rows


def pixels(width: int, rows: list[bytes]) -> list[tuple[int, int, int]]:
    channels = len(rows[0]) // width
    return [tuple(r[i:i + 3]) for r in rows for i in range(0, len(r), channels)]


def render(browser: str, page: Path, png: Path) -> None:
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--hide-scrollbars",
                    f"--screenshot={png}", "--window-size=800,1000", page.as_uri()],
                   check=True, capture_output=True, timeout=120)


def check(browser: str, page: Path, work: Path) -> str | None:
    """None when the page renders non-blank, else why not."""
    png = work / (page.name + ".png")
    render(browser, page, png)
    width, _, rows = decode_png(png.read_bytes())
    px = pixels(width, rows)
    ink = sum(1 for p in px if p != (255, 255, 255))
    if ink < 0.01 * len(px):
        return f"{page}: blank ({ink} of {len(px)} pixels drawn)"
    if not any(max(abs(x - y) for x, y in zip(p, BOX_BLUE)) <= 2 for p in px):
        return f"{page}: no box drawn (fill {BOX_BLUE} not found)"
    return None


def main(argv: list[str]) -> int:
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(b)), None)
    if browser is None:
        print("no chromium found: apt-get install -y chromium", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pages = [Path(a).resolve() for a in argv]
        if not pages:
            spec = str(ROOT / "specs" / "llama_tiny.arch")
            for name, extra in (("blocks.svg", []), ("blocks.html", []), ("ir.svg", ["--ir"])):
                subprocess.run(["archc", "viz", spec, *extra, "-o", str(work / name)],
                               check=True, capture_output=True)
                pages.append(work / name)
        failures = [f for f in (check(browser, p, work) for p in pages) if f]
        for f in failures:
            print(f, file=sys.stderr)
        print(f"{len(pages) - len(failures)} of {len(pages)} pages render")
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
