"""``alearn export``: write the converged dataset to a folder.

The export holds the trusted labels that pass the filters (:mod:`alearn.export.records`),
split into train/validation/test with near-duplicates kept together
(:mod:`alearn.export.splits`), the train split balanced as asked
(:mod:`alearn.export.balance`): every such decision is made first, by
:mod:`alearn.export.plan`. Then this module writes the images (copied, or resized:
:mod:`alearn.export.images`), the records in the chosen format
(:mod:`alearn.export.formats`), ``classes.json``, ``stats.json``, ``transforms.json``,
``class_weights.json`` (balance 'weights'), a dataset card ``README.md``
(:mod:`alearn.export.card`) and ``checksums.sha256``.

It is deterministic: the same store, options and seed give byte-identical files. It is
atomic: everything is written to ``<out>.tmp-<pid>`` next to ``out`` and renamed into
place at the end; an error or interrupt leaves neither ``out`` nor the temp folder.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from alearn.exceptions import EmptyPoolError, FileChangedError, StoreError
from alearn.export import balance as _balance
from alearn.export import card, files, formats, images, splits
from alearn.export import plan as export_plan
from alearn.export import records as export_records
from alearn.progress import track
from alearn.project import Project
from alearn.rounds.label_history import corrected_by_review

log = logging.getLogger(__name__)


@dataclass
class ExportSummary:
    """What an export wrote. ``counts`` is {split: {class: image files}}; ``shortfalls``
    lists each class missing from a split with a non-zero share, as {class, split, reason}."""

    out: str
    format: str
    n_items: int
    n_files: int
    counts: dict[str, dict[str, int]]
    train_before_balance: dict[str, int]
    removed: dict[str, int]
    n_copies: int = 0
    n_dropped: int = 0
    n_dup_groups: int = 0
    largest_group: int = 1
    class_weights: dict[str, float] | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    shortfalls: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_dataset(
    project: Project, out: Path | str, *, format: str = "imagefolder",
    split: str | Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0, balance: str = "none",
    augment_minority: bool = False, resize: int | None = None, fit: str = "pad",
    min_confidence: float = 0.0, min_agreement: float = 0.0,
    near_duplicate_distance: int = 4, overwrite: bool = False, progress: bool = False,
    annotator_names: bool = False,
) -> ExportSummary:
    """Write the project's trusted labels and images to ``out``.

    Parameters
    ----------
    project : Project
    out : path
        Folder to create. An existing one is refused unless ``overwrite`` (and then only
        an empty folder or an earlier export is replaced).
    format : {'imagefolder', 'csv', 'jsonl', 'parquet', 'hf'}
        See :mod:`alearn.export.formats`.
    split : str or sequence of 3 floats
        Train, validation and test shares, e.g. ``"0.8,0.1,0.1"``.
    seed : int
        Fixes the split, the balancing choices and the augmentations.
    balance : {'none', 'oversample', 'undersample', 'weights'}
        Applied to the train split only (see :mod:`alearn.export.balance`).
    augment_minority : bool
        Oversampled copies are augmented instead of plain duplicates.
    resize : int, optional
        Side of the exported square images; None copies the original files.
    fit : {'pad', 'crop'}
        Letterbox or center-crop when resizing.
    min_confidence, min_agreement : float
        Filters on the label's confidence and on the item's vote agreement.
    near_duplicate_distance : int
        Hashes within this many bits are near-duplicates and share a split.
    overwrite : bool
    progress : bool
        Show a progress bar on stderr.
    annotator_names : bool
        Write annotators' emails in the votes; by default each is a stable pseudonym.

    Returns
    -------
    ExportSummary
    """
    opts = export_plan.check_options(format, split, seed, balance, augment_minority, resize,
                                     fit, min_confidence, min_agreement,
                                     near_duplicate_distance)
    out = Path(out).expanduser().resolve()
    files.check_out(out, overwrite, image_root=project.image_root)  # before the slow part
    records, removed = export_records.load_records(
        project, min_confidence=opts["min_confidence"], min_agreement=opts["min_agreement"],
        annotator_names=annotator_names)
    if not records:
        raise EmptyPoolError(
            f"nothing to export: {removed['labeled']} trusted labels in the store, of which "
            f"{removed['unknown_class']} are not a project class, {removed['min_confidence']} "
            f"fall below min_confidence {opts['min_confidence']} and "
            f"{removed['min_agreement']} below min_agreement {opts['min_agreement']}. "
            "Label more items, or lower the thresholds."
        )
    plan = export_plan.make_plan(project, records, opts)
    with files.atomic_folder(out, overwrite=overwrite, image_root=project.image_root) as tmp:
        files.write_marker(tmp, project.config.name)
        summary = _write(project, tmp, records, removed, plan, opts, progress)
    summary.out = str(out)
    log.info("export_event=written out=%s format=%s files=%s", out, format, summary.n_files)
    return summary



def class_dirs(classes: Sequence[str]) -> dict[str, str]:
    """A safe, distinct folder name for each class (recorded in ``classes.json``)."""
    out: dict[str, str] = {}
    for c in classes:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", c).strip("._") or "class"
        name, k = base, 1
        while name.lower() in {v.lower() for v in out.values()}:
            k += 1
            name = f"{base}-{k}"
        out[c] = name
    return out


def _write(project: Project, tmp: Path, records: list[dict[str, Any]], removed: dict[str, int],
           plan: dict[str, Any], opts: dict[str, Any], progress: bool) -> ExportSummary:
    from alearn.version import __version__

    bal: _balance.BalancePlan = plan["balance"]
    classes, fmt = project.config.classes, opts["format"]
    dirs = class_dirs(classes)
    dropped = set(bal.dropped)
    by_id = {r["id"]: r for r in records}
    jobs: list[tuple[dict[str, Any], int, list[dict[str, Any]]]] = [
        (r, 0, []) for r in records if r["id"] not in dropped]
    jobs += [(by_id[c.source], c.index, c.augment) for c in bal.copies]
    order = {s: i for i, s in enumerate(splits.SPLIT_NAMES)}
    ci = {c: i for i, c in enumerate(classes)}
    jobs.sort(key=lambda j: (order[j[0]["split"]], ci[j[0]["label"]], j[0]["id"], j[1]))
    stats = images.PixelStats()
    rows = []
    for rec, copy, ops in _track(jobs, progress):
        name = _file_name(rec, copy, reencode=bool(opts["resize"] or ops))
        rel = formats.image_relpath(fmt, rec["split"], dirs[rec["label"]], name)
        _write_image(project, rec, tmp / rel, opts, ops,
                     stats if rec["split"] == "train" else None)
        rows.append({**rec, "file": rel, "copy_index": copy, "augment": ops,
                     "source_path": rec["path"]})
    formats.write_records(tmp, fmt, rows)
    counts = {s: {c: 0 for c in classes} for s in splits.SPLIT_NAMES
              if any(r["split"] == s for r in rows)}
    for r in rows:
        counts[r["split"]][r["label"]] += 1
    summary = ExportSummary(
        out="", format=fmt, n_items=len({r["id"] for r in rows}), n_files=len(rows),
        counts=counts, train_before_balance={c: plan["train_before"].get(c, 0) for c in classes},
        removed=removed, n_copies=len(bal.copies), n_dropped=len(dropped),
        n_dup_groups=plan["n_dup_groups"], largest_group=plan["largest_group"],
        class_weights=bal.weights, stats=stats.to_dict(), shortfalls=plan["shortfalls"])
    files.write_json(tmp / "classes.json", [{"index": i, "name": c, "folder": dirs[c]}
                                       for i, c in enumerate(classes)])
    files.write_json(tmp / "stats.json", {"split": "train", "resize": opts["resize"],
                                     "fit": opts["fit"] if opts["resize"] else None,
                                     **summary.stats})
    files.write_json(tmp / "transforms.json", images.backbone_transforms(
        project.config.embed.backbone, image_size=opts["resize"]))
    if bal.weights is not None:
        files.write_json(tmp / "class_weights.json", bal.weights)
    public_opts = {k: v for k, v in opts.items() if k != "fractions"}
    info = {
        "project": project.config.name, "classes": classes, "splits": list(counts),
        "counts": counts, "n_files": len(rows), "n_items": summary.n_items,
        "alearn_version": __version__, "backbone": project.config.embed.backbone,
        "options": public_opts, "train_before_balance": summary.train_before_balance,
        "n_copies": summary.n_copies, "n_dropped": summary.n_dropped,
        "class_weights": bal.weights, "removed": removed,
        "by_origin": dict(Counter(r["origin"] for r in records if r["id"] not in dropped)),
        "corrected_by_review": corrected_by_review(project.store),
        "rounds": card.rounds_summary(project),
        "stopping_reason": card.stopping_reason(project),
        "n_dup_groups": plan["n_dup_groups"], "n_dup_items": plan["n_dup_items"],
        "largest_group": plan["largest_group"], "shortfalls": plan["shortfalls"],
        "stats": summary.stats, "layout": card.layout(fmt, bal.weights is not None),
    }
    (tmp / "README.md").write_text(card.render_card(info), encoding="utf-8")
    return summary


def _file_name(rec: dict[str, Any], copy: int, *, reencode: bool) -> str:
    ext = ".png" if reencode else (Path(rec["path"]).suffix.lower() or ".img")
    return f"{rec['id']:07d}-{rec['sha256'][:10]}" + (f"-copy{copy}" if copy else "") + ext


def _write_image(project: Project, rec: dict[str, Any], dest: Path, opts: dict[str, Any],
                 ops: list[dict[str, Any]], stats: images.PixelStats | None) -> None:
    src = export_plan.image_path(project, rec)
    dest.parent.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    if hashlib.sha256(data).hexdigest() != rec["sha256"]:
        raise FileChangedError(f"{src} changed since it was ingested and labeled (its sha256 "
                          "differs), so its label may not fit it; nothing was exported. "
                          "Restore the file, or run 'alearn ingest' to see the change.")
    try:
        if not opts["resize"] and not ops:
            dest.write_bytes(data)
            if stats is not None:
                with Image.open(dest) as copied:
                    stats.add(copied)
            return
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            if opts["resize"]:
                img = images.fit_image(opened, opts["resize"], opts["fit"])
            else:
                img = images.export_mode(ImageOps.exif_transpose(opened))
            img = _balance.apply_ops(img, ops)
            img.save(dest, format="PNG")
            if stats is not None:
                stats.add(img)
    except export_plan.DECODE_ERRORS as exc:
        raise StoreError(export_plan.unreadable(project, rec, exc)) from None


def _track(jobs: list, progress: bool) -> Any:
    return track(jobs, len(jobs), "exporting", progress, "images") if progress else jobs


