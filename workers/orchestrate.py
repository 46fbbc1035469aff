"""Round orchestration over RQ: the policy of what follows what.

    round start:  embed shards ──> train ──> select ──> push        (depends_on chain)
    webhook/tick: pull (debounced) ──> close when every task reached its overlap
    close:        adjudication push, and the next round (auto_next, latest round only)

Jobs (:mod:`workers.jobs`) make one library call each; everything that follows is
decided here, in RQ callbacks (``on_success`` / ``on_failure``) and in the periodic tick:

- A step that fails for good (RQ's retries spent) fails the round with the step and
  the reason (:func:`step_failed`). ``alearn round retry`` resumes it.
- The tick runs every ``rounds.tick_seconds``. Its job id names its time slot, so at
  most one tick per slot exists and no marker can outlive or undercut the schedule; the
  running tick schedules the next slot first. ``round start``, every pull, ``status``
  and every worker (at start and at each maintenance) re-arm it, so a flushed Redis
  recovers with nobody's help.
- The tick reconciles: a round whose job chain died (a worker killed, Redis flushed, a
  dependency failed or vanished) is resumed from its first unfinished step, read from
  the store; a full round gets its close. A round has at most one close job.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from typing import Any

from redis import Redis
from rq import Callback, Retry
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

from alearn.config import Settings
from alearn.project import Project
from alearn.rounds.lifecycle import (
    ABORTED,
    ACTIVE,
    CLOSED,
    COLLECTING,
    FAILED,
    PLANNED,
    PUSHED,
    active_round,
    create_round,
    fail_round,
    get_round,
    record_event,
    reopen,
    resume_point,
    round_progress,
    set_round_fields,
    transition,
)
from alearn.store import Round
from workers import jobs, queues

log = logging.getLogger(__name__)

#: Transient failures (Label Studio or the database away for a moment) are retried at
#: 5, 15 and 30 s; then the round fails with the step and the reason.
RETRY = Retry(max=3, interval=[5, 15, 30])
#: A started job whose lease has not appeared after this long is dead.
START_GRACE_SECONDS = 15
CHAIN = ("embed", "train", "select", "push")
CHAIN_RESULT_TTL = 7 * 24 * 3600


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
    embed_shards: int = 1,
) -> Round:
    """Create the round in the store, then enqueue embed -> train -> select -> push."""
    cfg = project.config.rounds
    if strategy is not None:
        from alearn.query.strategies import check_strategy_name

        check_strategy_name(strategy)  # unknown names fail here, before anything is created
    rnd = create_round(
        project.store,
        strategy=strategy or cfg.strategy,
        batch_size=batch_size or cfg.batch_size,
        overlap=overlap or cfg.overlap,
    )
    rnd.job_id = _enqueue_chain(project, conn, rnd.id, embed_shards=embed_shards)
    ensure_tick(project, conn)
    return rnd


def team_warnings(project: Project) -> list[str]:
    """What keeps a round from ending in trusted labels for want of people."""
    from alearn.team import reviewers, roster

    out = []
    if not roster(project.store):
        out.append("the roster is empty, so no vote will count. Add annotators with "
                   "'alearn ls users add NAME'.")
    agreement = project.config.agreement
    if agreement.adjudication == "review" and not reviewers(project.store, agreement.reviewers):
        out.append("agreement.adjudication is 'review' but the project has no reviewer, so "
                   "doubtful items will wait. Add one with 'alearn ls users add NAME --role "
                   "reviewer', or set agreement.adjudication to 'more_votes'.")
    return out


def _enqueue_chain(project: Project, conn: Redis, round_id: int, *, from_step: str = "embed",
                   embed_shards: int = 1) -> str:
    """Enqueue the round's steps from ``from_step`` on; return the last job's id."""
    settings, pdir = project.settings, str(project.root)
    rnd = get_round(project.store, round_id)
    failed = Callback(step_failed)

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
        prev = queues.get_queue(conn, settings, "train").enqueue(
            jobs.select_job, pdir, round_id, depends_on=prev, retry=RETRY, job_timeout=1800,
            **keep,
            meta=meta("select"), on_failure=failed,
            description=f"select batch for round {rnd.number}")
    push = queues.get_queue(conn, settings, "sync").enqueue(
        jobs.push_job, pdir, round_id, depends_on=prev, retry=RETRY, job_timeout=1800, **keep,
        meta=meta("push"), on_failure=failed, on_success=Callback(after_push),
        description=f"push round {rnd.number} to Label Studio")
    set_round_fields(project.store, round_id, job_id=push.id)
    log.info("round_event=enqueued round=%s from=%s job=%s", round_id, from_step, push.id)
    return push.id


# -- callbacks -----------------------------------------------------------------------
def step_failed(job: Job, connection: Redis, exc_type: Any = None, exc: Any = None,
                tb: Any = None) -> None:
    """on_failure of every round step: once RQ's retries are spent, fail the round with
    the step and the reason. (RQ calls this on every failure, retries included.)"""
    if job.retries_left:
        return
    project = _open(job.args[0])
    round_id = int(job.meta.get("round_id") or job.args[1])
    step = str(job.meta.get("step") or job.func_name.rsplit(".", 1)[-1])
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
    if project.config.agreement.adjudication == "review" and result.get("adjudication_items"):
        if _has_reviewers(project):
            enqueue_adjudication_push(project, conn, round_id)
    if not project.config.rounds.auto_next or result.get("converged", False):
        return None
    latest = get_round(project.store)  # the active round, else the latest one
    if latest.id != round_id:
        return None
    nxt = start_round(project, conn)
    return nxt.number


# -- enqueueing ----------------------------------------------------------------------
def enqueue_pull(project: Project, conn: Redis, *, delay: float = 2.0) -> bool:
    """Enqueue a pull unless one was enqueued in the last ``delay`` seconds (webhooks
    arrive in bursts). Returns True if a pull was enqueued."""
    pdir = str(project.root)
    key = f"alearn:debounce:pull:{queues.project_key(pdir)}"
    if not conn.set(key, 1, nx=True, px=max(int(delay * 1000), 1)):
        return False
    q = queues.get_queue(conn, project.settings, "sync")
    kwargs: dict[str, Any] = {"retry": RETRY, "on_success": Callback(after_pull),
                              "job_timeout": 1800, "description": "pull annotations"}
    if delay > 0:
        q.enqueue_in(dt.timedelta(seconds=delay), jobs.pull_job, pdir, **kwargs)
    else:
        q.enqueue(jobs.pull_job, pdir, **kwargs)
    return True


def close_job_id(project: Project, round_id: int) -> str:
    return f"alearn-close-{queues.project_key(str(project.root))}-{round_id}"


def enqueue_close(project: Project, conn: Redis, round_id: int) -> Job | None:
    """Enqueue the round's close unless its close job is already pending or running
    (one close job per round, whatever the number of pulls)."""
    job_id = close_job_id(project, round_id)
    if _job_state(conn, job_id) == "alive":
        return None
    _drop(conn, job_id)
    q = queues.get_queue(conn, project.settings, "round")
    job = q.enqueue(jobs.close_job, str(project.root), round_id, job_id=job_id, retry=RETRY,
                    job_timeout=1800, meta={"round_id": round_id, "step": "close"},
                    on_success=Callback(after_close), on_failure=Callback(step_failed),
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


# -- liveness ------------------------------------------------------------------------
def _job_state(conn: Redis, job_id: str | None) -> str:
    """'done', 'alive', 'dead' (vanished, or its worker died) or 'failed' for a job and
    everything it depends on."""
    if not job_id:
        return "dead"
    try:
        job = Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        return "dead"
    status = job.get_status(refresh=True)
    if status == JobStatus.FINISHED:
        return "done"
    if status in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.CREATED):
        return "alive"
    if status == JobStatus.STARTED:
        if queues.job_is_running(conn, job.id):
            return "alive"
        started = job.started_at.timestamp() if job.started_at else 0.0
        return "alive" if time.time() - started < START_GRACE_SECONDS else "dead"
    if status == JobStatus.DEFERRED:
        states = [_job_state(conn, dep) for dep in job.dependency_ids]
        if "failed" in states:
            return "failed"
        return "dead" if "dead" in states else "alive"
    return "failed" if status == JobStatus.FAILED else "dead"


def _failure_of(conn: Redis, job_id: str | None) -> tuple[str, str]:
    """(step, reason) of the failed job in a chain."""
    try:
        job = Job.fetch(job_id or "", connection=conn)
    except NoSuchJobError:
        return "unknown", "its job vanished"
    if job.get_status(refresh=True) == JobStatus.FAILED:
        lines = (job.exc_info or "").strip().splitlines()
        return str(job.meta.get("step", "unknown")), (lines[-1] if lines else "failed")
    for dep in job.dependency_ids:
        if _job_state(conn, dep) == "failed":
            return _failure_of(conn, dep)
    return str(job.meta.get("step", "unknown")), "failed"


def _drop(conn: Redis, job_id: str | None) -> None:
    """Delete a dead job and what depends on it (its worker is gone; RQ would otherwise
    retry it minutes later, after the work was done again)."""
    if not job_id:
        return
    try:
        job = Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        return
    deps = [d for d in job.dependency_ids if _job_state(conn, d) != "done"]
    try:
        job.delete(remove_from_queue=True, delete_dependents=True)
    except (NoSuchJobError, InvalidJobOperation):
        pass  # already deleted as the dependent of another
    for dep in deps:
        _drop(conn, dep)


# -- the safety net ------------------------------------------------------------------
def reconcile(project: Project, conn: Redis) -> list[str]:
    """Resume what died: the active round's chain, its close, adjudication pushes.

    A planned round whose chain is dead restarts from its first unfinished step (each
    step is idempotent); one whose chain failed for good is failed with the reason. A
    pushed or collecting round gets a pull, which closes it when full; a dead close job
    is replaced. With no round open, a pull still runs (changes after close).
    """
    actions: list[str] = _reconcile_adjudication(project, conn)
    rnd = active_round(project.store)
    if rnd is None or rnd.status not in ACTIVE:
        # no round open: still pull, so that a vote edited, added or deleted in Label
        # Studio after its round closed is seen (the round is then marked stale)
        if project.store.get_meta("ls_project_id") is not None and enqueue_pull(
                project, conn, delay=0):
            actions.append("pull enqueued (no round open)")
        return actions
    status = rnd.status
    if status == PLANNED and rnd.job_id is None and _age_s(rnd) < START_GRACE_SECONDS * 4:
        return actions  # 'round start' is enqueueing its chain right now
    if status == PLANNED:
        state = _job_state(conn, rnd.job_id)
        point = resume_point(project.store, rnd.id)
        if state == "failed":
            step, reason = _failure_of(conn, rnd.job_id)
            fail_round(project.store, rnd.id, step, reason)
            actions.append(f"round {rnd.number}: failed at {step}: {reason}")
        elif point.status != PLANNED and state != "alive":
            transition(project.store, rnd.id, PUSHED)  # pushed, but the state lagged
            status = PUSHED
            actions.append(f"round {rnd.number}: its tasks are in Label Studio; pushed")
        elif state == "dead":
            _drop(conn, rnd.job_id)
            _enqueue_chain(project, conn, rnd.id, from_step=point.step)
            actions.append(f"round {rnd.number}: job {rnd.job_id} died; resumed at "
                           f"{point.step}")
    if status in (PUSHED, COLLECTING):
        close_id = close_job_id(project, rnd.id)
        if _job_state(conn, close_id) == "dead" and _exists(conn, close_id):
            _drop(conn, close_id)
            enqueue_close(project, conn, rnd.id)
            actions.append(f"round {rnd.number}: close job died; close enqueued again")
        if enqueue_pull(project, conn, delay=0):
            actions.append(f"round {rnd.number}: pull enqueued")
    for action in actions:
        log.info("round_event=reconcile round=%s action=%r", rnd.id, action)
    return actions


def _age_s(rnd: Round) -> float:
    created = rnd.created_at.replace(tzinfo=dt.UTC) if rnd.created_at else None
    return (dt.datetime.now(dt.UTC) - created).total_seconds() if created else 1e9


def _exists(conn: Redis, job_id: str) -> bool:
    return bool(Job.exists(job_id, connection=conn))


def _has_reviewers(project: Project) -> bool:
    from alearn.team import reviewers

    return bool(reviewers(project.store, project.config.agreement.reviewers))


def _reconcile_adjudication(project: Project, conn: Redis) -> list[str]:
    """Closed rounds whose unsettled items never reached the adjudication project."""
    if project.config.agreement.adjudication != "review" or not _has_reviewers(project):
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


def tick_job_id(project: Project, slot: int) -> str:
    return f"alearn-tick-{queues.project_key(str(project.root))}-{slot}"


def ensure_tick(project: Project, conn: Redis) -> bool:
    """Schedule the tick of the next time slot unless it exists. Returns True if this
    call scheduled it. Safe to call from anywhere, any number of times."""
    interval = project.config.rounds.tick_seconds
    slot = int(time.time() // interval) + 1
    job_id = tick_job_id(project, slot)
    if _exists(conn, job_id):
        return False
    when = dt.datetime.fromtimestamp(slot * interval, dt.UTC)
    queues.get_queue(conn, project.settings, "round").enqueue_at(
        when, tick, str(project.root), job_id=job_id, result_ttl=interval * 4,
        failure_ttl=24 * 3600, description="periodic reconcile + pull")
    return True


def tick(project_dir: str) -> dict[str, Any]:
    """The periodic safety net: schedule the next tick first (so nothing below can stop
    the schedule), then reconcile and pull."""
    project = _open(project_dir)
    conn = queues.connect(project.settings)
    ensure_tick(project, conn)
    # one reconcile at a time per project: two would both resume the same dead chain
    with queues.job_lock(conn, f"{queues.project_key(str(project.root))}:reconcile") as got:
        if not got:
            return {"reconciled": [], "note": "another reconcile is running"}
        return {"reconciled": reconcile(project, conn)}


def kick(project: Project, conn: Redis) -> None:
    """Run a tick now (a worker that starts) and keep the schedule armed."""
    queues.get_queue(conn, project.settings, "round").enqueue(
        tick, str(project.root), result_ttl=60, description="reconcile at worker start")
    ensure_tick(project, conn)


# -- operator commands ---------------------------------------------------------------
def retry_round(project: Project, conn: Redis, round_id: int) -> str:
    """Resume a failed or stuck round from its first unfinished step; returns the step."""
    rnd = get_round(project.store, round_id)
    other = active_round(project.store)
    if other is not None and other.id != round_id:
        from alearn.exceptions import RoundError

        raise RoundError(f"round {other.number} is {other.status}; only one round may be "
                         f"active. End it with 'alearn round abort' before retrying round "
                         f"{rnd.number}.")
    with _reconcile_lease(project, conn):  # a tick must not see it half reopened
        _drop(conn, rnd.job_id)
        _drop(conn, close_job_id(project, round_id))
        point = reopen(project.store, round_id)
        if point.step in CHAIN:
            _enqueue_chain(project, conn, round_id, from_step=point.step)
        else:
            conn.delete(f"alearn:debounce:pull:{queues.project_key(str(project.root))}")
            enqueue_pull(project, conn, delay=0)
    ensure_tick(project, conn)
    return point.step


@contextlib.contextmanager
def _reconcile_lease(project: Project, conn: Redis, *, wait_s: float = 30.0) -> Any:
    """Hold the project's reconcile lease (waiting for a running tick to finish)."""
    key = f"{queues.project_key(str(project.root))}:reconcile"
    deadline = time.monotonic() + wait_s
    while True:
        with queues.job_lock(conn, key) as got:
            if got:
                yield
                return
        if time.monotonic() > deadline:
            from alearn.exceptions import RoundError

            raise RoundError("the workers' reconcile has been running for 30 s; try again "
                             "in a minute.")
        time.sleep(0.2)


