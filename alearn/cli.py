"""The ``alearn`` command line: one command group over library calls.

This module is the composition root: the only place in ``alearn/`` that may import
``workers`` or ``labelstudio``. Each command builds the settings once, opens the project
and calls one library function. Results are tables, or JSON with ``--json``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from alearn.config import Settings, parse_classes
from alearn.exceptions import AlearnError
from alearn.project import Project

console = Console()
err_console = Console(stderr=True)


class Context:
    """What every command needs: settings and (lazily) the project."""

    def __init__(self, project_dir: Path | None) -> None:
        self.project_dir = project_dir
        self.settings = Settings.load()
        self._project: Project | None = None

    @property
    def project(self) -> Project:
        if self._project is None:
            self._project = Project.open(self.project_dir, self.settings)
        return self._project


pass_ctx = click.make_pass_decorator(Context)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def print_table(title: str, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    columns = columns or (list(rows[0]) if rows else [])
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    console.print(table)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--project",
    "project_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="ALEARN_PROJECT",
    help="Project directory (default: this folder or the nearest parent with alearn.toml).",
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def cli(click_ctx: click.Context, project_dir: Path | None, verbose: int) -> None:
    """alearn: active learning with people in the loop, for image classification."""
    global VERBOSE
    VERBOSE = verbose
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    click_ctx.obj = Context(project_dir)


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--classes", required=True, help="Comma-separated class names, e.g. cat,dog.")
@click.option(
    "--images",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder holding the images (the image root).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing alearn.toml.")
@pass_ctx
def init(ctx: Context, directory: Path, classes: str, images: Path, force: bool) -> None:
    """Create DIRECTORY/alearn.toml for a new project."""
    class_list = parse_classes(classes)
    project = Project.init(
        directory, classes=class_list, images=images, settings=ctx.settings, force=force
    )
    project.store.create_all()
    console.print(
        f"Initialised [bold]{project.root}[/] with {len(class_list)} classes; "
        f"images under {project.image_root}.\nNext: cd {directory} && alearn ingest"
    )


# --- commands added by feature modules go below this line (keep this marker) ---

# --- ls: a local Label Studio and annotator accounts ---


@cli.group("ls")
def ls_group() -> None:
    """Label Studio: a local server (development, demo) and annotator accounts."""


def _ls_data_dir(ctx: Context) -> Path:
    return ctx.project.data_dir / "labelstudio"


@ls_group.command("up")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              help="Port on 127.0.0.1.")
@click.option("--allow-webhook-host", "allow_hosts", multiple=True, metavar="HOST",
              help="An address Label Studio may call: the webhook receiver's, best one of "
                   "its own such as 127.0.0.2 (the whole address is allowed); SSRF "
                   "protection keeps every other private or local address out.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def ls_up(ctx: Context, port: int, allow_hosts: tuple[str, ...], as_json: bool) -> None:
    """Start a local Label Studio (loopback only) and set this project up in it."""
    from labelstudio.client import LSClient, ensure_project
    from labelstudio.server import (
        ADMIN_FILE,
        admin_credentials,
        local_document_root,
        start_server,
    )

    project, data_dir = ctx.project, _ls_data_dir(ctx)
    creds = admin_credentials(data_dir)
    with console.status("Starting Label Studio (30-90 s the first time)..."):
        info = start_server(data_dir, image_root=project.image_root, port=port,
                            username=creds["email"], password=creds["password"],
                            token=creds["token"], allow_hosts=allow_hosts)
    client = LSClient(info.url, creds["token"])
    ls_project = ensure_project(project.store, client, project.config, project.image_root,
                                document_root=local_document_root(data_dir))
    out = {"url": info.url, "pid": info.pid, "ls_project_id": ls_project,
           "project_url": f"{info.url}/projects/{ls_project}/", "email": creds["email"],
           "credentials_file": str(data_dir / ADMIN_FILE)}
    if as_json:
        print_json(out)
        return
    click.echo(f"Label Studio is up at {info.url} (pid {info.pid}); project: "
               f"{out['project_url']}\nLog in as {creds['email']} with password "
               f"{creds['password']} (kept in {out['credentials_file']}).\n"
               "For alearn commands and workers in this shell:\n"
               f"  export ALEARN_LS_URL={info.url}\n  export ALEARN_LS_TOKEN={creds['token']}")


@ls_group.command("down")
@pass_ctx
def ls_down(ctx: Context) -> None:
    """Stop this project's local Label Studio."""
    from labelstudio.server import stop_server

    stopped = stop_server(_ls_data_dir(ctx))
    click.echo("Label Studio stopped." if stopped else "No local Label Studio was running.")


