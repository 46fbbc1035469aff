"""Round orchestration over RQ: the policy of what follows what.

    round start:  embed shards ──> train ──> select ──> push        (depends_on chain)
    webhook/tick: pull (debounced) ──> close when every task reached its overlap
    close:        adjudication push, and the next round (auto_next, latest round only)

Jobs (:mod:`workers.jobs`) make one library call each; everything that follows is
decided here, in RQ callbacks (``on_success`` / ``on_failure``) and in the periodic tick.
RQ stores their dotted paths (``workers.orchestrate.after_push``...) in Redis with each
job, so they stay in this module; :mod:`workers.enqueue` names them by those paths.

- A step that fails for good (RQ's retries spent) fails the round with the step and
  the reason (:func:`step_failed`). ``alearn round retry`` resumes it
  (:mod:`workers.commands`).
- The tick runs every ``rounds.tick_seconds``. Its job id names its time slot, so at
  most one tick per slot exists and no marker can outlive or undercut the schedule; the
  running tick schedules the next slot first. ``round start``, every pull, ``status``
  and every worker (at start and at each maintenance) re-arm it, so a flushed Redis
  recovers with nobody's help.
- The tick reconciles (:mod:`workers.reconcile`): a round whose job chain died is
  resumed from its first unfinished step, read from the store; a full round gets its
  close. A round has at most one close job.
"""

from __future__ import annotations

import logging
from typing import Any

from redis import Redis
from rq.job import Job

from alearn.config import Settings
from alearn.project import Project
from alearn.rounds import metrics as round_metrics
from alearn.rounds.lifecycle import (
    CLOSED,
    COLLECTING,
    PLANNED,
    PUSHED,
    active_round,
    create_round,
    fail_round,
    get_round,
    round_progress,
    transition,
)
from alearn.store import Round
from workers import queues
from workers.enqueue import (
    enqueue_adjudication_push,
    enqueue_chain,
    enqueue_close,
    ensure_tick,
)
from workers.reconcile import has_reviewers, reconcile, reconcile_key

log = logging.getLogger(__name__)


def _open(project_dir: str) -> Project:
    return Project.open(project_dir, Settings.load())


def _one_line(exc: BaseException | None) -> str:
    text = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
    return " ".join(text.split())[:500]


# -- starting a round ----------------------------------------------------------------
def start_round(
    project: Project,
    conn: Redis,
    *,
    batch_size: int | None = None,
    strategy: str | None = None,
    overlap: int | None = None,
    embed_shards: int | None = None,
) -> Round:
    """Create the round in the store, then enqueue embed -> train -> select -> push.

    Without ``embed_shards`` the embedding is split over the live embed workers
    (:func:`auto_embed_shards`).

    Without ``overlap`` the round takes its votes per item from the config: adaptive
    votes, or ``rounds.overlap`` when it is set (see
    :func:`alearn.rounds.adaptive_round.round_votes_plan`)."""
    from alearn.rounds.adaptive_round import round_votes_plan

    cfg = project.config.rounds
    base, adaptive = round_votes_plan(project.config, overlap)
    if strategy is not None:
        from alearn.query.strategies import check_strategy_name

        check_strategy_name(strategy)  # unknown names fail here, before anything is created
    rnd = create_round(
        project.store,
        strategy=strategy or cfg.strategy,
        batch_size=batch_size or cfg.batch_size,
        overlap=base,
        adaptive=adaptive,
    )
    shards = embed_shards or auto_embed_shards(project, conn)
    rnd.job_id = enqueue_chain(project, conn, rnd.id, embed_shards=shards)
    ensure_tick(project, conn)
    return rnd


def auto_embed_shards(project: Project, conn: Redis) -> int:
    """One embed shard per live worker on the embed queue, when there are enough new
    images to pay for it (:func:`alearn.features.pipeline.choose_embed_shards`)."""
    from rq import Worker

    from alearn.features.pipeline import choose_embed_shards, pending_items

    queue = queues.get_queue(conn, project.settings, "embed")
    live = sum(queues.worker_alive(w) for w in Worker.all(queue=queue))
    return 1 if live < 2 else choose_embed_shards(live, pending_items(project))


