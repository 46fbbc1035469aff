"""Everything alearn puts on the queues: a round's chain of steps, pulls, closes,
adjudication pushes and the periodic tick, each with its guard against duplicates.

    round start:  embed shards ──> train ──> select ──> push        (depends_on chain)

The callbacks and the tick these jobs name live in :mod:`workers.orchestrate`. They are
named here by their dotted paths, not imported (orchestrate imports this module): RQ
stores a callback's or a job's dotted path in Redis with the job and a worker imports it
from there, so these paths must stay where the functions are.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from redis import Redis
from rq import Callback, Retry
from rq.job import Job

from alearn.project import Project
from alearn.rounds.lifecycle import get_round, set_round_fields
from workers import jobs, queues
from workers.liveness import drop, job_exists, job_state

log = logging.getLogger(__name__)

#: Transient failures (Label Studio or the database away for a moment) are retried at
#: 5, 15 and 30 s; then the round fails with the step and the reason.
RETRY = Retry(max=3, interval=[5, 15, 30])
CHAIN = ("embed", "train", "select", "push")
CHAIN_RESULT_TTL = 7 * 24 * 3600

STEP_FAILED = "workers.orchestrate.step_failed"
AFTER_PUSH = "workers.orchestrate.after_push"
AFTER_PULL = "workers.orchestrate.after_pull"
AFTER_CLOSE = "workers.orchestrate.after_close"
TICK = "workers.orchestrate.tick"
#: Every dotted path this module hands to RQ (a test checks that each one imports).
ENTRY_POINTS = (STEP_FAILED, AFTER_PUSH, AFTER_PULL, AFTER_CLOSE, TICK)


def enqueue_chain(project: Project, conn: Redis, round_id: int, *, from_step: str = "embed",
                  embed_shards: int = 1) -> str:
    """Enqueue the round's steps from ``from_step`` on; return the last job's id."""
    settings, pdir = project.settings, str(project.root)
    rnd = get_round(project.store, round_id)
    failed = Callback(STEP_FAILED)

    def meta(step: str) -> dict[str, Any]:
        return {"round_id": round_id, "step": step}

    # a finished step must outlive the chain's slowest step, or reconcile would take
    # its vanished result for a lost job (RQ keeps results 500 s by default)
    keep = {"result_ttl": CHAIN_RESULT_TTL}

    steps = CHAIN[CHAIN.index(from_step):]
    prev: Any = None
    if "embed" in steps:
        prev = [
            queues.get_queue(conn, settings, "embed").enqueue(
                jobs.embed_job, pdir, i, embed_shards, retry=RETRY, job_timeout=3600, **keep,
                meta=meta("embed"), on_failure=failed,
                description=f"embed shard {i}/{embed_shards} for round {rnd.number}")
            for i in range(embed_shards)
        ]
    if "train" in steps:
        prev = queues.get_queue(conn, settings, "train").enqueue(
            jobs.train_job, pdir, round_id, depends_on=prev, retry=RETRY, job_timeout=1800, **keep,
            meta=meta("train"), on_failure=failed,
            description=f"train head for round {rnd.number}")
    if "select" in steps:
        train_id = prev.id if "train" in steps else None  # select scores with its head
        prev = queues.get_queue(conn, settings, "train").enqueue(
            jobs.select_job, pdir, round_id, train_id, depends_on=prev, retry=RETRY,
            job_timeout=1800, **keep,
            meta=meta("select"), on_failure=failed,
            description=f"select batch for round {rnd.number}")
    push = queues.get_queue(conn, settings, "sync").enqueue(
        jobs.push_job, pdir, round_id, depends_on=prev, retry=RETRY, job_timeout=1800, **keep,
        meta=meta("push"), on_failure=failed, on_success=Callback(AFTER_PUSH),
        description=f"push round {rnd.number} to Label Studio")
    set_round_fields(project.store, round_id, job_id=push.id)
    log.info("round_event=enqueued round=%s from=%s job=%s", round_id, from_step, push.id)
    return push.id


#: A waiting pull's mark outlives it by this much at most (a pull lost before it started).
PULL_PENDING_SECONDS = 30


def enqueue_pull(project: Project, conn: Redis, *, delay: float = 0.0) -> bool:
    """Enqueue a pull (in ``delay`` seconds) unless one is waiting to start. Returns True
    if a pull was enqueued.

    Webhooks arrive in bursts, one per annotation: the first enqueues a pull at once
    (the round's last vote is mirrored without waiting), and those that follow before
    that pull starts add nothing, since the waiting pull will read them. The pull job
    clears the mark once it holds the votes lease (:func:`workers.jobs.pull_job`), so
    an event after that gets a pull of its own; a mark whose pull was lost lapses.
    """
    pdir = str(project.root)
    key = pull_debounce_key(project)
    if not conn.set(key, 1, nx=True, ex=int(delay) + PULL_PENDING_SECONDS):
        return False
    q = queues.get_queue(conn, project.settings, "sync")
    kwargs: dict[str, Any] = {"retry": RETRY, "on_success": Callback(AFTER_PULL),
                              "job_timeout": 1800, "description": "pull annotations"}
    if delay > 0:
        q.enqueue_in(dt.timedelta(seconds=delay), jobs.pull_job, pdir, **kwargs)
    else:
        q.enqueue(jobs.pull_job, pdir, **kwargs)
    return True


def pull_debounce_key(project: Project) -> str:
    """While this key exists (a pull waits to start), :func:`enqueue_pull` enqueues
    nothing."""
    return queues.pull_pending_key(str(project.root))


def close_job_id(project: Project, round_id: int) -> str:
    return f"alearn-close-{queues.project_key(str(project.root))}-{round_id}"


def enqueue_close(project: Project, conn: Redis, round_id: int) -> Job | None:
    """Enqueue the round's close unless its close job is already pending or running
    (one close job per round, whatever the number of pulls)."""
    job_id = close_job_id(project, round_id)
    if job_state(conn, job_id) == "alive":
        return None
    drop(conn, job_id)
    q = queues.get_queue(conn, project.settings, "round")
    job = q.enqueue(jobs.close_job, str(project.root), round_id, job_id=job_id, retry=RETRY,
                    job_timeout=1800, meta={"round_id": round_id, "step": "close"},
                    on_success=Callback(AFTER_CLOSE), on_failure=Callback(STEP_FAILED),
                    description=f"close round id {round_id}")
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


def tick_job_id(project: Project, slot: int) -> str:
    return f"alearn-tick-{queues.project_key(str(project.root))}-{slot}"


def ensure_tick(project: Project, conn: Redis) -> bool:
    """Schedule the tick of the next time slot unless it exists. Returns True if this
    call scheduled it. Safe to call from anywhere, any number of times."""
    interval = project.config.rounds.tick_seconds
    slot = int(time.time() // interval) + 1
    job_id = tick_job_id(project, slot)
    if job_exists(conn, job_id):
        return False
    when = dt.datetime.fromtimestamp(slot * interval, dt.UTC)
    queues.get_queue(conn, project.settings, "round").enqueue_at(
        when, TICK, str(project.root), job_id=job_id, result_ttl=interval * 4,
        failure_ttl=24 * 3600, description="periodic reconcile + pull")
    return True


def kick(project: Project, conn: Redis) -> None:
    """Run a tick now (a worker that starts) and keep the schedule armed."""
    queues.get_queue(conn, project.settings, "round").enqueue(
        TICK, str(project.root), result_ttl=60, description="reconcile at worker start")
    ensure_tick(project, conn)