def abort_round(project: Project, conn: Redis, round_id: int) -> dict[str, Any]:
    """End a round for good: its jobs are dropped, its unlabeled tasks leave Label
    Studio (partly labeled ones are locked) and the votes already given are kept."""
    rnd = get_round(project.store, round_id)
    if rnd.status not in (*ACTIVE, FAILED):
        from alearn.exceptions import RoundError

        raise RoundError(f"round {rnd.number} is {rnd.status}; only an active or failed "
                         "round can be aborted.")
    _drop(conn, rnd.job_id)
    _drop(conn, close_job_id(project, round_id))
    withdrawn: dict[str, int] = {}
    if project.store.get_meta("ls_project_id") is not None and resume_point(
            project.store, round_id).step != "embed":
        from labelstudio.client import connect_label_studio
        from labelstudio.push import withdraw_round

        withdrawn = withdraw_round(project.store, connect_label_studio(project.settings),
                                   round_id).to_dict()
    transition(project.store, round_id, ABORTED)
    record_event(project.store, round_id, "aborted", **withdrawn)
    return withdrawn


def close_now(project: Project, conn: Redis, round_id: int) -> dict[str, Any]:
    """``alearn round close``: pull, close (or recompute a stale closed round) in this
    process, then what follows a close."""
    from alearn.exceptions import RoundError

    pulled = jobs.pull_job(str(project.root))
    closed = jobs.close_job(str(project.root), round_id, force=True)
    if isinstance(pulled, Retry) or isinstance(closed, Retry):
        raise RoundError("a worker is pulling or closing this round right now; run "
                         "'alearn round close' again in a few seconds.")
    nxt = follow_close(project, conn, round_id, closed)
    if nxt is not None:
        closed["next_round"] = nxt
    return closed


# -- what status shows ---------------------------------------------------------------
def queue_info(conn: Redis, settings: Settings) -> dict[str, Any]:
    """Queue depths (queued, started, scheduled, failed) and workers, dead ones told
    apart (no heartbeat for a while, or, on this host, the process is gone)."""
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
    workers = []
    for w in Worker.all(connection=conn):
        alive = queues.worker_alive(w)
        workers.append({"name": w.name, "state": w.get_state() if alive else "dead",
                        "alive": alive, "queues": ",".join(w.queue_names())})
    return {"queues": depths, "workers": workers,
            "live_workers": sum(w["alive"] for w in workers)}
