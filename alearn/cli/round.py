"""``alearn round``: plan, start, sync, close, retry and abort labeling rounds."""

from __future__ import annotations

import click

from alearn.cli.common import (
    Context,
    batch_size_option,
    check_strategy,
    console,
    err_console,
    fmt,
    json_option,
    pass_ctx,
    print_json,
    print_table,
    redis_connection,
    round_by_number,
    round_number_option,
    strategy_option,
)


@click.group("round")
def round_group() -> None:
    """Plan, start, watch and close labeling rounds."""


@round_group.command("plan")
@batch_size_option
@strategy_option
@json_option
@pass_ctx
def round_plan(ctx: Context, batch_size: int | None, strategy: str | None,
               as_json: bool) -> None:
    """Preview the next batch (item, path, score, predicted class); nothing is pushed.
    Images not embedded yet are embedded first, as 'alearn embed' does."""
    from alearn.query.selection import plan_batch
    from alearn.query.strategies import check_strategy_name

    check_strategy(strategy)
    check_strategy_name(strategy or ctx.project.config.rounds.strategy)  # before any work
    _embed_missing(ctx, as_json)
    plan = plan_batch(ctx.project, batch_size=batch_size, strategy=strategy)
    if as_json:
        print_json(plan.to_dict())
        return
    console.print(f"Strategy [bold]{plan.strategy}[/], model {plan.model_version or '-'} "
                  f"({plan.n_train} labels), pool {plan.n_pool}. Lower score = label first.")
    rows = [{"rank": it.rank, "item": it.item_id, "path": it.path, "score": f"{it.score:.3f}",
             "predicted": it.predicted} for it in plan.items]
    print_table("Planned batch", rows, ["rank", "item", "path", "score", "predicted"])


def _embed_missing(ctx: Context, as_json: bool) -> None:
    """Embed the ingested images the feature cache lacks (nothing to do is cheap: no
    weights are loaded); says so on stderr, so that --json stays clean."""
    import sys

    from alearn.features.pipeline import embed_project

    summary = embed_project(ctx.project, progress=not as_json and sys.stderr.isatty())
    if summary.computed or summary.failed:
        err_console.print(f"Embedded {summary.computed} new images first ('alearn embed'), "
                          f"{len(summary.failed)} failed"
                          + (": see 'alearn embed'." if summary.failed else "."),
                          highlight=False)


@round_group.command("start")
@batch_size_option
@strategy_option
@click.option("--overlap", type=click.IntRange(min=1), default=None,
              help="Exactly K votes per image (default: rounds.overlap if set, else "
                   "adaptive votes between rounds.min_votes and rounds.max_votes).")
@click.option("--embed-shards", type=click.IntRange(min=1), default=None,
              help="Split the embedding of new images into this many parallel jobs "
                   "(default: one per live embed worker, when there are at least 2 x 1024 "
                   "new images).")
@json_option
@pass_ctx
def round_start(ctx: Context, batch_size: int | None, strategy: str | None,
                overlap: int | None, embed_shards: int | None, as_json: bool) -> None:
    """Start a round: the workers embed, train, select and push the batch."""
    from workers.enqueue import ensure_tick
    from workers.orchestrate import start_round, team_warnings

    check_strategy(strategy)
    conn = redis_connection(ctx)
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


@round_group.command("sync")
@click.option("--wait", is_flag=True,
              help="Pull now in this process instead of enqueueing (prints JSON).")
@click.option("--full", is_flag=True,
              help="List every Label Studio task, not only those changed since the last pull.")
@json_option
@pass_ctx
def round_sync(ctx: Context, wait: bool, full: bool, as_json: bool) -> None:
    """Pull annotations from Label Studio now (the workers also pull periodically)."""
    from workers import jobs
    from workers.enqueue import enqueue_pull

    if full:
        from labelstudio.pull_window import forget

        forget(ctx.project.store)
    if wait:
        from workers.orchestrate import progress_round

        out = jobs.pull_job(str(ctx.project.root))
        if not isinstance(out, dict):
            raise click.ClickException("a worker is pulling right now; try again in a few "
                                       "seconds, or drop --wait.")
        out["round"] = progress_round(ctx.project, redis_connection(ctx))
        print_json(out)
        return
    enqueued = enqueue_pull(ctx.project, redis_connection(ctx), delay=0)
    if as_json:
        print_json({"enqueued": bool(enqueued)})
    else:
        console.print("Pull enqueued." if enqueued else "A pull is already pending.")


@round_group.command("close")
@round_number_option("the active round")
@click.option("--force", is_flag=True,
              help="Close even with open tasks: those nobody labeled are removed from Label "
                   "Studio, partly labeled ones locked; votes given are kept and counted.")
@json_option
@pass_ctx
def round_close(ctx: Context, number: int | None, force: bool, as_json: bool) -> None:
    """Close a round now: pull, then agreement, consensus and metrics. A round with open
    tasks (fewer votes than asked for) needs --force. A closed round marked stale (a
    vote changed after it closed) is recomputed."""
    from alearn.rounds import metrics as round_metrics
    from workers.commands import close_now

    rnd = round_by_number(ctx, number)
    result = close_now(ctx.project, redis_connection(ctx), rnd.id, force=force)
    if as_json:
        print_json(result)
        return
    m = round_metrics.RoundMetrics.from_json(result)
    gone = result.get("withdrawn")
    console.print(f"Round {rnd.number} closed: {m.labels_spent} labels, "
                  f"mean pairwise Cohen's kappa {fmt(m.kappa)}, cv accuracy "
                  f"{fmt(m.cv_accuracy)}, consensus {m.consensus}."
                  + (f" Open tasks: {gone['deleted']} unlabeled removed from Label Studio, "
                     f"{gone['locked']} partly labeled locked (their votes counted)."
                     if gone else "")
                  + (f" Round {result['next_round']} started." if result.get("next_round")
                     else ""))


@round_group.command("retry")
@round_number_option("the active round, else the latest")
@json_option
@pass_ctx
def round_retry(ctx: Context, number: int | None, as_json: bool) -> None:
    """Resume a failed or stuck round from its first unfinished step, on the workers."""
    from workers.commands import retry_round

    rnd = round_by_number(ctx, number)
    step = retry_round(ctx.project, redis_connection(ctx), rnd.id)
    if as_json:
        print_json({"round": rnd.number, "round_id": rnd.id, "resumes_at": step})
        return
    console.print(f"Round {rnd.number} resumes at {step} on the workers. Watch it with "
                  "'alearn status'.")


@round_group.command("abort")
@round_number_option("the active round, else the latest")
@json_option
@pass_ctx
def round_abort(ctx: Context, number: int | None, as_json: bool) -> None:
    """End a round: keep its votes, take its unlabeled tasks out of Label Studio."""
    from workers.commands import abort_round

    rnd = round_by_number(ctx, number)
    done = abort_round(ctx.project, redis_connection(ctx), rnd.id)
    if as_json:
        print_json({"round": rnd.number, "round_id": rnd.id, "aborted": True,
                    "withdrawn": done})
        return
    console.print(f"Round {rnd.number} aborted; votes already given are kept"
                  + (f" ({done['deleted']} unlabeled tasks removed from Label Studio, "
                     f"{done['locked']} partly labeled tasks locked)." if done else ".")
                  + " Start the next one with 'alearn round start'.")