@ls_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def ls_status(ctx: Context, as_json: bool) -> None:
    """Is this project's local Label Studio running?"""
    from labelstudio.server import server_status

    info = server_status(_ls_data_dir(ctx))
    out = {"running": info is not None, "url": info and info.url, "pid": info and info.pid}
    if as_json:
        print_json(out)
    else:
        click.echo(f"running at {info.url} (pid {info.pid})" if info else "not running")


@ls_group.group("users")
def ls_users() -> None:
    """The team: Label Studio accounts and the project's roster (only they label)."""


def _admin_token(ctx: Context, url: str) -> str:
    """The admin token for ``url``: ALEARN_LS_TOKEN, else the local server's."""
    token = ctx.settings.label_studio_token()
    if token:
        return token
    from labelstudio.server import ADMIN_FILE, admin_credentials, server_status

    data_dir = _ls_data_dir(ctx)
    local = server_status(data_dir)
    if local is not None and local.url.rstrip("/") == url.rstrip("/") and (
            data_dir / ADMIN_FILE).exists():
        return admin_credentials(data_dir)["token"]
    raise click.UsageError(f"no admin token for {url}: set ALEARN_LS_TOKEN (an admin's "
                           "token), or start the local server with 'alearn ls up'.")


@ls_users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(("annotator", "reviewer")), default="annotator",
              show_default=True, help="Annotators' votes count; reviewers decide adjudication.")
@click.option("--existing", is_flag=True,
              help="Only put an existing Label Studio account (NAME is its email) on the roster.")
@click.option("--password", default=None, help="At least 8 characters; generated if omitted.")
@click.option("--url", default=None,
              help="Label Studio URL (default: this project's local server, else ALEARN_LS_URL).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def ls_users_add(ctx: Context, name: str, role: str, existing: bool, password: str | None,
                 url: str | None, as_json: bool) -> None:
    """Add NAME (a name or an email) to the team: a Label Studio account made through a
    one-time invite (sign-up is closed), and a place on the project's roster. Prints how
    to log in, once."""
    from alearn.team import add_member
    from labelstudio.annotators import annotator_email, invite_annotator, new_password
    from labelstudio.server import server_status

    email = annotator_email(name)
    if existing:
        add_member(ctx.project.store, email, role)
        out = {"email": email, "role": role}
        print_json(out) if as_json else click.echo(f"{email} is on the roster as {role}.")
        return
    if url is None:
        local = server_status(_ls_data_dir(ctx))
        url = local.url if local else ctx.settings.ls_url
    if password is not None and len(password) < 8:
        raise click.BadParameter("must have at least 8 characters.", param_hint="--password")
    password = password or new_password()
    who = invite_annotator(url, _admin_token(ctx, url), email, password)
    add_member(ctx.project.store, who.email, role)
    out = {"login_url": f"{url.rstrip('/')}/user/login/", "email": who.email,
           "password": password, "user_id": who.user_id, "role": role}
    if as_json:
        print_json(out)
    else:
        click.echo(f"{role.capitalize()} account ready and on the roster. Log in at "
                   f"{out['login_url']}\n  email:    {who.email}\n  password: {password}\n"
                   "(shown once: alearn keeps no copy of it)")


@ls_users.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def ls_users_list(ctx: Context, as_json: bool) -> None:
    """The project's roster: whose votes and decisions count."""
    from alearn.team import roster

    rows = [{"email": e, "role": r} for e, r in roster(ctx.project.store).items()]
    if as_json:
        print_json(rows)
    elif rows:
        print_table("Roster", rows, ["email", "role"])
    else:
        click.echo("The roster is empty: no vote counts. Add people with 'alearn ls users "
                   "add NAME'.")