def team_warnings(project: Project) -> list[str]:
    """What keeps a round from ending in trusted labels for want of people."""
    from alearn.team import roster

    out = []
    if not roster(project.store):
        out.append("the roster is empty, so no vote will count. Add annotators with "
                   "'alearn ls users add NAME'.")
    agreement = project.config.agreement
    if agreement.adjudication == "review" and not has_reviewers(project):
        out.append("agreement.adjudication is 'review' but the project has no reviewer, so "
                   "doubtful items will wait. Add one with 'alearn ls users add NAME --role "
                   "reviewer', or set agreement.adjudication to 'more_votes'.")
    return out


# -- what follows a pull, a close ------------------------------------------------------
def progress_round(project: Project, conn: Redis) -> dict[str, Any] | None:
    """After a pull: collecting once a vote arrived; one close job once every task has
    its votes. Re-arms the tick. Returns the round's progress."""
    ensure_tick(project, conn)
    rnd = active_round(project.store)
    if rnd is None or rnd.status not in (PUSHED, COLLECTING):
        return None
    progress = round_progress(project.store, rnd.id)
    if progress.annotations and rnd.status == PUSHED:
        transition(project.store, rnd.id, COLLECTING)
    if progress.complete:
        enqueue_close(project, conn, rnd.id)
    return progress.to_dict()


def follow_close(project: Project, conn: Redis, round_id: int,
                 result: dict[str, Any]) -> int | None:
    """What follows a close: unsettled items to adjudication ('review'), and with
    ``rounds.auto_next`` the next round, but only after the *latest* round closed and
    while no round is active. Returns the new round's number, if any."""
    if not result.get("closed", True):
        return None  # waiting for more votes
    rnd = get_round(project.store, round_id)
    if rnd.status != CLOSED:
        return None
    metrics = round_metrics.RoundMetrics.from_json(result)
    if project.config.agreement.adjudication == "review" and (
            metrics.adjudication_items or project.config.review.max_per_round):
        if has_reviewers(project):
            enqueue_adjudication_push(project, conn, round_id)
    if not project.config.rounds.auto_next or metrics.converged:
        return None
    latest = get_round(project.store)  # the active round, else the latest one
    if latest.id != round_id:
        return None
    nxt = start_round(project, conn)
    return nxt.number


# -- RQ callbacks (their dotted paths are stored in Redis) ---------------------------
def step_failed(job: Job, connection: Redis, exc_type: Any = None, exc: Any = None,
                tb: Any = None) -> None:
    """on_failure of every round step: once RQ's retries are spent, fail the round with
    the step and the reason. (RQ calls this on every failure, retries included.)"""
    if job.retries_left:
        return
    project = _open(job.args[0])
    round_id = int(job.meta.get("round_id") or job.args[1])
    step = str(job.meta.get("step") or (job.func_name or "").rsplit(".", 1)[-1])
    fail_round(project.store, round_id, step, _one_line(exc))


def after_push(job: Job, connection: Redis, result: Any) -> None:
    """on_success of push: the round is in Label Studio."""
    project = _open(job.args[0])
    round_id = int(job.args[1])
    if get_round(project.store, round_id).status == PLANNED:  # not if aborted meanwhile
        transition(project.store, round_id, PUSHED)
    ensure_tick(project, connection)


def after_pull(job: Job, connection: Redis, result: Any) -> None:
    """on_success of pull: move the round along, close it when full."""
    progress_round(_open(job.args[0]), connection)


def after_close(job: Job, connection: Redis, result: Any) -> None:
    """on_success of close: adjudication, then maybe the next round."""
    follow_close(_open(job.args[0]), connection, int(job.args[1]), result)


# -- the periodic tick (its dotted path is stored in Redis) --------------------------
def tick(project_dir: str) -> dict[str, Any]:
    """The periodic safety net: schedule the next tick first (so nothing below can stop
    the schedule), then reconcile and pull."""
    project = _open(project_dir)
    conn = queues.connect(project.settings)
    ensure_tick(project, conn)
    # one reconcile at a time per project: two would both resume the same dead chain
    with queues.job_lock(conn, reconcile_key(project)) as got:
        if not got:
            return {"reconciled": [], "note": "another reconcile is running"}
        return {"reconciled": reconcile(project, conn)}
