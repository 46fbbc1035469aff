"""The dataset card: ``README.md`` inside every export.

It says what is in the export and where it came from: counts per class and split, which
classes are missing from which split and why, the rounds with their agreement figures, the
stopping reason, the filters and options, and provenance (project, backbone, alearn
version). It never holds a URL, a token or a clock time, so the same store and options
always give the same card.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from alearn.exceptions import AlearnError
from alearn.export.formats import TABLE_FILES
from alearn.project import Project
from alearn.rounds import metrics as round_metrics

log = logging.getLogger(__name__)


def rounds_summary(project: Project) -> list[dict[str, Any]]:
    """Per round: number, status, strategy, model version, labels spent, agreement."""
    out = []
    for r, m in round_metrics.by_round(project.store):
        agreement = m.agreement or {}
        pct = (agreement.get("percent_agreement") or {}).get("value")
        fleiss = (agreement.get("fleiss_kappa") or {}).get("value")
        out.append({
            "number": r.number, "status": r.status, "strategy": r.strategy,
            "model_version": r.model_version, "labels_spent": m.labels_spent,
            "kappa": m.kappa, "fleiss_kappa": fleiss, "alpha": m.alpha,
            "percent_agreement": pct, "consensus": m.consensus,
        })
    return out


def stopping_reason(project: Project) -> str:
    """``alearn.rounds.convergence.convergence_status(project).summary``, or 'not assessed'."""
    from alearn.rounds.convergence import convergence_status

    try:
        status = convergence_status(project)
        return str(status.summary or ("converged" if status.converged else "not converged"))
    except (AttributeError, AlearnError) as exc:
        log.warning("convergence status unavailable: %s", exc)
        return f"not assessed (the convergence check raised {type(exc).__name__})"


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def layout(fmt: str, weights: bool) -> list[str]:
    """One line per file or folder of an export, for the card."""
    table = TABLE_FILES.get(fmt)
    files = {
        "csv": [f"{table}: one row per image file; nested fields are JSON strings",
                "images/<split>/<class>/: the image files"],
        "jsonl": [f"{table}: one JSON object per image file",
                  "images/<split>/<class>/: the image files"],
        "parquet": [f"{table}: one row per image file (`extra` is a JSON string)",
                    "images/<split>/<class>/: the image files"],
        "imagefolder": ["<split>/<class>/: the image files (torchvision ImageFolder per split)",
                        f"{table}: one JSON object per image file"],
        "hf": ["<split>/<class>/: the image files",
               "<split>/metadata.parquet: the records; load with datasets.load_dataset("
               "'imagefolder', data_dir=THIS_FOLDER)"],
    }[fmt]
    files += ["classes.json: class index, name and folder", "stats.json: train pixel mean/std",
              "transforms.json: the backbone's train and eval transforms"]
    return files + (["class_weights.json: train class weights"] if weights else [])


def _shortfalls(shortfalls: Sequence[dict[str, str]]) -> list[str]:
    """The card's lines on classes missing from a split with a non-zero share."""
    if not shortfalls:
        return ["Every class has items in every split with a non-zero share."]
    return ["Classes missing from a split with a non-zero share (that split cannot "
            "measure them):", "",
            *_table(["class", "split", "why"],
                    [[f["class"], f["split"], f["reason"]] for f in shortfalls]),
            "", "Label more items of these classes (`alearn round start`), or export fewer "
            "splits (e.g. `--split 0.9,0.1,0`)."]


