"""Ingest: scanning, decoding checks, duplicates, manifests, EXIF, re-ingest and the CLI."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from factories import write_image
from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational
from sqlalchemy import select

import alearn.ingestion.driver as ingest_mod
from alearn.cli import cli
from alearn.config import Settings
from alearn.exceptions import IngestError
from alearn.ingestion.decode import Decoded
from alearn.ingestion.driver import ingest
from alearn.ingestion.exif import gps_degrees, parse_exif_datetime
from alearn.ingestion.manifest import read_manifest
from alearn.ingestion.records import IngestSummary
from alearn.project import Project
from alearn.store import FileRecord, Item, Label

SIX = ["a/img0.png", "a/img1.png", "a/img2.png", "b/img3.jpg", "b/img4.jpg", "b/img5.jpg"]


def files(project: Project) -> dict[str, FileRecord]:
    with project.store.session() as s:
        return {f.path: f for f in s.scalars(select(FileRecord))}


def items(project: Project) -> dict[str, Item]:
    with project.store.session() as s:
        return {i.path: i for i in s.scalars(select(Item))}


def labels(project: Project) -> dict[str, tuple[str, str, bool]]:
    with project.store.session() as s:
        q = select(Item.path, Label.label, Label.origin, Label.is_gold).join(
            Label, Label.item_id == Item.id)
        return {p: (lab, origin, gold) for p, lab, origin, gold in s.execute(q)}


def reasons(summary: IngestSummary) -> dict[str, str]:
    return dict(summary.rejections)


@pytest.fixture
def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Spy on the real decoder: the list of files it was asked to read."""
    calls: list[Path] = []
    real = ingest_mod.decode_image

    def spy(path: Path, **kw: int) -> Decoded:
        calls.append(Path(path))
        return real(path, **kw)

    monkeypatch.setattr(ingest_mod, "decode_image", spy)
    return calls


# --- folders, both databases -------------------------------------------------------------

def test_good_images_in_nested_folders_on_both_databases(
        tmp_path: Path, image_dir: Path, db_url: str, count_decodes: list[Path]) -> None:
    project = Project.init(tmp_path / "proj", classes=["cat", "dog"], images=image_dir,
                           settings=Settings(database_url=db_url))
    first = ingest(project)
    assert (first.added, first.duplicate, first.rejected, first.skipped) == (6, 0, 0, 0)
    got = items(project)
    assert sorted(got) == SIX
    for rel, item in got.items():
        data = (image_dir / rel).read_bytes()
        assert item.sha256 == hashlib.sha256(data).hexdigest()
        assert (item.width, item.height) == (32, 24)
    recs = files(project)
    assert {r.status for r in recs.values()} == {"item"}
    assert recs["a/img0.png"].item_id == got["a/img0.png"].id
    assert recs["a/img0.png"].size == (image_dir / "a/img0.png").stat().st_size
    # idempotent, and the second run reads no file
    assert len(count_decodes) == 6
    second = ingest(project)
    assert second.to_dict() == {"added": 0, "duplicate": 0, "rejected": 0, "skipped": 6,
                                "updated": 0, "rejections": [], "warnings": [], "changed": [],
                                "earlier_rejections": []}
    assert len(count_decodes) == 6
    assert len(items(project)) == 6
    project.store.dispose()


def test_every_listed_extension_is_found_case_insensitively(project: Project) -> None:
    root = project.image_root
    for i, name in enumerate(["c/x.JPEG", "c/x.webp", "c/x.BMP", "c/x.tif", "c/x.TIFF"]):
        write_image(root / name, seed=100 + i)
    (root / "c" / "notes.txt").write_text("not an image, and not an image name")
    s = ingest(project)
    assert s.added == 11 and s.rejected == 0
    assert {"c/x.JPEG", "c/x.webp", "c/x.BMP", "c/x.tif", "c/x.TIFF"} <= set(items(project))


