"""Round orchestration over RQ: start a round as a job chain, debounce pulls,
and reconcile rounds whose jobs vanished (Redis lost, worker killed).

    round start:  embed shards ──> train ──> select ──> push        (depends_on chain)
    webhook/tick: pull (debounced) ──> close when every task reached its overlap
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from redis import Redis
from rq import Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from alearn.config import Settings
from alearn.project import Project
from alearn.rounds import (
    ACTIVE,
    CLOSED,
    COLLECTING,
    PLANNED,
    PUSHED,
    create_round,
    set_round_fields,
)
from alearn.store import Round
from workers import jobs, queues

log = logging.getLogger(__name__)

RETRY = Retry(max=3, interval=[5, 30, 120])
LIVE = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED,
        JobStatus.CREATED}


def start_round(
    project: Project,
    conn: Redis,
    *,
    batch_size: int | None = None,
    strategy: str | None = None,
    overlap: int | None = None,
    embed_shards: int = 1,
) -> Round:
    """Create the round in the store, then enqueue embed -> train -> select -> push."""
    cfg = project.config.rounds
    if strategy is not None:
        from alearn.strategies import check_strategy_name

        check_strategy_name(strategy)  # unknown names fail here, before anything is created
    rnd = create_round(
        project.store,
        strategy=strategy or cfg.strategy,
        batch_size=batch_size or cfg.batch_size,
        overlap=overlap or cfg.overlap,
    )
    _enqueue_chain(project, conn, rnd, embed_shards=embed_shards)
    return rnd


def _enqueue_chain(project: Project, conn: Redis, rnd: Round, *, embed_shards: int = 1) -> str:
    settings, pdir = project.settings, str(project.root)
    tag = f"{queues.project_key(pdir)}-r{rnd.id}"
    embeds = [
        queues.get_queue(conn, settings, "embed").enqueue(
            jobs.embed_job, pdir, i, embed_shards, retry=RETRY, job_timeout=3600,
            description=f"embed shard {i}/{embed_shards} for round {rnd.number}")
        for i in range(embed_shards)
    ]
    train = queues.get_queue(conn, settings, "train").enqueue(
        jobs.train_job, pdir, rnd.id, depends_on=embeds, retry=RETRY, job_timeout=1800,
        description=f"train head for round {rnd.number}")
    select = queues.get_queue(conn, settings, "train").enqueue(
        jobs.select_job, pdir, rnd.id, depends_on=train, retry=RETRY, job_timeout=1800,
        description=f"select batch for round {rnd.number}")
    push = queues.get_queue(conn, settings, "sync").enqueue(
        jobs.push_job, pdir, rnd.id, depends_on=select, retry=RETRY, job_timeout=1800,
        description=f"push round {rnd.number} to Label Studio")
    set_round_fields(project.store, rnd.id, job_id=push.id)
    log.info("round_event=enqueued round=%s tag=%s job=%s", rnd.id, tag, push.id)
    return push.id


def enqueue_pull(project: Project, conn: Redis, *, delay: float = 2.0) -> bool:
    """Enqueue a pull unless one is already pending (webhooks arrive in bursts).

    Returns True if a pull was enqueued. The debounce key expires with the delay, so
    at most one pull per ``delay`` seconds is queued.
    """
    pdir = str(project.root)
    key = f"alearn:debounce:pull:{queues.project_key(pdir)}"
    if not conn.set(key, 1, nx=True, px=max(int(delay * 1000), 1)):
        return False
    q = queues.get_queue(conn, project.settings, "sync")
    if delay > 0:
        q.enqueue_in(timedelta(seconds=delay), jobs.pull_job, pdir, retry=RETRY)
    else:
        q.enqueue(jobs.pull_job, pdir, retry=RETRY)
    return True


def enqueue_close(project: Project, conn: Redis, round_id: int) -> Job:
    q = queues.get_queue(conn, project.settings, "round")
    job = q.enqueue(jobs.close_job, str(project.root), round_id, retry=RETRY,
                    job_timeout=1800, description=f"close round id {round_id}")
    set_round_fields(project.store, round_id, job_id=job.id)
    return job


def enqueue_adjudication_push(project: Project, conn: Redis, round_id: int) -> bool:
    """Enqueue the push of a round's unsettled items to the adjudication project, unless
    one was enqueued in the last minute (the push is idempotent anyway)."""
    key = f"alearn:debounce:adjudication:{queues.project_key(str(project.root))}:{round_id}"
    if not conn.set(key, 1, nx=True, ex=60):
        return False
    queues.get_queue(conn, project.settings, "sync").enqueue(
        jobs.adjudication_push_job, str(project.root), round_id, retry=RETRY,
        job_timeout=1800, description=f"push round id {round_id} to adjudication")
    return True


def _job_alive(conn: Redis, job_id: str | None) -> bool:
    if not job_id:
        return False
    try:
        job = Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        return False
    return job.get_status(refresh=True) in LIVE


def reconcile(project: Project, conn: Redis) -> list[str]:
    """Re-enqueue the work of active rounds whose job vanished or failed for good.

    A planned round restarts its chain (each step is idempotent); a pushed or
    collecting round gets a pull, which closes it when complete.
    """
    from alearn.rounds import active_round

    actions: list[str] = _reconcile_adjudication(project, conn)
    rnd = active_round(project.store)
    if rnd is None or rnd.status not in ACTIVE:
        return actions
    if rnd.status == PLANNED and not _job_alive(conn, rnd.job_id):
        _enqueue_chain(project, conn, rnd)
        actions.append(f"round {rnd.number}: job {rnd.job_id} vanished; chain re-enqueued")
    elif rnd.status in (PUSHED, COLLECTING):
        if enqueue_pull(project, conn, delay=0):
            actions.append(f"round {rnd.number}: pull enqueued")
    for action in actions:
        log.info("round_event=reconcile round=%s action=%r", rnd.id, action)
    return actions


def _reconcile_adjudication(project: Project, conn: Redis) -> list[str]:
    """Closed rounds whose unsettled items never reached the adjudication project."""
    if project.config.agreement.adjudication != "review":
        return []
    from sqlalchemy import select

    actions = []
    with project.store.session() as s:
        rounds = s.scalars(select(Round).where(Round.status == CLOSED)).all()
    for rnd in rounds:
        m = rnd.metrics or {}
        if len(m.get("adjudication_items") or []) > int(
                (m.get("adjudication") or {}).get("pushed") or 0):
            if enqueue_adjudication_push(project, conn, rnd.id):
                actions.append(f"round {rnd.number}: adjudication push enqueued")
    return actions


def ensure_tick(project: Project, conn: Redis, *, interval: int = 30) -> bool:
    """Keep one periodic tick (reconcile + pull) scheduled for the project.

    Webhooks are hints; this is the safety net. The guard key lives as long as the
    interval, so there is at most one pending tick.
    """
    pdir = str(project.root)
    key = f"alearn:tick:{queues.project_key(pdir)}"
    if not conn.set(key, 1, nx=True, ex=interval):
        return False
    queues.get_queue(conn, project.settings, "round").enqueue_in(
        timedelta(seconds=interval), jobs.tick_job, pdir, description="periodic reconcile+pull")
    return True


def queue_info(conn: Redis, settings: Settings) -> dict[str, Any]:
    """Queue depths (queued, started, scheduled, failed) and live workers."""
    from rq import Worker
    from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

    depths: dict[str, Any] = {}
    for name in queues.QUEUE_NAMES:
        q = queues.get_queue(conn, settings, name)
        depths[name] = {
            "queued": q.count,
            "started": StartedJobRegistry(queue=q).count,
            "scheduled": ScheduledJobRegistry(queue=q).count,
            "failed": FailedJobRegistry(queue=q).count,
        }
    workers = [
        {"name": w.name, "state": w.get_state(), "queues": ",".join(w.queue_names())}
        for w in Worker.all(connection=conn)
    ]
    return {"queues": depths, "workers": workers}
