"""What both diagrams share: escaping, the drawing primitives, the page around an SVG.

Every size is a fixed computation on character counts (7 px a character at 12 px monospace):
no layout library, no fonts fetched, no links or scripts, and the same graph gives the same
bytes.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

CHAR = 7  # px per character at 12 px monospace

MARKER = """<defs><marker id="a" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" \
markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#222"/></marker>\
</defs>"""


def esc(text: str) -> str:
    return escape(str(text), {'"': "&quot;", "'": "&#39;"})


class Canvas:
    """An SVG body built as a list of lines."""

    def __init__(self) -> None:
        self.out: list[str] = []

    def emit(self, text: str) -> None:
        self.out.append(text)

    def text(self, x: int, y: int, s: str, cls: str = "t", anchor: str = "middle") -> None:
        self.emit(f'<text x="{x}" y="{y}" class="{cls}" text-anchor="{anchor}">{esc(s)}</text>')

    def arrow(self, x1: int, y1: int, x2: int, y2: int, cls: str = "e") -> None:
        self.emit(f'<path d="M{x1},{y1} L{x2},{y2}" class="{cls}" marker-end="url(#a)"/>')

    def plus(self, x: int, y: int) -> None:
        """A ⊕: where a residual or parallel branches are summed."""
        self.emit(f'<circle cx="{x}" cy="{y}" r="7" class="plus"/>'
                  f'<path d="M{x - 4},{y} h8 M{x},{y - 4} v8" class="e"/>')

    def document(self, name: str, width: int, height: int, style: str) -> str:
        body = "\n".join(self.out)
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
                f'viewBox="0 0 {width} {height}" font-family="monospace">\n'
                f'<title>{esc(name)}</title>\n{style}\n{MARKER}\n{body}\n</svg>\n')


def page(name: str, svg: str) -> str:
    """A page around an SVG: opens in a browser as is."""
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>'
            f'{esc(name)}</title></head>\n<body>\n{svg}</body></html>\n')
