"""Setting a project up and filling its pool: ``alearn init``, ``ingest`` and ``embed``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from alearn.cli.common import Context, console, json_option, pass_ctx, print_json, print_table
from alearn.config import parse_classes
from alearn.project import Project


@click.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--classes", required=True, help="Comma-separated class names, e.g. cat,dog.")
@click.option(
    "--images",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder holding the images (the image root).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing alearn.toml.")
@json_option
@pass_ctx
def init(ctx: Context, directory: Path, classes: str, images: Path, force: bool,
         as_json: bool) -> None:
    """Create DIRECTORY/alearn.toml for a new project."""
    class_list = parse_classes(classes)
    project = Project.init(
        directory, classes=class_list, images=images, settings=ctx.settings, force=force
    )
    project.store.create_all()
    project.store.dispose()
    if as_json:
        print_json({"project": str(project.root), "config": str(project.root / "alearn.toml"),
                    "classes": class_list, "image_root": str(project.image_root)})
        return
    console.print(
        f"Initialised [bold]{project.root}[/] with {len(class_list)} classes; "
        f"images under {project.image_root}.\nNext: cd {directory} && alearn ingest"
    )


@click.command("ingest")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder to scan, inside the image root (default: the image root; "
                   "nothing when --manifest is given).")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV or JSONL manifest: path, label, source, captured_at, lat, lon, "
                   "license; other columns are kept as extra metadata.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              show_default="one per CPU core",
              help="Processes decoding images (started only for a run long enough to "
                   "pay for them).")
@click.option("--rehash", is_flag=True,
              help="Hash every known file to find changed bytes, not only files whose "
                   "size or modification time moved.")
@json_option
@pass_ctx
def ingest_cmd(ctx: Context, images: Path | None, manifest: Path | None, workers: int | None,
               rehash: bool, as_json: bool) -> None:
    """Record images and their metadata in the store; re-running adds only new files."""
    import os

    from rich.markup import escape

    from alearn.ingestion.driver import ingest

    summary = ingest(ctx.project, images=images, manifest=manifest, rehash=rehash,
                     workers=workers or len(os.sched_getaffinity(0)),
                     progress=not as_json and sys.stderr.isatty())
    if as_json:
        print_json(summary.to_dict())
        return
    earlier = summary.earlier_rejections
    console.print(f"added {summary.added}, duplicate {summary.duplicate}, rejected "
                  f"{summary.rejected}, skipped {summary.skipped} (seen before"
                  + (f"; {len(earlier)} of them rejected by an earlier ingest and unchanged "
                     "since" if earlier else "") + f"), updated {summary.updated}")
    for title, entries in (("Rejected", summary.rejections), ("Warnings", summary.warnings),
                           ("Changed files, refused", summary.changed),
                           ("Still rejected (by an earlier ingest; fix the file or its "
                            "manifest row and ingest again)", earlier)):
        if entries:
            print_table(title, [{"path": escape(p), "reason": escape(r)} for p, r in entries[:100]],
                        ["path", "reason"])
        if len(entries) > 100:
            console.print(f"... and {len(entries) - 100} more; use --json to see all.")


def _parse_shard_option(_ctx: click.Context, _param: click.Parameter,
                        value: str) -> tuple[int, int]:
    from alearn.features.pipeline import parse_shard

    try:
        return parse_shard(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--shard") from None


@click.command("embed")
@click.option("--shard", default="0/1", show_default=True, callback=_parse_shard_option,
              help="Embed only items whose id % n == i, given as i/n (e.g. 1/4).")
@click.option("--check", is_flag=True,
              help="Look up every item in the cache, not only those added since the last run.")
@json_option
@pass_ctx
def embed_cmd(ctx: Context, shard: tuple[int, int], check: bool, as_json: bool) -> None:
    """Embed the images not in the feature cache yet (with the configured backbone)."""
    from rich.markup import escape

    from alearn.features.pipeline import embed_project

    summary = embed_project(ctx.project, shard=shard, full=check,
                            progress=not as_json and sys.stderr.isatty())
    if as_json:
        print_json(summary.to_dict())
        return
    d = summary.to_dict()
    console.print(f"shard {d['shard']}: {d['items']} items, computed {d['computed']}, cached "
                  f"{d['cached']}, failed {d['failed']} in {d['seconds']} s "
                  f"({d['images_per_second'] or 0} img/s)\ncache key: {escape(d['key'])}")
    if summary.failed:
        print_table("Failed", [{"item": i, "reason": escape(r)} for i, r in summary.failed[:100]],
                    ["item", "reason"])