def render_card(info: dict[str, Any]) -> str:
    """Markdown for the card; ``info`` is what :func:`alearn.export.dataset.export_dataset`
    gathered (see the keys used below)."""
    classes: list[str] = info["classes"]
    splits: list[str] = info["splits"]
    counts: dict[str, dict[str, int]] = info["counts"]
    opts: dict[str, Any] = info["options"]
    lines = [f"# {info['project']}: labeled image dataset", "",
             f"{info['n_files']} image files of {info['n_items']} labeled items in "
             f"{len(classes)} classes, exported by alearn {info['alearn_version']} "
             f"in the `{opts['format']}` format.", "",
             "## Counts per class and split", ""]
    rows = [[c, *(counts.get(s, {}).get(c, 0) for s in splits),
             sum(counts.get(s, {}).get(c, 0) for s in splits)] for c in classes]
    rows.append(["**total**", *(sum(counts.get(s, {}).values()) for s in splits),
                 info["n_files"]])
    lines += _table(["class", *splits, "total"], rows)
    before = info["train_before_balance"]
    lines += ["", f"Balance of the train split: `{opts['balance']}`."]
    if opts["balance"] in ("oversample", "undersample"):
        lines += ["Train counts before balancing: "
                  + ", ".join(f"{c} {before.get(c, 0)}" for c in classes) + "."]
        if opts["balance"] == "oversample":
            kind = "augmented" if opts["augment_minority"] else "plain duplicate"
            lines += [f"Oversampling added {info['n_copies']} {kind} copies (column `copy_index` "
                      "> 0; `augment` lists each copy's transforms)."]
        else:
            lines += [f"Undersampling left out {info['n_dropped']} train items."]
    if info.get("class_weights"):
        lines += ["Class weights (`class_weights.json`, n / (k * count)): "
                  + ", ".join(f"{c} {w:.4f}" for c, w in info["class_weights"].items()) + "."]
    lines += ["", "## Labels and agreement", "",
              "Only trusted labels are exported: manifest (gold) labels, consensus of the "
              "annotators' votes, and adjudicated labels. Each record has the label, its "
              "confidence and method, the votes per annotator (stable pseudonyms unless "
              "the export asked for annotators' emails), the item's agreement (share "
              "of votes matching the label), and the round and model version that chose it.",
              ""]
    by_origin = info["by_origin"]
    lines += ["Labels by origin: " + ", ".join(f"{k} {v}" for k, v in sorted(by_origin.items()))
              + ".", "", f"Labels corrected by review: {info.get('corrected_by_review', 0)} "
              "(trusted labels a reviewer changed after the model flagged them as likely "
              "wrong; they are adjudicated labels now).", ""]
    rounds = info["rounds"]
    if rounds:
        lines += _table(
            ["round", "status", "strategy", "model version", "labels spent", "mean pairwise "
             "kappa", "Fleiss kappa", "Krippendorff alpha", "percent agreement"],
            [[r["number"], r["status"], r["strategy"], r["model_version"] or "–",
              _num(r["labels_spent"]), _num(r["kappa"]), _num(r["fleiss_kappa"]),
              _num(r["alpha"]), _num(r["percent_agreement"])] for r in rounds])
    else:
        lines += ["No labeling rounds: every label came from the manifest."]
    lines += ["", f"Stopping reason: {info['stopping_reason'].rstrip('.')}.", "",
              "## Filters", ""]
    removed = info["removed"]
    lines += [f"{removed['labeled']} trusted labels in the store; removed: "
              f"{removed['unknown_class']} not a project class, {removed['min_confidence']} "
              f"below min_confidence {opts['min_confidence']}, {removed['min_agreement']} "
              f"below min_agreement {opts['min_agreement']} (items without votes pass).",
              "", "## Splits and near-duplicates", "",
              f"Stratified split {opts['split']} (train, validation, test) with seed "
              f"{opts['seed']}. Images whose 64-bit perceptual (DCT) hashes differ in at most "
              f"{opts['near_duplicate_distance']} bits are grouped, and a group never spans "
              f"two splits. Near-duplicate groups: {info['n_dup_groups']}, holding "
              f"{info['n_dup_items']} items (column `group`); the largest has "
              f"{info['largest_group']}.", ""]
    lines += _shortfalls(info["shortfalls"]) + ["", "## Images", ""]
    if opts["resize"]:
        lines += [f"Resized to {opts['resize']} x {opts['resize']} ({opts['fit']}: "
                  + ("letterboxed on black" if opts["fit"] == "pad" else "center-cropped")
                  + "), saved as PNG."]
    else:
        lines += ["Original files, byte for byte (augmented copies are PNG)."]
    stats = info["stats"]
    lines += [f"Per-channel mean {stats['mean']} and std {stats['std']} of the train "
              "split's pixels in [0, 1] are in `stats.json`; the backbone's recommended "
              "transforms are in `transforms.json`, the class order in `classes.json`.",
              "", "## Files", ""]
    lines += [f"- `{f.split(': ', 1)[0]}`: {f.split(': ', 1)[1]}" for f in info["layout"]]
    lines += ["- `checksums.sha256`: SHA-256 of every other file (`sha256sum -c`).", "",
              "## Provenance", ""]
    lines += _table(["key", "value"], [
        ["project", info["project"]], ["classes", ", ".join(classes)],
        ["backbone", info["backbone"]], ["alearn version", info["alearn_version"]],
        *([f"option {k}", f"`{v}`"] for k, v in opts.items()),
    ])
    return "\n".join(lines) + "\n"