@ls_users.command("remove")
@click.argument("email")
@pass_ctx
def ls_users_remove(ctx: Context, email: str) -> None:
    """Take EMAIL off the roster; their votes are set aside from the next pull on."""
    from alearn.team import remove_member

    if not remove_member(ctx.project.store, email):
        raise click.BadParameter(f"{email} is not on the roster ('alearn ls users list').",
                                 param_hint="EMAIL")
    click.echo(f"{email} is off the roster; their votes no longer count.")



# --- report (static HTML) ---


@cli.command("report")
@click.option("--out", type=click.Path(path_type=Path), default=Path("report.html"),
              show_default=True, help="HTML file to write; its plots go to <name>_files/.")
@click.option("--reference", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON from scripts/bench_label_efficiency.py --out: draws its "
                   "random-sampling curve under the learning curve.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def report_cmd(ctx: Context, out: Path, reference: Path | None, as_json: bool) -> None:
    """Write a static HTML report: convergence, learning curve, agreement, classes,
    confusion matrix, annotators and rounds."""
    from alearn.report.html import write_report

    path = write_report(ctx.project, out, reference=reference)
    plots = sorted(str(p) for p in (path.parent / f"{path.stem}_files").glob("*.png"))
    if as_json:
        print_json({"report": str(path), "plots": plots})
        return
    console.print(f"Report written to {path} ({len(plots)} plots). Open it in a browser.")

# --- export (the converged dataset) ---

EXPORT_FORMATS = ("imagefolder", "csv", "jsonl", "parquet", "hf")  # alearn.export.formats
BALANCE_MODES = ("none", "oversample", "undersample", "weights")  # alearn.export.balance


def _parse_split_option(_ctx: click.Context, _param: click.Parameter,
                        value: str) -> tuple[float, float, float]:
    from alearn.export.splits import parse_split

    try:
        return parse_split(value)
    except AlearnError as exc:
        raise click.BadParameter(str(exc), param_hint="--split") from None


@cli.command("export")
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
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

# --- embed (feature cache) ---


def _parse_shard_option(_ctx: click.Context, _param: click.Parameter,
                        value: str) -> tuple[int, int]:
    from alearn.features.pipeline import parse_shard

    try:
        return parse_shard(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--shard") from None


@cli.command("embed")
@click.option("--shard", default="0/1", show_default=True, callback=_parse_shard_option,
              help="Embed only items whose id % n == i, given as i/n (e.g. 1/4).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def embed_cmd(ctx: Context, shard: tuple[int, int], as_json: bool) -> None:
    """Embed the images not in the feature cache yet (with the configured backbone)."""
    from rich.markup import escape

    from alearn.features.pipeline import embed_project

    summary = embed_project(ctx.project, shard=shard,
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


# --- ingest (images and manifests) ---


@cli.command("ingest")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder to scan, inside the image root (default: the image root; "
                   "nothing when --manifest is given).")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV or JSONL manifest: path, label, source, captured_at, lat, lon, "
                   "license; other columns are kept as extra metadata.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Threads decoding images.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def ingest_cmd(ctx: Context, images: Path | None, manifest: Path | None, workers: int,
               as_json: bool) -> None:
    """Record images and their metadata in the store; re-running adds only new files."""
    from rich.markup import escape

    from alearn.ingestion.driver import ingest

    summary = ingest(ctx.project, images=images, manifest=manifest, workers=workers,
                     progress=not as_json and sys.stderr.isatty())
    if as_json:
        print_json(summary.to_dict())
        return
    console.print(f"added {summary.added}, duplicate {summary.duplicate}, rejected "
                  f"{summary.rejected}, skipped {summary.skipped} (seen before), updated "
                  f"{summary.updated}")
    for title, entries in (("Rejected", summary.rejections), ("Warnings", summary.warnings),
                           ("Changed files, refused", summary.changed)):
        if entries:
            print_table(title, [{"path": escape(p), "reason": escape(r)} for p, r in entries[:100]],
                        ["path", "reason"])
        if len(entries) > 100:
            console.print(f"... and {len(entries) - 100} more; use --json to see all.")


# --- round planning (selection) ---


@cli.group()
def round() -> None:  # noqa: A001 - the command is `alearn round`
    """Plan, start, watch and close labeling rounds."""


@round.command("plan")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Items in the batch (default: rounds.batch_size).")
@click.option("--strategy", default=None,
              help="Strategy name or 'auto' (default: rounds.strategy).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def round_plan(ctx: Context, batch_size: int | None, strategy: str | None,
               as_json: bool) -> None:
    """Preview the next batch (item, path, score, predicted class); nothing is pushed."""
    from alearn.exceptions import UnknownNameError
    from alearn.query.selection import plan_batch
    from alearn.query.strategies import check_strategy_name

    if strategy is not None:
        try:
            check_strategy_name(strategy)
        except UnknownNameError as exc:
            raise click.BadParameter(str(exc), param_hint="--strategy") from None
    plan = plan_batch(ctx.project, batch_size=batch_size, strategy=strategy)
    if as_json:
        print_json(plan.to_dict())
        return
    console.print(f"Strategy [bold]{plan.strategy}[/], model {plan.model_version or '-'} "
                  f"({plan.n_train} labels), pool {plan.n_pool}. Lower score = label first.")
    rows = [{"rank": it.rank, "item": it.item_id, "path": it.path, "score": f"{it.score:.3f}",
             "predicted": it.predicted} for it in plan.items]
    print_table("Planned batch", rows, ["rank", "item", "path", "score", "predicted"])

# --- round loop, workers and status (lead) ---


def _check_strategy_flag(strategy: str | None) -> None:
    from alearn.exceptions import UnknownNameError
    from alearn.query.strategies import check_strategy_name

    if strategy is not None:
        try:
            check_strategy_name(strategy)
        except UnknownNameError as exc:
            raise click.BadParameter(str(exc), param_hint="--strategy") from None


@round.command("start")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Items in the batch (default: rounds.batch_size).")
@click.option("--strategy", default=None,
              help="Strategy name or 'auto' (default: rounds.strategy).")
@click.option("--overlap", type=click.IntRange(min=1), default=None,
              help="Annotators per image (default: rounds.overlap).")
@click.option("--embed-shards", type=click.IntRange(min=1), default=1, show_default=True,
              help="Split the embedding of new images into this many parallel jobs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def round_start(ctx: Context, batch_size: int | None, strategy: str | None,
                overlap: int | None, embed_shards: int, as_json: bool) -> None:
    """Start a round: the workers embed, train, select and push the batch."""
    from workers.orchestrate import ensure_tick, start_round, team_warnings

    _check_strategy_flag(strategy)
    conn = _redis(ctx)
    rnd = start_round(ctx.project, conn, batch_size=batch_size, strategy=strategy,
                      overlap=overlap, embed_shards=embed_shards)
    ensure_tick(ctx.project, conn)
    warnings = team_warnings(ctx.project)
    if as_json:
        print_json({"round": rnd.number, "round_id": rnd.id, "status": rnd.status,
                    "job_id": rnd.job_id, "warnings": warnings})
        return
    console.print(f"Round {rnd.number} planned: the workers now embed, train, select and "
                  "push it. Watch it with 'alearn status'.")
    for line in warnings:
        err_console.print(f"[yellow]warning:[/] {line}", highlight=False)


@round.command("sync")
@click.option("--wait", is_flag=True, help="Pull now in this process instead of enqueueing.")
@pass_ctx
def round_sync(ctx: Context, wait: bool) -> None:
    """Pull annotations from Label Studio now (the workers also pull periodically)."""
    from workers import jobs
    from workers.orchestrate import enqueue_pull

    if wait:
        from workers.orchestrate import progress_round

        out = jobs.pull_job(str(ctx.project.root))
        if not isinstance(out, dict):
            raise click.ClickException("a worker is pulling right now; try again in a few "
                                       "seconds, or drop --wait.")
        out["round"] = progress_round(ctx.project, _redis(ctx))
        print_json(out)
    elif enqueue_pull(ctx.project, _redis(ctx), delay=0):
        console.print("Pull enqueued.")
    else:
        console.print("A pull is already pending.")


@round.command("close")
@click.option("--round", "number", type=int, default=None,
              help="Round number (default: the active round).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def round_close(ctx: Context, number: int | None, as_json: bool) -> None:
    """Close a round now: pull, then agreement, consensus and metrics. A closed round
    marked stale (a vote changed after it closed) is recomputed."""
    from workers.orchestrate import close_now

    rnd = _round_by_number(ctx, number)
    metrics = close_now(ctx.project, _redis(ctx), rnd.id)
    if as_json:
        print_json(metrics)
        return
    console.print(f"Round {rnd.number} closed: {metrics.get('labels_spent')} labels, "
                  f"mean pairwise Cohen's kappa {_fmt(metrics.get('kappa'))}, cv accuracy "
                  f"{_fmt(metrics.get('cv_accuracy'))}, consensus {metrics.get('consensus')}."
                  + (f" Round {metrics['next_round']} started." if metrics.get("next_round")
                     else ""))


def _round_by_number(ctx: Context, number: int | None) -> Any:
    from sqlalchemy import select

    from alearn.rounds.lifecycle import get_round
    from alearn.store import Round

    store = ctx.project.store
    if number is None:
        return get_round(store)
    with store.session() as s:
        rnd = s.scalar(select(Round).where(Round.number == number))
    if rnd is None:
        raise click.BadParameter(f"there is no round {number}", param_hint="--round")
    return rnd


@round.command("retry")
@click.option("--round", "number", type=int, default=None,
              help="Round number (default: the active round, else the latest).")
@pass_ctx
def round_retry(ctx: Context, number: int | None) -> None:
    """Resume a failed or stuck round from its first unfinished step, on the workers."""
    from workers.orchestrate import retry_round

    rnd = _round_by_number(ctx, number)
    step = retry_round(ctx.project, _redis(ctx), rnd.id)
    console.print(f"Round {rnd.number} resumes at {step} on the workers. Watch it with "
                  "'alearn status'.")


@round.command("abort")
@click.option("--round", "number", type=int, default=None,
              help="Round number (default: the active round, else the latest).")
@pass_ctx
def round_abort(ctx: Context, number: int | None) -> None:
    """End a round: keep its votes, take its unlabeled tasks out of Label Studio."""
    from workers.orchestrate import abort_round

    rnd = _round_by_number(ctx, number)
    done = abort_round(ctx.project, _redis(ctx), rnd.id)
    console.print(f"Round {rnd.number} aborted; votes already given are kept"
                  + (f" ({done['deleted']} unlabeled tasks removed from Label Studio, "
                     f"{done['locked']} partly labeled tasks locked)." if done else ".")
                  + " Start the next one with 'alearn round start'.")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


@cli.command("agreement")
@click.option("--round", "number", type=int, default=None,
              help="Round number (default: every round).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def agreement_cmd(ctx: Context, number: int | None, as_json: bool) -> None:
    """Inter-annotator agreement with 95% bootstrap intervals, and annotator quality."""
    from alearn.report.agreement_view import agreement_summary

    summary = agreement_summary(ctx.project, round_number=number)
    if as_json:
        print_json(summary)
        return
    scope = f"round {number}" if number is not None else "all rounds"
    console.print(f"Agreement over {scope}: {summary['n_items']} items, "
                  f"{summary['n_annotators']} annotators, {summary['n_ratings']} ratings")
    print_table("Agreement", summary["figures"], ["figure", "value", "95% CI", "items", "note"])
    if summary["pairwise"]:
        print_table("Cohen's kappa by pair", summary["pairwise"],
                    ["a", "b", "value", "95% CI", "items", "note"])
    if summary["annotators"]:
        print_table("Annotators", summary["annotators"],
                    ["annotator", "items", "accuracy (Dawid-Skene)", "accuracy vs others",
                     "peer kappa", "gold accuracy", "median s", "flag"])


def _redis(ctx: Context):  # noqa: ANN202 - redis.Redis, imported lazily
    from workers.queues import connect

    return connect(ctx.settings)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """Pool, trusted labels, rounds, the current round's progress, queues and workers."""
    from alearn.report.status import project_status
    from workers.orchestrate import ensure_tick, queue_info

    info = project_status(ctx.project)
    try:
        conn = _redis(ctx)
        ensure_tick(ctx.project, conn)  # the safety net is re-armed by every status
        info["queues"] = queue_info(conn, ctx.settings)
    except AlearnError as exc:
        info["queues"] = {"error": str(exc)}
    if as_json:
        print_json(info)
        return
    console.print(
        f"[bold]{info['project']}[/]: pool {info['pool_size']}, trusted labels "
        f"{info['trusted_labels']} ({info['unlabeled']} unlabeled), rejected files "
        f"{info['rejected_files']}"
    )
    print_table("Trusted labels by class",
                [{"class": c, "labels": n} for c, n in info["trusted_by_class"].items()])
    if info["rounds"]:
        print_table("Rounds", info["rounds"])
    cur = info["current_round"]
    if cur:
        console.print(
            f"Round {cur['number']} is [bold]{cur['status']}[/]: {cur['tasks_done']}/"
            f"{cur['tasks']} tasks done, {cur['annotations']} annotations, "
            f"{cur['set_aside']} set aside"
        )
        if cur["by_annotator"]:
            rows = [{"annotator": a, "annotations": n} for a, n in cur["by_annotator"].items()]
            print_table("Annotations by annotator", rows)
    if info["set_aside_annotations"]:
        print_table("Annotations set aside", info["set_aside_annotations"])
    adj = info.get("adjudication") or {}
    if adj.get("items") or adj.get("waiting_for_votes"):
        console.print(f"Adjudication ({adj['mode']}): {adj['pending']} pending, "
                      f"{adj['decided']} decided, {len(adj['set_aside'])} decisions set aside"
                      + (f", {adj['waiting_for_votes']} items waiting for more votes"
                         if adj.get("waiting_for_votes") else ""))
        if adj["set_aside"]:
            print_table("Adjudication decisions set aside", adj["set_aside"])
    q = info["queues"]
    if "error" in q:
        console.print(f"[yellow]queues unavailable:[/] {q['error']}")
    else:
        print_table("Queues", [{"queue": k, **v} for k, v in q["queues"].items()])
        live = [w["name"] for w in q["workers"] if w["alive"]]
        dead = [w["name"] for w in q["workers"] if not w["alive"]]
        console.print(f"Live workers: {len(live)} " + ", ".join(live)
                      + (f" (dead, not yet expired: {', '.join(dead)})" if dead else ""))
        if not live:
            console.print("[yellow]No live worker:[/] start one with 'alearn worker &'.")
    if info["quarantined_annotations"]:
        console.print("Annotations in Label Studio that alearn does not count: "
                      + ", ".join(f"{n} {k}" for k, n in
                                  info["quarantined_annotations"].items()))
    for line in info["attention"]:
        console.print(f"[yellow]needs attention:[/] {line}", highlight=False)
    conv = info.get("convergence") or {}
    if conv.get("summary"):
        console.print(f"[bold]{conv['summary']}[/]", highlight=False)


@cli.command()
@click.option("--queues", "queue_names", default="embed,train,sync,round", show_default=True,
              help="Comma-separated queues this worker takes (GPU hosts: embed).")
@click.option("--burst", is_flag=True, help="Exit once the queues are empty.")
@click.option("--name", default=None, help="Worker name (default: host.pid).")
@pass_ctx
def worker(ctx: Context, queue_names: str, burst: bool, name: str | None) -> None:
    """Run an RQ worker (with its scheduler) on alearn's queues."""
    from workers.queues import QUEUE_NAMES
    from workers.worker import run_worker

    names = [n.strip() for n in queue_names.split(",") if n.strip()]
    bad = [n for n in names if n not in QUEUE_NAMES]
    if bad or not names:
        raise click.BadParameter(
            f"unknown queue(s) {bad}; valid: {', '.join(QUEUE_NAMES)}", param_hint="--queues")
    projects = []
    try:
        projects.append(str(ctx.project.root))
    except AlearnError:
        console.print("Worker serving any project whose jobs reach these queues.")
    run_worker(ctx.settings, names, burst=burst, name=name, projects=projects)


@cli.group()
def webhook() -> None:
    """The webhook receiver: Label Studio's hints become debounced pulls."""


def _webhook_secret(ctx: Context) -> str:
    secret = ctx.settings.webhook_secret
    if secret is None or not secret.get_secret_value():
        raise click.UsageError("set ALEARN_WEBHOOK_SECRET to a long random string first.")
    return secret.get_secret_value()


@webhook.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=8800, show_default=True)
@pass_ctx
def webhook_serve(ctx: Context, host: str, port: int) -> None:
    """Serve POST /webhook; each accepted call enqueues a debounced pull."""
    from labelstudio.webhook import create_app, serve
    from workers.orchestrate import enqueue_pull

    project, conn = ctx.project, _redis(ctx)
    app = create_app(_webhook_secret(ctx), lambda _event: enqueue_pull(project, conn))
    console.print(f"Webhook receiver on http://{host}:{port}/webhook")
    serve(app, host=host, port=port)


@webhook.command("register")
@click.option("--url", required=True, help="Where Label Studio reaches the receiver, "
              "e.g. http://127.0.0.1:8800/webhook.")
@pass_ctx
def webhook_register(ctx: Context, url: str) -> None:
    """Register the receiver in the project's Label Studio project (idempotent)."""
    from labelstudio.client import connect_label_studio
    from labelstudio.webhook import register_webhook

    ls_project = ctx.project.store.get_meta("ls_project_id")
    if ls_project is None:
        raise click.UsageError("no Label Studio project yet: start a round first.")
    hook = register_webhook(connect_label_studio(ctx.settings), int(ls_project), url,
                            _webhook_secret(ctx))
    console.print(f"Webhook {hook} sends annotation events to {url}.")


VERBOSE = 0


def _one_line(text: str) -> str:
    """The first line of a message (the rest, e.g. a log tail, only with -v)."""
    first, _, rest = str(text).strip().partition("\n")
    return first + (" (run with -v for details)" if rest.strip() and not VERBOSE else "")


def _explain(exc: BaseException) -> str | None:
    """One line for a failure outside alearn's own errors, or None if unexpected."""
    from redis.exceptions import RedisError
    from sqlalchemy.exc import SQLAlchemyError

    from alearn.config import safe_url

    if isinstance(exc, UnicodeDecodeError):
        return (f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}). Save it as "
                "UTF-8 and retry.")
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return (f"cannot use{where}: {exc.strerror or exc}. Check the path and its "
                "permissions, or choose another.")
    if isinstance(exc, SQLAlchemyError):
        orig = getattr(exc, "orig", None)
        return (f"the database failed: {_one_line(str(orig or exc))[:300]}. Check "
                "ALEARN_DATABASE_URL and that the database is running, then retry.")
    if isinstance(exc, RedisError):
        return (f"Redis failed: {safe_url(str(exc))[:300]}. Check ALEARN_REDIS_URL and that "
                "Redis is running, then retry.")
    return None


def main(argv: list[str] | None = None) -> None:
    """Entry point: every failure is one line on stderr (what was wrong, what to do) and
    a non-zero exit; the traceback only with -v."""
    try:
        cli.main(args=argv, prog_name="alearn", standalone_mode=False)
    except click.exceptions.Abort:
        err_console.print("Aborted.")
        sys.exit(130)
    except click.UsageError as exc:  # one line, and where to read more
        where = exc.ctx.command_path if exc.ctx is not None else "alearn"
        _print_error(f"{_one_line(exc.format_message())} (see '{where} --help')")
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        _print_error(_one_line(exc.format_message()))
        sys.exit(exc.exit_code)
    except AlearnError as exc:
        if VERBOSE:
            raise
        _print_error(_one_line(str(exc)))
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("Interrupted.")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no trace
        if VERBOSE:
            raise
        text = _explain(exc)
        if text is None:
            text = (f"unexpected {type(exc).__name__}: {_one_line(str(exc))[:300]}. Run the "
                    "command again with -v for the traceback, and report it.")
        _print_error(text)
        sys.exit(1)


def _print_error(text: str) -> None:
    from rich.markup import escape

    err_console.print(f"[red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
