"""Every decision of an export, made before any file is written.

:func:`check_options` checks and normalises the options; :func:`make_plan` hashes each
image, groups near-duplicates, assigns whole groups to train/validation/test
(:mod:`alearn.export.splits`), lists the classes missing from a split (``shortfalls``: each
a class, a split and the reason) and decides how the train split is balanced
(:mod:`alearn.export.balance`). :mod:`alearn.export.dataset` then writes the files.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from alearn.exceptions import ConfigError, StoreError
from alearn.export import balance as balance_
from alearn.export import formats, images, splits
from alearn.export import records as export_records
from alearn.project import Project

log = logging.getLogger(__name__)

LARGE_GROUP_SHARE = 0.05  # warn when one near-duplicate group is this share of the items
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def check_options(fmt: str, split: Any, seed: int, balance: str, augment: bool,
                  resize: int | None, fit: str, min_confidence: float, min_agreement: float,
                  distance: int) -> dict[str, Any]:
    """The export's options, checked (ConfigError names the bad one) and normalised;
    ``fractions`` holds the parsed split."""
    formats.check_format(fmt)
    fractions = splits.parse_split(split)
    balance_.check_balance(balance)
    if augment and balance != "oversample":
        raise ConfigError(f"augment_minority makes augmented oversampled copies; it needs "
                          f"balance 'oversample' (got balance {balance!r}).")
    images.check_resize(resize, fit)
    if not 0 <= int(distance) <= 32:
        raise ConfigError(f"near_duplicate_distance {distance}: give 0 to 32 bits.")
    return {
        "format": fmt, "split": ",".join(f"{f:g}" for f in fractions), "seed": int(seed),
        "balance": balance, "augment_minority": bool(augment),
        "resize": int(resize) if resize else None, "fit": fit,
        "min_confidence": export_records.check_threshold("min_confidence", min_confidence),
        "min_agreement": export_records.check_threshold("min_agreement", min_agreement),
        "near_duplicate_distance": int(distance), "fractions": fractions,
    }


def image_path(project: Project, rec: dict[str, Any]) -> Path:
    """Where a record's image file is."""
    return project.image_root / rec["path"]


def make_plan(project: Project, records: list[dict[str, Any]], opts: dict[str, Any]) -> dict:
    """Hash, group, split and balance: every decision, before any file is written."""
    hashes = []
    for rec in records:
        try:
            hashes.append(splits.file_phash(image_path(project, rec)))
        except DECODE_ERRORS as exc:
            raise StoreError(unreadable(project, rec, exc)) from None
    groups = splits.near_duplicate_groups(hashes, max_distance=opts["near_duplicate_distance"])
    classes = project.config.classes
    index = {c: i for i, c in enumerate(classes)}
    label_idx = [index[r["label"]] for r in records]
    split_idx = splits.stratified_group_split(
        label_idx, groups.tolist(), opts["fractions"], n_classes=len(classes), seed=opts["seed"])
    shortfalls = [{"class": classes[c], "split": splits.SPLIT_NAMES[s], "reason": why}
                  for c, s, why in splits.split_shortfalls(
                      label_idx, groups.tolist(), split_idx.tolist(), opts["fractions"],
                      n_classes=len(classes))]
    for f in shortfalls:
        log.warning("export: class %s has no item in the %s split: %s", f["class"], f["split"],
                    f["reason"])
    sizes = Counter(groups.tolist())
    for rec, h, g, s in zip(records, hashes, groups, split_idx, strict=True):
        rec.update(split=splits.SPLIT_NAMES[s], phash=f"{h:016x}", group=records[g]["id"])
    train = [r for r in records if r["split"] == "train"]
    plan = balance_.balance_train([r["id"] for r in train], [r["label"] for r in train],
                                  mode=opts["balance"], seed=opts["seed"],
                                  augment=opts["augment_minority"])
    return {"balance": plan, "train_before": Counter(r["label"] for r in train),
            "n_dup_groups": sum(1 for n in sizes.values() if n > 1),
            "n_dup_items": sum(n for n in sizes.values() if n > 1),
            "largest_group": _largest_group(sizes, len(records), opts),
            "shortfalls": shortfalls}


def _largest_group(sizes: Counter, n: int, opts: dict[str, Any]) -> int:
    """Size of the largest near-duplicate group, with a warning when it is large enough
    to skew the split (chains of look-alikes join through union-find)."""
    largest = max(sizes.values())
    if largest > max(2, LARGE_GROUP_SHARE * n):
        log.warning("export: one near-duplicate group holds %d of %d items, so it all lands "
                    "in one split; lower near_duplicate_distance (now %d) if these are not "
                    "copies of each other", largest, n, opts["near_duplicate_distance"])
    return largest


def unreadable(project: Project, rec: dict[str, Any], exc: BaseException) -> str:
    """The message for a record whose image cannot be read."""
    return (f"item {rec['id']} ({rec['path']}): cannot read {image_path(project, rec)} "
            f"({type(exc).__name__}: {exc}). Restore the file under the image root, or "
            "re-run 'alearn ingest'.")
