"""Ingest's batched writes on both databases (one ``executemany`` on SQLite, one COPY on
PostgreSQL): every value a manifest, EXIF or the file system can give comes back as it
went in, and re-ingest, duplicates and rejections behave the same on either store."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from factories import image_tree, make_project, write_image
from sqlalchemy import select

from alearn.ingestion.driver import ingest
from alearn.store import FileRecord, Item, Label

ODD = "c/tab\tback\\slash new\nline 'quote\" é.png"  # what COPY's text format must escape

MANIFEST = """path,label,source,captured_at,lat,lon,license,camera,note
a/img0.png,cat,trap-1,2024-05-31,48.85,2.35,CC-BY-4.0,X100,"tab\there, \\N and \\\\"
a/img1.png,,trap-2,2024-05-31T14:02:00+02:00,,,,,
b/img3.jpg,dog,,,,,,Z9,
"""


def test_every_value_comes_back_on_both_databases(db_url: str, tmp_path: Path) -> None:
    images = image_tree(tmp_path / "images")
    write_image(images / ODD, seed=40)
    shutil.copy(images / "a" / "img2.png", images / "c" / "copy of img2.png")  # duplicate
    (images / "c" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    manifest = tmp_path / "m.csv"
    manifest.write_text(MANIFEST)
    project = make_project(tmp_path / "proj", images, database_url=db_url)
    try:
        first = ingest(project, manifest=manifest, batch_size=2)
        s = ingest(project, batch_size=2)  # the scan adds the rest
        assert (first.added, first.rejected) == (3, 0)
        assert (s.added, s.duplicate, s.rejected, s.skipped) == (4, 1, 1, 3)
        with project.store.session() as ses:
            got = {i.path: i for i in ses.scalars(select(Item))}
            recs = {f.path: f for f in ses.scalars(select(FileRecord))}
            labels = {p: (lab, o, g, c) for p, lab, o, g, c in ses.execute(
                select(Item.path, Label.label, Label.origin, Label.is_gold, Label.confidence)
                .join(Label, Label.item_id == Item.id))}
        assert sorted(got) == sorted(["a/img0.png", "a/img1.png", "a/img2.png", "b/img3.jpg",
                                      "b/img4.jpg", "b/img5.jpg", ODD])
        a0 = got["a/img0.png"]
        assert (a0.source, a0.license, a0.lat, a0.lon) == ("trap-1", "CC-BY-4.0", 48.85, 2.35)
        assert a0.captured_at == dt.datetime(2024, 5, 31)
        assert a0.extra == {"camera": "X100", "note": "tab\there, \\N and \\\\"}
        assert got["a/img1.png"].captured_at == dt.datetime(2024, 5, 31, 12, 2)
        assert got["a/img1.png"].extra == {} and got[ODD].extra == {}
        assert (got[ODD].width, got[ODD].height) == (32, 24)
        assert len({i.sha256 for i in got.values()}) == 7
        assert labels == {"a/img0.png": ("cat", "manifest", True, 1.0),
                          "b/img3.jpg": ("dog", "manifest", True, 1.0)}
        dup = recs["c/copy of img2.png"]
        assert (dup.status, dup.item_id) == ("duplicate", got["a/img2.png"].id)
        bad = recs["c/broken.png"]
        assert bad.status == "rejected" and bad.item_id is None and "not an image" in bad.reason
        item = recs[ODD]
        st = (images / ODD).stat()
        assert (item.status, item.size, item.mtime_ns) == ("item", st.st_size, st.st_mtime_ns)
        assert isinstance(item.seen_at, dt.datetime) and isinstance(a0.added_at, dt.datetime)
        again = ingest(project)
        assert (again.added, again.skipped) == (0, 9)
    finally:
        project.store.dispose()
