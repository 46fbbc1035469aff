"""The report's HTML building blocks: style, tables, "no data" notes and figures."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

#: the report page and its plots are for the whole team (and any web server) to read,
#: whatever the umask: they hold no secret
FILE_MODE = 0o644
CSS = """
body{font:15px/1.45 system-ui,sans-serif;color:#222;max-width:1100px;margin:24px auto;
padding:0 16px;overflow-wrap:anywhere}
h1{font-size:24px;margin-bottom:4px} h2{font-size:19px;margin-top:32px;border-bottom:1px solid #ddd}
h3{font-size:16px;margin:16px 0 4px}
.meta{color:#666} .nodata{color:#777;font-style:italic;background:#f6f6f6;padding:10px}
table{border-collapse:collapse;margin:8px 0;font-size:13px;max-width:100%}
table.wide{font-size:12px} th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;
overflow-wrap:normal} td.long{overflow-wrap:anywhere}
table.wide th,table.wide td{padding:3px 5px} th{background:#f0f0f0;vertical-align:bottom}
td.num{text-align:right} td.num,td.nw{white-space:nowrap;overflow-wrap:normal}
tr.flagged td{background:#fde2e2} figure{margin:8px 0}
figcaption{color:#555;font-size:13px} .scroll{overflow-x:auto}
img{max-width:100%;border:1px solid #eee} .verdict{padding:10px 14px;border-left:6px solid;
font-size:16px} .yes{border-color:#2ca02c;background:#eef8ee} .no{border-color:#ff7f0e;
background:#fff5e8}
.strip{display:flex;flex-wrap:wrap;gap:4px;margin:4px 0 14px} .strip img{border:1px solid #ddd}
.strip .missing{font-size:12px;color:#777;max-width:160px}
"""
#: a table with more columns than this gets the smaller font
WIDE = 7
#: a text cell longer than this may break anywhere
LONG = 24
SCRIPT = """window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  document.body.dataset.imagesTotal = imgs.length;
  document.body.dataset.imagesLoaded = imgs.filter(function (i) {
    return i.complete && i.naturalWidth > 0; }).length;
});"""


class Figures:
    """Draws the plots into the files folder and returns their HTML."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.count = folder, 0

    def html(self, name: str, draw: Callable[[Path], Any], caption: str, alt: str) -> str:
        draw(self.folder / name)
        (self.folder / name).chmod(FILE_MODE)
        self.count += 1
        src = escape(f"{quote(self.folder.name)}/{quote(name)}")
        return (f'<figure><img src="{src}" alt="{escape(alt)}"><figcaption>{caption}'
                "</figcaption></figure>")


def nodata(why: str) -> str:
    return f'<p class="nodata">No data yet: {escape(why)}</p>'


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, dt.datetime):
        return v.strftime("%Y-%m-%d %H:%M")
    return str(v)


def table(columns: list[str], rows: list[list[Any]], classes: list[str] | None = None) -> str:
    """A table in a scrolling box (for narrow windows; at 1280 px the report's tables fit:
    headers and text cells wrap, and a table of many columns gets a smaller font)."""
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        cells = "".join(f"<td{td_class(v)}>{escape(fmt(v))}</td>" for v in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    wide = ' class="wide"' if len(columns) > WIDE else ""
    return (f'<div class="scroll"><table{wide}><tr>{head}</tr>{"".join(body)}</table>'
            "</div>")


def td_class(v: Any) -> str:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return ' class="num"'
    if isinstance(v, dt.datetime):
        return ' class="nw"'
    # a long text (an error, a path, an e-mail login) may break anywhere, so that its
    # column, not the page, gives way; short cells and headers break between words only
    return ' class="long"' if isinstance(v, str) and len(v) > LONG else ""


def page(title: str, body: list[str]) -> str:
    """A whole HTML page with the report's style and its image-load check."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{CSS}</style>"
            f"<script>{SCRIPT}</script></head>\n<body>\n" + "\n".join(body)
            + "\n</body></html>\n")