def test_hidden_folders_and_the_data_dir_are_not_scanned(tmp_path: Path) -> None:
    root = tmp_path / "p"
    write_image(root / "keep" / "a.png", seed=1)
    write_image(root / ".cache" / "b.png", seed=2)
    project = Project.init(root, classes=["x", "y"], images=root)  # image root = project
    write_image(project.data_dir / "c.png", seed=3)
    assert ingest(project).added == 1
    assert list(items(project)) == ["keep/a.png"]


# --- rejections ----------------------------------------------------------------------------

def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_bad_files_are_rejected_with_reasons_and_the_rest_ingested(project: Project) -> None:
    root = project.image_root
    (root / "bad").mkdir()
    (root / "bad" / "empty.jpg").write_bytes(b"")
    _truncate(write_image(root / "bad" / "cut.jpg", seed=10, size=(64, 64)))
    _truncate(write_image(root / "bad" / "cut.png", seed=11, size=(64, 64)))
    (root / "bad" / "text.png").write_text("this is not a png")
    Image.new("L", (3000, 3000)).save(root / "bad" / "bomb.png")  # 9 Mpx in a few KB
    assert (root / "bad" / "bomb.png").stat().st_size < 50_000
    s = ingest(project, max_pixels=1_000_000)
    assert (s.added, s.rejected) == (6, 5)
    why = reasons(s)
    assert why["bad/empty.jpg"] == "empty file (0 bytes)"
    assert "truncated" in why["bad/cut.jpg"]
    assert "truncated" in why["bad/cut.png"]
    assert why["bad/text.png"].startswith("not an image")
    assert why["bad/bomb.png"].startswith("decompression bomb: 3000x3000 = 9000000 pixels")
    recs = files(project)
    for rel, reason in why.items():
        assert (recs[rel].status, recs[rel].reason, recs[rel].item_id) == ("rejected", reason,
                                                                            None)
    assert recs["bad/empty.jpg"].size == 0


def test_pil_bomb_warning_counts_as_an_error(project: Project,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # 32x24 = 768 px: over PIL's limit (warning) but under twice it (no PIL error)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    s = ingest(project, max_pixels=10**9)
    assert (s.added, s.rejected) == (0, 6)
    assert all(r.startswith("decompression bomb") for r in reasons(s).values())


def test_symlinks_that_leave_the_image_root_are_refused(project: Project,
                                                        tmp_path: Path) -> None:
    root = project.image_root
    outside = write_image(tmp_path / "outside" / "secret.png", seed=50)
    (root / "link.png").symlink_to(outside)
    (root / "linkdir").symlink_to(outside.parent, target_is_directory=True)
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)  # inside: no loop
    (root / "inside.png").symlink_to(root / "a" / "img0.png")
    s = ingest(project)
    why = reasons(s)
    assert "outside the image root" in why["link.png"]
    assert "outside the image root" in why["linkdir"]
    assert "secret.png" not in json.dumps(s.to_dict()).replace(str(outside), "")
    assert (s.added, s.duplicate, s.rejected) == (6, 1, 2)
    assert files(project)["inside.png"].status == "duplicate"
    again = ingest(project)
    assert (again.added, again.rejected, again.skipped) == (0, 0, 9)
    # what an earlier run rejected is said again, with its reason, while it is unchanged
    assert dict(again.earlier_rejections) == {k: v for k, v in why.items()
                                              if k in ("link.png", "linkdir")}


def test_images_folder_outside_the_root_is_an_error(project: Project, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    write_image(other / "x.png")
    with pytest.raises(IngestError, match="not inside the image root"):
        ingest(project, images=other)


def test_values_the_store_cannot_hold_are_refused_on_both_databases(
        tmp_path: Path, image_dir: Path, db_url: str) -> None:
    project = Project.init(tmp_path / "proj", classes=["cat", "dog"], images=image_dir,
                           settings=Settings(database_url=db_url))
    write_image(image_dir / os.fsdecode(b"c/bad\xffname.png"), seed=60)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join([
        json.dumps({"path": "a/img0.png", "source": "s" * 300}),
        json.dumps({"path": "a/img1.png", "note": "nul\u0000here"}),
        '{"path": "a/img2.png", "lat": NaN, "lon": 1}',
        json.dumps({"path": "b/img3.jpg", "license": "ok"}),
    ]))
    s = ingest(project, manifest=manifest, images=image_dir / "c")
    assert s.added == 1 and items(project)["b/img3.jpg"].license == "ok"
    why = reasons(s)
    assert why["a/img0.png"] == ("manifest row 1: source is 300 characters long; at most 256 "
                                 "fit the store")
    assert ("", "manifest row 2: contains a NUL character") in s.rejections
    assert ("", "manifest row 3: not valid JSON (NaN is not a JSON number)") in s.rejections
    assert s.rejected == 4
    assert why["c/bad\\xffname.png"] == ("cannot be recorded: the file name is not valid "
                                       "UTF-8; rename the file")
    project.store.dispose()


