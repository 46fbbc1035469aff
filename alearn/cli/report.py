"""Looking at a project: ``alearn status``, ``agreement`` and the static HTML ``report``."""

from __future__ import annotations

from pathlib import Path

import click

from alearn.cli.common import (
    Context,
    console,
    fmt,
    json_option,
    pass_ctx,
    print_json,
    print_table,
    redis_connection,
    round_number_option,
)
from alearn.exceptions import AlearnError

# the names people read for the keys of a round in 'alearn status --json'
ROUND_HEADERS = {"batch_size": "batch size", "model_version": "model",
                 "labels_spent": "labels spent", "cv_accuracy": "cv accuracy",
                 "kappa": "mean pairwise Cohen's kappa", "consensus_items": "consensus items",
                 "flagged": "low agreement"}


@click.command("report")
@click.option("--out", type=click.Path(path_type=Path), default=Path("report.html"),
              show_default=True, help="HTML file to write; its plots go to <name>_files/.")
@click.option("--reference", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON from scripts/bench_label_efficiency.py --out: draws its "
                   "random-sampling curve under the learning curve.")
@json_option
@pass_ctx
def report_cmd(ctx: Context, out: Path, reference: Path | None, as_json: bool) -> None:
    """Write a static HTML report: convergence, learning curve, agreement, classes,
    confusion matrix, coverage of the pool's clusters (with thumbnails of the pockets no
    trusted label covers yet), annotators and rounds."""
    from alearn.report.coverage import coverage, head_predictor
    from alearn.report.html import write_report

    cov = coverage(ctx.project, predict=head_predictor(ctx.project))
    path = write_report(ctx.project, out, reference=reference, coverage=cov)
    plots = sorted(str(p) for p in (path.parent / f"{path.stem}_files").glob("*.png"))
    if as_json:
        print_json({"report": str(path), "plots": plots, "coverage": cov})
        return
    console.print(f"Report written to {path} ({len(plots)} plots). Open it in a browser.")
    if cov.get("pockets"):
        console.print(f"Coverage: {cov['uncovered']} of {cov['n_clusters']} clusters of the "
                      "pool hold no trusted label yet (see the report's coverage section).")


@click.command("agreement")
@round_number_option("every round")
@json_option
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
                    ["annotator", "items", "accuracy (consensus)", "accuracy vs others",
                     "peer kappa", "gold accuracy", "median s", "flag"],
                    headers={"peer kappa": "mean Cohen's kappa with peers",
                             "median s": "median seconds"})
        console.print(f"accuracy (consensus): {summary['annotator_accuracy']}.")


@click.command("status")
@json_option
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """Pool, trusted labels, rounds, the current round's progress, queues and workers."""
    from alearn.report.status import project_status
    from workers.enqueue import ensure_tick
    from workers.queues import queue_info

    info = project_status(ctx.project)
    try:
        conn = redis_connection(ctx)
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
    votes = info["votes"]
    if votes["clicks_per_trusted_label"] is not None:
        console.print(f"Clicks per trusted label: {votes['clicks_per_trusted_label']} "
                      f"({votes['clicks']} clicks, {votes['trusted_labels']} labels)")
    for r in votes["adaptive_rounds"][-1:]:
        on = r["agreement_items"]
        console.print(f"Round {r['number']}: adaptive votes {r['min_votes']}-{r['max_votes']}, "
                      f"{r['asked_more']} items asked for more; kappa "
                      f"{fmt(r['kappa']) if r['kappa'] is not None else '-'} on "
                      f"{'-' if on is None else len(on)} gold and audit items"
                      + _from_rounds(r.get("agreement_rounds")))
    if info["rounds"]:
        rounds = [{k: fmt(v) if isinstance(v, float) else v for k, v in r.items()}
                  for r in info["rounds"]]
        print_table("Rounds", rounds, headers=ROUND_HEADERS)
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
        shown, total = len(info["set_aside_annotations"]), info["set_aside_total"]
        print_table("Annotations set aside" + (f" (the latest {shown} of {total})"
                                               if total > shown else ""),
                    info["set_aside_annotations"])
    adj = info.get("adjudication") or {}
    if adj.get("items") or adj.get("waiting_for_votes"):
        console.print(f"Adjudication ({adj['mode']}): {adj['pending']} pending, "
                      f"{adj['decided']} decided, {len(adj['set_aside'])} decisions set aside"
                      + (f", {adj['waiting_for_votes']} items waiting for more votes"
                         if adj.get("waiting_for_votes") else ""))
        if adj["set_aside"]:
            print_table("Adjudication decisions set aside", adj["set_aside"])
    review = info.get("label_review") or {}
    if review.get("sent"):
        console.print(f"Label review: {review['sent']} sent, {review['decided']} decided, "
                      f"{review['corrected']} labels corrected by review")
    _print_queues(info["queues"])
    if info["quarantined_annotations"]:
        console.print("Annotations in Label Studio that alearn does not count: "
                      + ", ".join(f"{n} {k}" for k, n in
                                  info["quarantined_annotations"].items()))
    for line in info["attention"]:
        console.print(f"[yellow]needs attention:[/] {line}", highlight=False)
    conv = info.get("convergence") or {}
    if conv.get("summary"):
        console.print(f"[bold]{conv['summary']}[/]", highlight=False)


def _print_queues(q: dict) -> None:
    if "error" in q:
        console.print(f"[yellow]queues unavailable:[/] {q['error']}")
        return
    print_table("Queues", [{"queue": k, **v} for k, v in q["queues"].items()])
    live = [w["name"] for w in q["workers"] if w["alive"]]
    dead = [w["name"] for w in q["workers"] if not w["alive"]]
    console.print(f"Live workers: {len(live)} " + ", ".join(live)
                  + (f" (dead, not yet expired: {', '.join(dead)})" if dead else ""))
    if not live:
        console.print("[yellow]No live worker:[/] start one with 'alearn worker &'.")


def _from_rounds(numbers: list[int] | None) -> str:
    """' (rounds 3-5)' when a round's agreement figures reach back to earlier rounds."""
    if not numbers or len(numbers) < 2:
        return ""
    return f" (rounds {min(numbers)}-{max(numbers)})"
