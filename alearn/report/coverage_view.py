"""The report's coverage section: per class, the clusters its trusted labels cover; the
pockets no trusted label covers yet, each with a strip of small JPEG thumbnails embedded
in the page as data URIs (at most :data:`alearn.report.coverage.MAX_POCKETS` strips of
:data:`alearn.report.coverage.PER_POCKET`, each at most :data:`THUMB` px, so the page
stays small and self-contained). Computed by :mod:`alearn.report.coverage`."""

from __future__ import annotations

import base64
import io
import logging
import warnings
from html import escape
from pathlib import Path
from typing import Any

from alearn.report.markup import nodata, table

log = logging.getLogger(__name__)

#: a thumbnail's longest side, in pixels
THUMB = 96
#: a source image larger than this is not decoded for a thumbnail
MAX_SOURCE_BYTES = 64 << 20


def thumbnail(image_root: Path, path: str) -> str | None:
    """A data URI of a small JPEG of the image at ``image_root / path``; None when the file
    is gone, not a regular file inside the image root, too large or unreadable."""
    from PIL import Image, ImageOps

    root = image_root.resolve()
    try:
        src = (root / path).resolve()
        if root not in src.parents or not src.is_file() or \
                src.stat().st_size > MAX_SOURCE_BYTES:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(src) as img:
                img.draft("RGB", (THUMB * 2, THUMB * 2))  # JPEG: decode at a lower scale
                small = ImageOps.exif_transpose(img).convert("RGB")
                small.thumbnail((THUMB, THUMB))
        buf = io.BytesIO()
        small.save(buf, format="JPEG", quality=75)
    except (OSError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as exc:
        log.info("no thumbnail for %s (%s)", path, type(exc).__name__)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def section(cov: dict[str, Any], image_root: Path) -> str:
    """The coverage section's HTML (every stored string escaped)."""
    title = "<h2>Coverage of the pool</h2>"
    if cov.get("why") or not cov.get("clusters"):
        return title + nodata(cov.get("why") or "no clusters.")
    k, pockets = cov["n_clusters"], cov["pockets"]
    intro = (f"<p>The pool's embeddings fall into {k} clusters (k-means over "
             f"{cov['clustered']} embedded items of a seeded sample of {cov['sampled']} of "
             f"{cov['pool_size']}). Each trusted label is placed in its nearest cluster: "
             f"{cov['trusted_placed']} of {cov['trusted_labels']} trusted labels are of "
             f"embedded items. <b>{cov['uncovered']} of {k} clusters</b>, about "
             f"{100 * cov['uncovered_share']:.0f}% of the pool, hold no trusted label "
             "yet.</p>")
    rows = [[cls, c["trusted"], len(c["clusters"]),
             ", ".join(str(x) for x in c["clusters"]) or "-", 100 * c["share"]]
            for cls, c in cov["by_class"].items()]
    grid = table(["class", "trusted labels", "clusters covered", "which clusters",
                  "% of the pool in them"], rows)
    if not pockets:
        return title + intro + grid + "<p>Every cluster holds a trusted label.</p>"
    shown = (f"the {len(pockets)} largest" if len(pockets) < cov["uncovered"] else "each")
    out = [title, intro, grid, f"<h3>Pockets no trusted label covers yet</h3><p>For {shown}: "
           "the items nearest its centre, from the sample.</p>"]
    for p in pockets:
        predicted = p.get("predicted") or {}
        guess = "; the current head predicts " + ", ".join(
            f"{escape(str(c))} {100 * v:.0f}%" for c, v in
            sorted(predicted.items(), key=lambda kv: -kv[1])[:3]) if predicted else ""
        out.append(f"<p><b>Cluster {p['cluster']}</b>: about {p['estimated_items']} items "
                   f"({100 * p['share']:.1f}% of the pool){guess}.</p>")
        out.append(_strip(p["items"], image_root))
    return "".join(out)


def _strip(items: list[dict[str, Any]], image_root: Path) -> str:
    cells = []
    for it in items:
        uri = thumbnail(image_root, str(it["path"]))
        label = escape(f"item {it['item_id']}: {it['path']}")
        if uri is None:
            cells.append(f'<span class="missing" title="{label}">{label} (no image)</span>')
        else:
            cells.append(f'<img src="{uri}" alt="{label}" title="{label}">')
    return f'<div class="strip">{"".join(cells)}</div>'