# --- duplicates, incremental re-ingest, crashes ---------------------------------------------

def test_byte_identical_copies_are_merged_into_the_first_path(project: Project) -> None:
    root = project.image_root
    (root / "c").mkdir()
    shutil.copy(root / "b" / "img4.jpg", root / "c" / "again.jpg")
    shutil.copy(root / "b" / "img4.jpg", root / "a" / "copy.jpg")
    s = ingest(project)
    assert (s.added, s.duplicate) == (6, 2)
    got, recs = items(project), files(project)
    assert "b/img4.jpg" not in got and "c/again.jpg" not in got
    assert recs["a/copy.jpg"].status == "item"  # first in sorted order
    assert recs["b/img4.jpg"].status == recs["c/again.jpg"].status == "duplicate"
    assert recs["b/img4.jpg"].item_id == recs["c/again.jpg"].item_id == got["a/copy.jpg"].id
    assert recs["c/again.jpg"].size == (root / "c" / "again.jpg").stat().st_size


def test_reingest_adds_only_new_files_and_retries_changed_rejects(
        project: Project, count_decodes: list[Path]) -> None:
    root = project.image_root
    (root / "late.png").write_bytes(b"")
    first = ingest(project)
    assert (first.added, first.rejected) == (6, 1)
    # overwrite a known good file with same-size garbage: the change is seen (its
    # modification time moved, so it is hashed), reported and refused, never decoded
    target = root / "a" / "img0.png"
    old_sha = items(project)["a/img0.png"].sha256
    target.write_bytes(b"\0" * target.stat().st_size)
    n = len(count_decodes)
    second = ingest(project)
    assert (second.added, second.rejected, second.skipped) == (0, 0, 6)
    assert second.earlier_rejections == first.rejections  # the empty file, still empty
    assert [p for p, _ in second.changed] == ["a/img0.png"]
    assert "bytes changed since it was ingested" in second.changed[0][1]
    assert items(project)["a/img0.png"].sha256 == old_sha  # the item keeps its bytes' hash
    assert len(count_decodes) == n
    # a new file, and the rejected (empty) file now holds an image: both are read
    write_image(root / "b" / "new.jpg", seed=77)
    write_image(root / "late.png", seed=78)
    third = ingest(project)
    assert (third.added, third.rejected, third.skipped, len(third.changed)) == (2, 0, 5, 1)
    assert third.earlier_rejections == []
    assert sorted(count_decodes[n:]) == sorted([root / "b" / "new.jpg", root / "late.png"])
    assert files(project)["late.png"].status == "item"
    assert files(project)["late.png"].reason is None


def test_a_touched_file_with_the_same_bytes_is_no_change(project: Project) -> None:
    ingest(project)
    target = project.image_root / "a" / "img0.png"
    os.utime(target, ns=(1, 1))
    again = ingest(project)
    assert again.changed == [] and again.skipped == again.to_dict()["skipped"] > 0
    assert files(project)["a/img0.png"].mtime_ns == 1  # recorded, so next time is cheap


def test_a_fifo_or_a_huge_file_is_rejected_unread(project: Project) -> None:
    fifo = project.image_root / "x.png"
    os.mkfifo(fifo)
    big = project.image_root / "big.png"
    big.write_bytes(b"\0" * (2 << 20))
    project.config.ingest.max_file_mb = 1.0
    summary = ingest(project)  # would hang forever reading the FIFO
    reasons = dict(summary.rejections)
    assert "not a regular file" in reasons["x.png"]
    assert "file too large" in reasons["big.png"] and "ingest.max_file_mb" in reasons["big.png"]


