"""alearn export, end to end on a small project written straight into the store.

The project: classes cat (12 items + 1 near-duplicate), dog (6) and bird (3), imbalanced
on purpose. Rows are inserted as round close would leave them: one closed round with
metrics, three annotators' votes and consensus labels; plus manifest gold labels (no
votes), one adjudicated label, a 2-of-3 label and a low-confidence one. Each format is
read back by its natural reader (pandas, json, a directory walk, datasets).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from factories import write_image
from PIL import Image
from sqlalchemy import update

import alearn.export.formats as export_formats
from alearn.config import Settings
from alearn.exceptions import ConfigError, EmptyPoolError
from alearn.export.dataset import export_dataset
from alearn.project import Project
from alearn.store import Annotation, Item, Label, Round

CLASSES = ["cat", "dog", "bird"]
ANNOTATORS = ["ann", "bob", "cyd"]
ROUND_METRICS = {
    "kappa": 0.712, "alpha": 0.705, "labels_spent": 45,
    "agreement": {"percent_agreement": {"value": 0.81}, "fleiss_kappa": {"value": 0.69}},
    "consensus": {"agreed": 14, "tie": 1},
}


def write_near_duplicate(src: Path, dest: Path, seed: int = 100) -> Path:
    """``src`` with +-2 levels of noise, saved as PNG (its hash differs in 2 bits)."""
    a = np.asarray(Image.open(src), dtype=np.int16)
    noise = np.random.default_rng(seed).integers(-2, 3, size=a.shape)
    Image.fromarray(np.clip(a + noise, 0, 255).astype(np.uint8)).save(dest)
    return dest


def build_project(tmp_path: Path, *, settings: Settings | None = None,
                  counts: dict[str, int] | None = None) -> tuple[Project, dict[str, Any]]:
    """The project, and facts the tests check: item ids by role."""
    counts = counts or {"cat": 12, "dog": 6, "bird": 3}
    images = tmp_path / "images"
    images.mkdir(parents=True)
    project = Project.init(tmp_path / "proj", classes=CLASSES, images=images,
                           settings=settings or Settings())
    store = project.store
    files: list[tuple[str, str]] = []  # (path under root, class)
    seed = 0
    for cls, n in counts.items():
        for _ in range(n):
            size = (40, 24) if seed % 2 else (24, 32)  # not square: pad and crop differ
            write_image(images / cls / f"{cls}{seed}.png", seed=seed, size=size)
            files.append((f"{cls}/{cls}{seed}.png", cls))
            seed += 1
    write_near_duplicate(images / "cat" / "cat0.png", images / "cat" / "cat0_again.png")
    files.append(("cat/cat0_again.png", "cat"))
    facts: dict[str, Any] = {"ids": {}, "near_duplicates": []}
    with store.session() as s:
        rnd = Round(number=1, status="closed", strategy="margin", batch_size=20, overlap=3,
                    model_version="m-0001", metrics=ROUND_METRICS)
        s.add(rnd)
        s.flush()
        facts["round_id"] = rnd.id
        ann_id = 0
        for k, (rel, cls) in enumerate(files):
            with Image.open(images / rel) as img:
                w, h = img.size
            sha = hashlib.sha256((images / rel).read_bytes()).hexdigest()
            item = Item(sha256=sha, path=rel, width=w, height=h, source="camera-a",
                        captured_at=dt.datetime(2024, 5, 1 + k % 28, 12, 0), lat=48.1 + k / 100,
                        lon=11.5, license="CC-BY-4.0", extra={"site": f"s{k % 3}", "n": k})
            if k % 5 == 0:
                item.lat = item.lon = None
            s.add(item)
            s.flush()
            facts["ids"][rel] = item.id
            if rel.startswith("cat/cat0"):
                facts["near_duplicates"].append(item.id)
            if k < 3:  # manifest gold, no votes
                s.add(Label(item_id=item.id, label=cls, origin="manifest", is_gold=True,
                            confidence=1.0, method="manifest"))
                continue
            other = CLASSES[(CLASSES.index(cls) + 1) % 3]
            votes = [cls, cls, cls]
            confidence, origin = 1.0, "consensus"
            if k == 4:  # 2 of 3 agree: confidence 0.67
                votes, confidence = [cls, cls, other], 2 / 3
            elif k == 5:  # 1 of 3: adjudicated to cls
                votes, confidence, origin = [cls, other, other], 1.0, "adjudicated"
                facts["adjudicated"] = item.id
            elif k == 6:  # low-confidence consensus label
                confidence = 0.5
                facts["low_confidence"] = item.id
            for who, vote in zip(ANNOTATORS, votes, strict=True):
                ann_id += 1
                s.add(Annotation(ls_annotation_id=ann_id, ls_task_id=1000 + k, item_id=item.id,
                                 round_id=rnd.id, annotator=who, label=vote, lead_time=2.0))
            s.add(Label(item_id=item.id, label=cls, origin=origin, confidence=confidence,
                        method="majority" if origin == "consensus" else "adjudicated",
                        round_id=rnd.id))
            if k == 4:
                facts["two_of_three"] = item.id
    facts["n_items"] = len(files)
    return project, facts


# --- helpers ---------------------------------------------------------------------------


@pytest.fixture
def built(tmp_path: Path) -> tuple[Project, dict[str, Any]]:
    return build_project(tmp_path)


def all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def check_checksums(root: Path) -> None:
    """checksums.sha256 lists every other file, sorted, with its true SHA-256."""
    lines = (root / "checksums.sha256").read_text().splitlines()
    listed = [line.split("  ", 1)[1] for line in lines]
    assert listed == sorted(listed)
    assert listed == [p for p in all_files(root) if p != "checksums.sha256"]
    for line in lines:
        digest, rel = line.split("  ", 1)
        assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == digest


def train_counts(summary: Any) -> dict[str, int]:
    return summary.counts["train"]


# --- formats, read back by their natural readers ---------------------------------------


def test_csv_reads_back_with_pandas(built, tmp_path):
    project, facts = built
    out = tmp_path / "out"
    summary = export_dataset(project, out, format="csv", annotator_names=True)
    df = pd.read_csv(out / "dataset.csv")
    assert list(df.columns) == list(export_formats.COLUMN_NAMES)
    assert len(df) == summary.n_files == facts["n_items"] == 22
    assert set(df["split"]) <= {"train", "validation", "test"}
    by_id = df.set_index("id")
    for row in df.itertuples():
        assert row.file == f"images/{row.split}/{row.label}/{Path(row.file).name}"
        # no resize: the exported file is the original, byte for byte
        assert (out / row.file).read_bytes() == (project.image_root / row.source_path).read_bytes()
    two = by_id.loc[facts["two_of_three"]]
    assert json.loads(two["votes"]) == {"ann": "cat", "bob": "cat", "cyd": "dog"}
    assert two["agreement"] == pytest.approx(2 / 3)
    assert two["confidence"] == pytest.approx(2 / 3)
    assert two["round"] == 1 and two["model_version"] == "m-0001"
    adj = by_id.loc[facts["adjudicated"]]
    assert adj["adjudicated"] and adj["origin"] == "adjudicated"
    assert adj["agreement"] == pytest.approx(1 / 3)
    gold = df[df["origin"] == "manifest"]
    assert len(gold) == 3 and gold["is_gold"].all() and gold["agreement"].isna().all()
    assert (gold["votes"] == "{}").all() and gold["round"].isna().all()
    assert not df.loc[df["origin"] != "adjudicated", "adjudicated"].any()
    first = by_id.loc[facts["ids"]["cat/cat1.png"]]
    assert json.loads(first["extra"]) == {"n": 1, "site": "s1"}
    assert first["captured_at"] == "2024-05-02T12:00:00"
    assert first["lat"] == pytest.approx(48.11) and first["license"] == "CC-BY-4.0"
    assert np.isnan(by_id.loc[facts["ids"]["cat/cat0.png"], "lat"])  # no location
    check_checksums(out)
    card = (out / "README.md").read_text()
    assert "| cat | " in card and "0.712" in card and "0.705" in card and "m-0001" in card
    assert "Stopping reason:" in card


def test_parquet_reads_back_with_native_types(built, tmp_path):
    project, facts = built
    out = tmp_path / "out"
    summary = export_dataset(project, out, format="parquet", balance="oversample",
                             augment_minority=True, resize=32, annotator_names=True)
    df = pd.read_parquet(out / "dataset.parquet")
    assert len(df) == summary.n_files
    assert pd.api.types.is_datetime64_any_dtype(df["captured_at"])
    assert df["confidence"].dtype == np.float64 and df["adjudicated"].dtype == bool
    row = df[(df["id"] == facts["two_of_three"]) & (df["copy_index"] == 0)].iloc[0]
    assert dict(row["votes"]) == {"ann": "cat", "bob": "cat", "cyd": "dog"}
    copies = df[df["copy_index"] > 0]
    assert len(copies) == summary.n_copies > 0 and (copies["split"] == "train").all()
    for ops in copies["augment"]:
        names = [op["name"] for op in ops]
        assert names[-4:] == ["rotate", "brightness", "contrast", "saturation"]
    assert all(len(ops) == 0 for ops in df.loc[df["copy_index"] == 0, "augment"])
    for f in df["file"]:
        with Image.open(out / f) as img:
            assert img.size == (32, 32) and img.format == "PNG"


def test_jsonl_has_nested_fields_native(built, tmp_path):
    project, facts = built
    out = tmp_path / "out"
    export_dataset(project, out, format="jsonl", annotator_names=True)
    rows = [json.loads(line) for line in (out / "dataset.jsonl").read_text().splitlines()]
    assert len(rows) == facts["n_items"]
    adj = next(r for r in rows if r["id"] == facts["adjudicated"])
    assert adj["votes"] == {"ann": "cat", "bob": "dog", "cyd": "dog"}
    assert adj["extra"] == {"n": 5, "site": "s2"} and adj["augment"] == []
    assert all((out / r["file"]).is_file() for r in rows)


def test_imagefolder_walks_as_split_class_file(built, tmp_path):
    project, facts = built
    out = tmp_path / "out"
    summary = export_dataset(project, out, format="imagefolder")
    walked: dict[str, dict[str, int]] = {}
    for split_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        for class_dir in split_dir.iterdir():
            walked.setdefault(split_dir.name, {})[class_dir.name] = len(list(class_dir.iterdir()))
    expected = {s: {c: n for c, n in counts.items() if n} for s, counts in summary.counts.items()}
    assert walked == expected
    classes = json.loads((out / "classes.json").read_text())
    assert [c["name"] for c in classes] == project.config.classes
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert sorted(r["file"] for r in records) == sorted(
        f for f in all_files(out) if f.count("/") == 2)


def test_hf_loads_with_datasets(built, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    project, facts = built
    out = tmp_path / "out"
    summary = export_dataset(project, out, format="hf", resize=24, fit="crop",
                             annotator_names=True)
    ds = datasets.load_dataset("imagefolder", data_dir=str(out),
                               cache_dir=str(tmp_path / "hf-cache"))
    assert set(ds) == set(summary.counts)
    for split, counts in summary.counts.items():
        assert ds[split].num_rows == sum(counts.values())
        assert sorted(ds[split]["label"]) == sorted(
            c for c, n in counts.items() for _ in range(n))
    train = ds["train"]
    assert train[0]["image"].size == (24, 24)
    rows = [r for split in ds.values() for r in split if r["id"] == facts["two_of_three"]]
    assert len(rows) == 1
    assert rows[0]["votes"] == [{"annotator": "ann", "label": "cat"},
                                {"annotator": "bob", "label": "cat"},
                                {"annotator": "cyd", "label": "dog"}]
    assert train.features["lat"].dtype == "float64"


# --- determinism, atomicity, overwrite --------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet", "imagefolder", "hf"])
def test_same_store_and_seed_give_identical_bytes(built, tmp_path, fmt):
    project, _ = built
    opts = dict(format=fmt, balance="oversample", augment_minority=True, resize=20, fit="crop")
    export_dataset(project, tmp_path / "a", **opts)
    export_dataset(project, tmp_path / "b", **opts)
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "checksums.sha256").read_bytes() == (b / "checksums.sha256").read_bytes()
    assert all_files(a) == all_files(b)
    for rel in all_files(a):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    export_dataset(project, tmp_path / "c", **{**opts, "seed": 1})
    assert (a / "checksums.sha256").read_bytes() != (tmp_path / "c" / "checksums.sha256"
                                                     ).read_bytes()


@pytest.mark.parametrize("error", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_interrupted_export_leaves_nothing(built, tmp_path, monkeypatch, error):
    project, _ = built

    def boom(*args, **kwargs):
        raise error

    monkeypatch.setattr(export_formats, "write_records", boom)
    with pytest.raises(type(error)):
        export_dataset(project, tmp_path / "out", format="csv")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("out.")]


def test_existing_out_is_refused_unless_overwrite(built, tmp_path, monkeypatch):
    project, _ = built
    out = tmp_path / "out"
    export_dataset(project, out, format="csv")
    with pytest.raises(ConfigError, match="--overwrite"):
        export_dataset(project, out, format="csv")
    export_dataset(project, out, format="jsonl", overwrite=True)
    assert (out / "dataset.jsonl").is_file() and not (out / "dataset.csv").exists()
    # a failed overwrite keeps the earlier export
    monkeypatch.setattr(export_formats, "write_records", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        export_dataset(project, out, format="csv", overwrite=True)
    assert (out / "dataset.jsonl").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["images", "proj", "out"])
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="not an earlier alearn export"):
        export_dataset(project, other, format="csv", overwrite=True)
    assert (other / "thesis.tex").read_text() == "years of work"
    # a folder that merely holds a checksum manifest is not an alearn export
    (other / "checksums.sha256").write_text("")
    with pytest.raises(ConfigError, match="not an earlier alearn export"):
        export_dataset(project, other, format="csv", overwrite=True)
    assert (other / "thesis.tex").read_text() == "years of work"


def test_annotators_are_pseudonymised_unless_asked(built, tmp_path):
    project, facts = built
    rows = {}
    for name in ("a", "b"):
        export_dataset(project, tmp_path / name, format="jsonl")
        text = (tmp_path / name / "dataset.jsonl").read_text()
        assert not any(f'"{who}"' in text for who in ANNOTATORS)
        rows[name] = [json.loads(x) for x in text.splitlines()]
    two = next(r for r in rows["a"] if r["id"] == facts["two_of_three"])
    assert sorted(two["votes"].values()) == ["cat", "cat", "dog"]
    assert all(k.startswith("annotator-") for k in two["votes"])
    assert rows["a"] == rows["b"]  # stable: the same person has the same pseudonym


def test_a_file_changed_since_ingest_is_a_clear_error(built, tmp_path):
    project, _ = built
    from alearn.exceptions import FileChangedError

    victim = next(p for p in sorted(project.image_root.rglob("*.png")))
    with Image.open(victim) as img:
        img.rotate(90).save(victim)  # other bytes, still an image, same path
    with pytest.raises(FileChangedError, match=f"{victim.name} changed since it was ingested"):
        export_dataset(project, tmp_path / "out", format="csv")
    assert not (tmp_path / "out").exists()


def test_an_export_inside_the_image_root_is_refused(built, tmp_path):
    project, _ = built
    inside = project.image_root / "export"
    with pytest.raises(ConfigError, match="inside the image root"):
        export_dataset(project, inside, format="csv")
    assert not inside.exists()


# --- splits and near-duplicates ----------------------------------------------------------


def _dup_rows(out: Path, facts: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(x) for x in (out / "dataset.jsonl").read_text().splitlines()]
    return rows, [r for r in rows if r["id"] in facts["near_duplicates"]]


def test_near_duplicates_share_a_split(built, tmp_path):
    project, facts = built
    apart = 0
    for seed in range(6):
        out = tmp_path / f"out{seed}"
        export_dataset(project, out, format="jsonl", seed=seed, split="0.34,0.33,0.33")
        rows, dup = _dup_rows(out, facts)
        assert len(dup) == 2 and dup[0]["sha256"] != dup[1]["sha256"]
        distance = bin(int(dup[0]["phash"], 16) ^ int(dup[1]["phash"], 16)).count("1")
        assert 0 < distance <= 4  # near, not equal: the distance search is what joins them
        assert dup[0]["split"] == dup[1]["split"] and dup[0]["group"] == dup[1]["group"]
        for group in {r["group"] for r in rows}:
            assert len({r["split"] for r in rows if r["group"] == group}) == 1
        assert len({r["group"] for r in rows}) == len(rows) - 1  # only the planted pair
        # the control: with distance 0 they are two groups, free to straddle splits
        export_dataset(project, tmp_path / f"zero{seed}", format="jsonl", seed=seed,
                       split="0.34,0.33,0.33", near_duplicate_distance=0)
        _, dup = _dup_rows(tmp_path / f"zero{seed}", facts)
        assert dup[0]["group"] != dup[1]["group"]
        apart += dup[0]["split"] != dup[1]["split"]
    assert apart > 0


def test_split_keeps_class_proportions(built, tmp_path):
    project, _ = built
    summary = export_dataset(project, tmp_path / "out", format="csv", split="0.5,0.25,0.25")
    # cat: 13 items, but the near-duplicate pair moves together
    for cls, n in {"cat": 13, "dog": 6, "bird": 3}.items():
        got = [summary.counts.get(s, {}).get(cls, 0) for s in ("train", "validation", "test")]
        assert sum(got) == n
        assert all(abs(g - n * f) <= 2 for g, f in zip(got, (0.5, 0.25, 0.25), strict=True))


def test_every_class_reaches_every_split_and_the_card_says_so(built, tmp_path):
    project, _ = built  # bird has 3 items: the greedy rounding alone left it in train only
    summary = export_dataset(project, tmp_path / "out", format="csv")
    assert list(summary.counts) == ["train", "validation", "test"]
    assert all(n >= 1 for per_class in summary.counts.values() for n in per_class.values())
    assert summary.shortfalls == []
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Every class has items in every split with a non-zero share." in card


def test_a_class_too_small_for_every_split_is_in_the_card_and_output(tmp_path):
    from click.testing import CliRunner

    from alearn.cli import cli

    project, _ = build_project(tmp_path, counts={"cat": 12, "dog": 6, "bird": 2})
    summary = export_dataset(project, tmp_path / "out", format="jsonl")
    short = {(f["split"], f["class"]): f["reason"] for f in summary.shortfalls}
    assert sorted(short) == [("test", "bird"), ("validation", "bird")]
    assert set(short.values()) == {"only 2 items, for 3 splits"}
    assert summary.counts["train"]["bird"] == 2
    assert all(summary.counts[s][c] >= 1 for s in summary.counts for c in ("cat", "dog"))
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| bird | validation | only 2 items, for 3 splits |" in card
    assert "| bird | test | only 2 items, for 3 splits |" in card
    assert "`--split 0.9,0.1,0`" in card
    base = ["--project", str(project.root), "export", "--format", "jsonl"]
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    assert ("warning: class bird has no item in the validation split: only 2 items, for 3 "
            "splits.") in res.output
    assert "warning: class bird has no item in the test split" in res.output
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "j"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["shortfalls"] == summary.shortfalls
    # a split that is asked for with share 0 is no shortfall
    summary = export_dataset(project, tmp_path / "two", format="jsonl", split="0.9,0.1,0")
    assert summary.shortfalls == [] and summary.counts["validation"]["bird"] == 1


# --- class balance -------------------------------------------------------------------------


def test_oversample_brings_every_class_to_the_largest(built, tmp_path):
    project, _ = built
    out = tmp_path / "out"
    s = export_dataset(project, out, format="jsonl", balance="oversample")
    before = s.train_before_balance
    top = max(before.values())
    assert train_counts(s) == {c: top for c in before}
    assert s.n_copies == sum(top - n for n in before.values())
    rows = [json.loads(x) for x in (out / "dataset.jsonl").read_text().splitlines()]
    originals = {r["id"]: r for r in rows if r["copy_index"] == 0}
    for r in rows:
        if r["copy_index"]:  # plain duplicates: same bytes as the exported original
            assert r["augment"] == []
            assert (out / r["file"]).read_bytes() == (out / originals[r["id"]]["file"]).read_bytes()
    for split in ("validation", "test"):
        assert s.counts.get(split, {}) == export_dataset(
            project, tmp_path / "plain", format="csv", overwrite=True).counts.get(split, {})
    card = (out / "README.md").read_text()
    assert "Train counts before balancing: " + ", ".join(
        f"{c} {before[c]}" for c in project.config.classes) in card


def test_augmented_copies_record_the_transforms_applied(built, tmp_path):
    from alearn.export.balance import apply_ops

    project, _ = built
    out = tmp_path / "out"
    export_dataset(project, out, format="jsonl", balance="oversample", augment_minority=True)
    rows = [json.loads(x) for x in (out / "dataset.jsonl").read_text().splitlines()]
    copies = [r for r in rows if r["copy_index"]]
    assert copies
    for r in copies:
        assert r["file"].endswith(f"-copy{r['copy_index']}.png") and r["augment"]
        with Image.open(project.image_root / r["source_path"]) as src:
            expected = np.asarray(apply_ops(src.convert("RGB"), r["augment"]))
        with Image.open(out / r["file"]) as got:
            assert np.array_equal(np.asarray(got), expected)
            assert not np.array_equal(np.asarray(got), np.asarray(
                Image.open(project.image_root / r["source_path"]).convert("RGB")))


def test_undersample_cuts_every_class_to_the_smallest(built, tmp_path):
    project, _ = built
    s = export_dataset(project, tmp_path / "out", format="csv", balance="undersample")
    low = min(s.train_before_balance.values())
    assert train_counts(s) == {c: low for c in project.config.classes}
    assert s.n_dropped == sum(n - low for n in s.train_before_balance.values())
    df = pd.read_csv(tmp_path / "out" / "dataset.csv")
    assert len(df) == s.n_files == df["id"].nunique()


def test_weights_match_sklearn_balanced(built, tmp_path):
    from sklearn.utils.class_weight import compute_class_weight

    project, _ = built
    out = tmp_path / "out"
    s = export_dataset(project, out, format="csv", balance="weights")
    assert train_counts(s) == s.train_before_balance  # nothing copied or cut
    df = pd.read_csv(out / "dataset.csv")
    y = df.loc[df["split"] == "train", "label"].to_numpy()
    classes = np.unique(y)
    expected = compute_class_weight("balanced", classes=classes, y=y)
    got = json.loads((out / "class_weights.json").read_text())
    assert list(got) == list(classes)
    assert np.allclose([got[c] for c in classes], expected)


# --- filters -----------------------------------------------------------------------------


def test_min_confidence_and_min_agreement_filters(built, tmp_path):
    project, facts = built
    s = export_dataset(project, tmp_path / "a", format="jsonl", min_confidence=0.6)
    ids = {json.loads(x)["id"] for x in (tmp_path / "a" / "dataset.jsonl").read_text().splitlines()}
    assert facts["low_confidence"] not in ids and facts["two_of_three"] in ids
    assert s.removed == {"labeled": 22, "unknown_class": 0, "min_confidence": 1,
                         "min_agreement": 0}
    s = export_dataset(project, tmp_path / "b", format="jsonl", min_agreement=0.7)
    ids = {json.loads(x)["id"] for x in (tmp_path / "b" / "dataset.jsonl").read_text().splitlines()}
    assert facts["two_of_three"] not in ids and facts["adjudicated"] not in ids
    assert all(facts["ids"][f"cat/cat{k}.png"] in ids for k in range(3))  # gold, no votes
    assert s.removed["min_agreement"] == 2 and s.n_items == 20
    s = export_dataset(project, tmp_path / "c", format="csv", min_agreement=2 / 3)
    assert s.removed["min_agreement"] == 1  # 2 of 3 is exactly 2/3


def test_empty_export_says_what_each_filter_removed(built, tmp_path):
    project, _ = built
    with project.store.session() as s:
        s.execute(update(Label).values(confidence=0.5))
        s.execute(update(Label).where(Label.origin == "manifest").values(label="fish"))
    with pytest.raises(EmptyPoolError) as err:
        export_dataset(project, tmp_path / "out", format="csv", min_confidence=0.6)
    msg = str(err.value)
    assert "22 trusted labels" in msg and "3 are not a project class" in msg
    assert "19 fall below min_confidence 0.6" in msg and "0 below min_agreement" in msg
    assert not (tmp_path / "out").exists()


# --- images: resize, stats, transforms --------------------------------------------------


@pytest.mark.parametrize("fit", ["pad", "crop"])
def test_resize_and_train_pixel_stats(built, tmp_path, fit):
    project, facts = built
    out = tmp_path / "out"
    export_dataset(project, out, format="csv", resize=16, fit=fit)
    df = pd.read_csv(out / "dataset.csv")
    pixels = []
    for row in df.itertuples():
        with Image.open(out / row.file) as img:
            a = np.asarray(img.convert("RGB"))
        assert a.shape == (16, 16, 3)
        if row.width == 40:  # 40x24 source: letterbox bars above and below
            assert (a[0] == 0).all() == (fit == "pad")
        if row.split == "train":
            pixels.append(a.reshape(-1, 3) / 255.0)
    p = np.concatenate(pixels)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["pixels"] == len(p)
    assert np.allclose(stats["mean"], p.mean(axis=0), atol=1e-6)
    assert np.allclose(stats["std"], p.std(axis=0), atol=1e-6)


def test_transforms_json_describes_the_backbone(built, tmp_path):
    project, _ = built
    out = tmp_path / "out"
    export_dataset(project, out, format="csv", resize=64)
    t = json.loads((out / "transforms.json").read_text())
    assert t["backbone"] == "tf_efficientnet_lite0"
    assert t["data_config"]["mean"] == [0.5, 0.5, 0.5] == t["data_config"]["std"]
    assert t["data_config"]["input_size"] == [3, 64, 64]
    train = [x["name"] for x in t["train"]]
    assert train[0] == "RandomResizedCropAndInterpolation" and "Normalize" in train
    assert [x["name"] for x in t["eval"]][:2] == ["Resize", "CenterCrop"]
    norm = next(x for x in t["eval"] if x["name"] == "Normalize")
    assert norm["params"]["mean"] == [0.5, 0.5, 0.5]


# --- secrets -------------------------------------------------------------------------------


def test_no_token_or_password_in_any_exported_file(tmp_path, monkeypatch, pg_url):
    token, password = "tok-SECRET-4f2a9", "pw-SECRET-77c1"
    monkeypatch.setenv("ALEARN_LS_TOKEN", token)
    url = pg_url.replace("postgres@", f"postgres:{password}@")  # trust auth ignores it
    monkeypatch.setenv("ALEARN_DATABASE_URL", url)
    settings = Settings()
    assert settings.label_studio_token() == token
    project, _ = build_project(tmp_path, settings=settings)
    assert project.store.url == url
    from alearn import connection  # the project's stored Label Studio connection

    stored = "tok-STORED-8d3e1"
    connection.save(project.data_dir, "http://127.0.0.1:8080", stored,
                    image_root=project.image_root)
    for fmt in ("jsonl", "csv"):
        out = tmp_path / fmt
        export_dataset(project, out, format=fmt)
        for rel in all_files(out):
            data = (out / rel).read_bytes()
            for secret in (token, stored, password, "postgresql", "127.0.0.1:5432"):
                assert secret.encode() not in data, (rel, secret)
    project.store.dispose()


# --- CLI -----------------------------------------------------------------------------------


def test_cli_export_json_and_table(built, tmp_path):
    from click.testing import CliRunner

    from alearn.cli import cli

    project, facts = built
    runner = CliRunner()
    base = ["--project", str(project.root), "export"]
    res = runner.invoke(cli, [*base, "--out", str(tmp_path / "j"), "--format", "csv",
                              "--balance", "undersample", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["format"] == "csv" and data["n_items"] == data["n_files"]
    assert set(data["counts"]["train"].values()) == {min(data["train_before_balance"].values())}
    res = runner.invoke(cli, [*base, "--out", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    assert "Exported files by class and split" in res.output and "22 files" in res.output


@pytest.mark.parametrize("args, flag", [
    (["--split", "0.8,0.3,0.1"], "--split"),
    (["--split", "a,b,c"], "--split"),
    (["--format", "xlsx"], "--format"),
    (["--balance", "smote"], "--balance"),
    (["--augment-minority"], "--augment-minority"),
    (["--resize", "2"], "--resize"),
])
def test_cli_bad_flags_are_usage_errors_naming_the_flag(built, tmp_path, args, flag):
    from click.testing import CliRunner

    from alearn.cli import cli

    project, _ = built
    res = CliRunner().invoke(cli, ["--project", str(project.root), "export", "--out",
                                   str(tmp_path / "out"), *args])
    assert res.exit_code == 2 and flag in res.output
    assert not (tmp_path / "out").exists()


def test_cli_choices_match_the_library():
    from alearn.cli.export import BALANCE_MODES as CLI_BALANCE
    from alearn.cli.export import EXPORT_FORMATS
    from alearn.export.balance import BALANCE_MODES

    assert sorted(EXPORT_FORMATS) == sorted(export_formats.FORMATS)
    assert CLI_BALANCE == BALANCE_MODES
