"""``alearn export``: the converged dataset, with splits, balancing and a dataset card."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from alearn.cli.common import Context, console, json_option, pass_ctx, print_json, print_table
from alearn.exceptions import AlearnError

# the library's names, spelt out here so that `alearn --help` imports no export code;
# tests/test_export.py checks they match
EXPORT_FORMATS = ("imagefolder", "csv", "jsonl", "parquet", "hf")  # alearn.export.formats
BALANCE_MODES = ("none", "oversample", "undersample", "weights")  # alearn.export.balance


def _parse_split_option(_ctx: click.Context, _param: click.Parameter,
                        value: str) -> tuple[float, float, float]:
    from alearn.export.splits import parse_split

    try:
        return parse_split(value)
    except AlearnError as exc:
        raise click.BadParameter(str(exc), param_hint="--split") from None


@click.command("export")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder to create (written atomically).")
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="imagefolder",
              show_default=True, help="Layout and record format.")
@click.option("--split", default="0.8,0.1,0.1", show_default=True,
              callback=_parse_split_option, help="Train,validation,test shares.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Fixes the split, balancing and augmentation.")
@click.option("--balance", type=click.Choice(BALANCE_MODES), default="none",
              show_default=True, help="Class balance of the train split.")
@click.option("--augment-minority", is_flag=True,
              help="Oversampled copies are augmented (flip, rotation, colour jitter).")
@click.option("--resize", type=click.IntRange(8, 4096), default=None,
              help="Export square images of this side (default: original files).")
@click.option("--fit", type=click.Choice(("pad", "crop")), default="pad", show_default=True,
              help="With --resize: letterbox (pad) or center crop.")
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Leave out labels below this confidence.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Leave out items whose votes agree less with the label.")
@click.option("--near-duplicate-distance", type=click.IntRange(0, 32), default=4,
              show_default=True, help="Hash bits within which images share a split.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier export at --out.")
@click.option("--annotator-names", is_flag=True,
              help="Write annotators' emails in the votes (default: stable pseudonyms).")
@json_option
@pass_ctx
def export_cmd(ctx: Context, out: Path, fmt: str, split: tuple[float, float, float], seed: int,
               balance: str, augment_minority: bool, resize: int | None, fit: str,
               min_confidence: float, min_agreement: float, near_duplicate_distance: int,
               overwrite: bool, annotator_names: bool, as_json: bool) -> None:
    """Write the trusted labels, images, splits and a dataset card to --out."""
    from alearn.export.dataset import export_dataset

    if augment_minority and balance != "oversample":
        raise click.BadParameter("needs --balance oversample", param_hint="--augment-minority")
    summary = export_dataset(
        ctx.project, out, format=fmt, split=split, seed=seed, balance=balance,
        augment_minority=augment_minority, resize=resize, fit=fit,
        min_confidence=min_confidence, min_agreement=min_agreement,
        near_duplicate_distance=near_duplicate_distance, overwrite=overwrite,
        progress=not as_json and sys.stderr.isatty(), annotator_names=annotator_names)
    if as_json:
        print_json(summary.to_dict())
        return
    splits = list(summary.counts)
    rows = [{"class": c, **{s: summary.counts[s][c] for s in splits},
             "total": sum(summary.counts[s][c] for s in splits)}
            for c in ctx.project.config.classes]
    rows.append({"class": "total", **{s: sum(summary.counts[s].values()) for s in splits},
                 "total": summary.n_files})
    print_table("Exported files by class and split", rows, ["class", *splits, "total"])
    r = summary.removed
    console.print(f"{summary.n_files} files ({summary.n_items} items) in {summary.out} "
                  f"({summary.format}); filters removed {r['unknown_class']} unknown-class, "
                  f"{r['min_confidence']} low-confidence, {r['min_agreement']} low-agreement "
                  "labels.", highlight=False, markup=False)
    for f in summary.shortfalls:
        console.print(f"warning: class {f['class']} has no item in the {f['split']} split: "
                      f"{f['reason']}.", highlight=False, markup=False)
    if summary.shortfalls:
        console.print("Label more items of these classes ('alearn round start'), or export "
                      "fewer splits (e.g. --split 0.9,0.1,0); the dataset card README.md "
                      "lists them too.", highlight=False, markup=False)