def test_a_crash_mid_ingest_keeps_committed_batches(project: Project,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real = ingest_mod.decode_image
    seen: list[Path] = []

    def dies_on_fifth(path: Path, **kw: int) -> Decoded:
        seen.append(Path(path))
        if len(seen) == 5:
            raise KeyboardInterrupt
        return real(path, **kw)

    monkeypatch.setattr(ingest_mod, "decode_image", dies_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        ingest(project, batch_size=2)
    assert sorted(items(project)) == SIX[:4]  # two whole batches committed
    monkeypatch.setattr(ingest_mod, "decode_image", real)
    s = ingest(project, batch_size=2)
    assert (s.added, s.skipped) == (2, 4)
    assert sorted(items(project)) == SIX


def test_workers_and_progress_bar_on_a_few_files_decode_here(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    import alearn.ingestion.parallel as parallel

    monkeypatch.setattr(parallel, "_pool", None)  # starting a process would fail
    (project.image_root / "bad.png").write_text("nope")
    s = ingest(project, workers=3, batch_size=4, progress=True)
    assert (s.added, s.rejected) == (6, 1)
    assert sorted(items(project)) == SIX


# --- manifests ----------------------------------------------------------------------------

CSV_TEXT = """path,label,source,captured_at,lat,lon,license,camera,site
a/img0.png,cat,trap-1,2024-05-31,48.85,2.35,CC-BY-4.0,X100,north
a/img1.png,,trap-2,2024-05-31T14:02:00+02:00,,,,,
b/img3.jpg,dog,,,,,,Z9,
"""


def test_csv_manifest_sets_metadata_labels_and_extra(project: Project,
                                                     tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(CSV_TEXT)
    s = ingest(project, manifest=manifest)
    assert (s.added, s.rejected) == (3, 0)  # only the manifest's rows, no scan
    got = items(project)
    assert sorted(got) == ["a/img0.png", "a/img1.png", "b/img3.jpg"]
    a0 = got["a/img0.png"]
    assert (a0.source, a0.license, a0.lat, a0.lon) == ("trap-1", "CC-BY-4.0", 48.85, 2.35)
    assert a0.captured_at == dt.datetime(2024, 5, 31)
    assert a0.extra == {"camera": "X100", "site": "north"}
    a1 = got["a/img1.png"]
    assert a1.captured_at == dt.datetime(2024, 5, 31, 12, 2)  # +02:00 converted to UTC
    assert (a1.lat, a1.lon, a1.license, a1.extra) == (None, None, None, {})
    assert got["b/img3.jpg"].extra == {"camera": "Z9"}
    assert labels(project) == {"a/img0.png": ("cat", "manifest", True),
                               "b/img3.jpg": ("dog", "manifest", True)}


def test_jsonl_manifest_keeps_json_values_in_extra(project: Project, tmp_path: Path) -> None:
    root = project.image_root
    manifest = tmp_path / "m.jsonl"
    rows = [
        {"path": str(root / "b" / "img5.jpg"), "label": "bird", "source": "drone",
         "captured_at": "2023-01-02T03:04:05", "lat": -33.9, "lon": 151.2,
         "license": "CC0", "tags": ["a", "b"], "score": 0.5},
        {"path": "a/img2.png", "lat": None},
    ]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    s = ingest(project, manifest=manifest)
    assert (s.added, s.rejected) == (2, 0)
    it = items(project)["b/img5.jpg"]  # absolute path inside the root stored relative
    assert (it.source, it.license, it.lat, it.lon) == ("drone", "CC0", -33.9, 151.2)
    assert it.captured_at == dt.datetime(2023, 1, 2, 3, 4, 5)
    assert it.extra == {"tags": ["a", "b"], "score": 0.5}
    assert labels(project) == {"b/img5.jpg": ("bird", "manifest", True)}


def test_bad_manifest_rows_are_recorded_and_the_rest_ingested(project: Project,
                                                              tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,label,captured_at,lat,lon\n"
        "a/img0.png,cat,2024-13-45,,\n"          # row 2: bad date
        "a/missing.png,cat,,,\n"                  # row 3: no such file
        "a/img1.png,cow,,,\n"                     # row 4: unknown label
        "b/img3.jpg,,,95,10\n"                    # row 5: lat out of range
        ",dog,,,\n"                               # row 6: no path
        "../x.png,,,,\n"                          # row 7: escapes the root
        "b/img4.jpg,dog,2024-01-01,1.5,\n"        # row 8: lat without lon
        "a/img2.png,bird,2020-02-29T10:00:00,10,20\n"  # row 9: good
        "a/img2.png,cat,,,\n"                     # row 10: path repeated
    )
    s = ingest(project, manifest=manifest)
    assert s.added == 1 and sorted(items(project)) == ["a/img2.png"]
    why = reasons(s)
    assert why["a/img0.png"] == ("manifest row 2: captured_at '2024-13-45' is not an ISO "
                                 "date or datetime (e.g. 2024-05-31 or 2024-05-31T14:02:00)")
    assert why["a/missing.png"].startswith("manifest row 3: file not found: a/missing.png")
    assert why["a/img1.png"].startswith("manifest row 4: label 'cow' is not a project class "
                                        "(cat, dog, bird)")
    assert why["b/img3.jpg"] == "manifest row 5: lat 95.0 is out of range [-90, 90]"
    assert why[""] == "manifest row 6: no path"
    assert why["../x.png"].startswith("manifest row 7: path '../x.png' escapes the image root")
    assert why["b/img4.jpg"] == "manifest row 8: lat given without lon; give both or neither"
    assert s.rejections[-1] == ("a/img2.png", "manifest row 10: path a/img2.png is already "
                                              "given on row 9")
    assert s.rejected == 8
    recs = files(project)
    assert recs["a/img0.png"].status == "rejected"
    assert recs["a/img0.png"].reason == why["a/img0.png"]
    assert recs["../x.png"].status == "rejected"
    assert "" not in recs
    # the same manifest again changes nothing, and says which rows are still rejected;
    # a fixed row is then ingested
    again = ingest(project, manifest=manifest)
    assert again.rejected == 2  # the two unstored row errors
    assert sorted(again.earlier_rejections) == sorted(
        (path, reason) for path, reason in s.rejections if path and "given on row" not in reason)
    out = CliRunner().invoke(cli, ["--project", str(project.root), "ingest", "--manifest",
                                   str(manifest)])
    assert out.exit_code == 0, out.output
    assert "6 of them rejected by an earlier ingest and unchanged since" in out.output
    assert "Still rejected" in out.output and "lat 95.0 is out of range" in out.output
    fixed = tmp_path / "fixed.csv"
    fixed.write_text("path,label,captured_at\na/img0.png,cat,2024-12-25\n")
    s2 = ingest(project, manifest=fixed)
    assert (s2.added, s2.rejected) == (1, 0)
    assert items(project)["a/img0.png"].captured_at == dt.datetime(2024, 12, 25)
    assert files(project)["a/img0.png"].reason is None


def test_manifest_plus_images_folder_scans_and_merges(project: Project,
                                                      tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na/img0.png,cat\n")
    s = ingest(project, manifest=manifest, images=project.image_root / "b")
    assert sorted(items(project)) == ["a/img0.png", "b/img3.jpg", "b/img4.jpg", "b/img5.jpg"]
    assert s.added == 4
    assert labels(project) == {"a/img0.png": ("cat", "manifest", True)}


def test_manifest_labels_reach_items_ingested_earlier(project: Project, tmp_path: Path,
                                                      count_decodes: list[Path]) -> None:
    ingest(project)
    n = len(count_decodes)
    manifest = tmp_path / "seeds.csv"
    manifest.write_text("path,label,source\na/img0.png,cat,web\nb/img3.jpg,dog,\n")
    s = ingest(project, manifest=manifest)
    assert (s.added, s.skipped, s.updated) == (0, 2, 2)
    assert len(count_decodes) == n
    assert labels(project) == {"a/img0.png": ("cat", "manifest", True),
                               "b/img3.jpg": ("dog", "manifest", True)}
    assert items(project)["a/img0.png"].source == "web"
    assert ingest(project, manifest=manifest).updated == 0
    manifest.write_text("path,label\na/img0.png,bird\n")  # an edited manifest wins
    assert ingest(project, manifest=manifest).updated == 1
    assert labels(project)["a/img0.png"] == ("bird", "manifest", True)


def test_duplicate_row_label_fills_a_gap_or_warns(project: Project, tmp_path: Path) -> None:
    root = project.image_root
    shutil.copy(root / "a" / "img0.png", root / "a" / "z_copy.png")
    shutil.copy(root / "a" / "img1.png", root / "a" / "z_copy1.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na/img0.png,\na/z_copy.png,dog\n"
                        "a/img1.png,cat\na/z_copy1.png,bird\n")
    s = ingest(project, manifest=manifest)
    assert (s.added, s.duplicate) == (2, 2)
    assert labels(project) == {"a/img0.png": ("dog", "manifest", True),
                               "a/img1.png": ("cat", "manifest", True)}
    assert len(s.warnings) == 1 and s.warnings[0][0] == "a/z_copy1.png"
    assert "label 'bird' differs from the manifest label 'cat'" in s.warnings[0][1]


@pytest.mark.parametrize(("name", "text", "match"), [
    ("m.txt", "path\n", "unknown format '.txt'"),
    ("m.csv", "", "the file is empty"),
    ("m.csv", "file,label\nx.png,cat\n", "no 'path' column"),
    ("m.csv", "path,Path\nx,y\n", "appear more than once"),
    ("m.jsonl", "not json\n[1, 2]\n", "no line is a JSON object"),
])
def test_unreadable_manifests_raise(tmp_path: Path, name: str, text: str, match: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(IngestError, match=match):
        read_manifest(path)


def test_non_utf8_and_missing_manifests_raise(tmp_path: Path) -> None:
    bad = tmp_path / "m.csv"
    bad.write_bytes(b"path\n\xff\xfe\x00garbage\n")
    with pytest.raises(IngestError, match="not UTF-8"):
        read_manifest(bad)
    with pytest.raises(IngestError, match="cannot read it"):
        read_manifest(tmp_path / "absent.jsonl")


def test_manifest_row_numbers_follow_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text('path,note\n"a.png","two\nlines"\n\nb.png,x,extra\nc.png,ok\n')
    rows = read_manifest(path)
    assert [(r.row, r.path) for r in rows] == [(2, "a.png"), (5, "b.png"), (6, "c.png")]
    assert rows[0].extra == {"note": "two\nlines"}
    assert rows[1].error == "has 3 fields but the header has 2"
    jl = tmp_path / "m.jsonl"
    jl.write_text('{"path": "a.png"}\n\n{oops\n{"path": "b.png", "lat": true, "lon": 1}\n')
    rows = read_manifest(jl)
    assert [(r.row, r.error) for r in rows] == [
        (1, None), (3, "not valid JSON (Expecting property name enclosed in double quotes)"),
        (4, "lat True is not a number of decimal degrees")]


# --- EXIF -----------------------------------------------------------------------------------

def _exif_jpeg(path: Path, *, lat_ref: str = "S", lon_ref: str = "W") -> Path:
    exif = Image.Exif()
    exif[ExifTags.Base.DateTime] = "2020:01:02 03:04:05"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2019:05:06 07:08:09"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = lat_ref
    gps[ExifTags.GPS.GPSLatitude] = (IFDRational(33, 1), IFDRational(51, 1),
                                     IFDRational(3156, 100))
    gps[ExifTags.GPS.GPSLongitudeRef] = lon_ref
    gps[ExifTags.GPS.GPSLongitude] = (IFDRational(151, 1), IFDRational(12, 1),
                                      IFDRational(30, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 12), (10, 200, 30)).save(path, "JPEG", exif=exif)
    return path


def test_exif_date_and_gps_fill_what_the_manifest_leaves_out(project: Project,
                                                             tmp_path: Path) -> None:
    root = project.image_root
    _exif_jpeg(root / "exif" / "one.jpg")
    _exif_jpeg(root / "exif" / "two.jpg", lat_ref="N", lon_ref="E")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,captured_at\nexif/two.jpg,2021-07-08\n")
    ingest(project, images=root / "exif", manifest=manifest)
    got = items(project)
    lat = 33 + 51 / 60 + 31.56 / 3600  # 33.858766...
    lon = 151 + 12 / 60 + 30 / 3600  # 151.208333...
    one = got["exif/one.jpg"]
    assert one.captured_at == dt.datetime(2019, 5, 6, 7, 8, 9)  # DateTimeOriginal wins
    assert one.lat == pytest.approx(-lat, abs=1e-9) and one.lon == pytest.approx(-lon,
                                                                                 abs=1e-9)
    two = got["exif/two.jpg"]
    assert two.captured_at == dt.datetime(2021, 7, 8)  # the manifest's date wins
    assert (two.lat, two.lon) == (pytest.approx(lat), pytest.approx(lon))  # EXIF GPS kept
    assert got["exif/one.jpg"].width == 16 and got["exif/one.jpg"].height == 12


def test_exif_helpers_reject_malformed_values() -> None:
    assert parse_exif_datetime("2019:05:06 07:08:09\x00") == dt.datetime(2019, 5, 6, 7, 8, 9)
    assert parse_exif_datetime("0000:00:00 00:00:00") is None
    assert parse_exif_datetime(b"2001:02:03 04:05:06") == dt.datetime(2001, 2, 3, 4, 5, 6)
    assert parse_exif_datetime(None) is None
    kw = {"positive": "N", "negative": "S", "limit": 90.0}
    assert gps_degrees((10.0, 30.0, 0.0), "S", **kw) == -10.5
    assert gps_degrees((10.0, 30.0), "N", **kw) == 10.5
    assert gps_degrees((10.0, 30.0, 0.0), None, **kw) is None  # no hemisphere: no guess
    assert gps_degrees((95.0, 0.0, 0.0), "N", **kw) is None
    assert gps_degrees((IFDRational(1, 0), 0.0, 0.0), "N", **kw) is None  # 1/0 is nan
    assert gps_degrees("nonsense", "N", **kw) is None


def test_an_image_without_exif_has_no_date_or_place(project: Project) -> None:
    ingest(project)
    it = items(project)["a/img0.png"]
    assert (it.captured_at, it.lat, it.lon, it.source) == (None, None, None, None)


# --- CLI ------------------------------------------------------------------------------------

def test_cli_ingest_json_and_table(project: Project) -> None:
    (project.image_root / "bad.png").write_text("[red]not[/red] a png")
    runner = CliRunner()
    result = runner.invoke(cli, ["--project", str(project.root), "ingest", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["added"], data["rejected"], data["skipped"]) == (6, 1, 0)
    assert data["rejections"][0]["path"] == "bad.png"
    assert data["rejections"][0]["reason"].startswith("not an image")
    os.remove(project.image_root / "bad.png")
    (project.image_root / "[x]bad.png").write_text("still not a png")
    result = runner.invoke(cli, ["--project", str(project.root), "ingest"])
    assert result.exit_code == 0, result.output
    assert "added 0, duplicate 0, rejected 1, skipped 6" in result.output
    assert "[x]bad.png" in result.output and "not an image" in result.output


def test_cli_ingest_reports_bad_flags(project: Project, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["--project", str(project.root), "ingest", "--manifest",
                                 str(tmp_path / "absent.csv")])
    assert result.exit_code == 2 and "--manifest" in result.output
    bad = tmp_path / "m.txt"
    bad.write_text("path\n")
    result = runner.invoke(cli, ["--project", str(project.root), "ingest", "--manifest",
                                 str(bad)])
    assert isinstance(result.exception, IngestError)
    assert "unknown format" in str(result.exception)
