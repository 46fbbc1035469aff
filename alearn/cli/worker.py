"""``alearn worker``: an RQ worker (with its scheduler) on alearn's queues."""

from __future__ import annotations

import click

from alearn.cli.common import Context, console, pass_ctx
from alearn.exceptions import AlearnError


@click.command("worker")
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
