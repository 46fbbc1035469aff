"""What ``alearn doctor`` checks in Redis: workers per queue, schedulers, the periodic
tick, queue depth, failed jobs, and rounds whose jobs died.

The checks report; they never re-arm, requeue or resume anything themselves
(``alearn status``, the workers and ``alearn round retry`` do that).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict, dataclass
from typing import Any, cast

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import select

from alearn.config import Settings, safe_url
from alearn.project import Project
from alearn.rounds.lifecycle import (
    CLOSED,
    COLLECTING,
    FAILED,
    PLANNED,
    PUSHED,
    active_round,
    round_progress,
    stale_rounds,
)
from alearn.store import Round, Store
from workers import queues
from workers.enqueue import close_job_id, tick_job_id
from workers.liveness import START_GRACE_SECONDS, job_exists, job_state

OK, WARN, FAIL = "ok", "warn", "fail"
#: A scheduled tick this late has not been run by any scheduler.
TICK_OVERDUE_SECONDS = 60
#: Failed jobs older than this are history, not news.
RECENT_FAILURE_SECONDS = 24 * 3600
START_WORKER = "start one with 'alearn worker' in the project folder"


@dataclass
class Check:
    """One line of ``alearn doctor``: ok, warn or fail, what was found, and the fix."""

    name: str
    status: str
    found: str
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def worst(statuses: list[str]) -> str:
    return FAIL if FAIL in statuses else WARN if WARN in statuses else OK


def connect(settings: Settings) -> tuple[Redis | None, Check]:
    """A Redis connection (None when unreachable) and the check that says so."""
    where = safe_url(settings.redis_url)
    conn = Redis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=10)
    try:
        version = conn.info("server").get("redis_version", "?")
    except (RedisError, OSError) as exc:
        conn.close()
        reason = " ".join(str(exc).split())[:200]
        return None, Check("redis", FAIL, f"cannot reach Redis at {where} ({reason})",
                           "start redis-server, or set ALEARN_REDIS_URL to your Redis")
    return conn, Check("redis", OK, f"reachable at {where} (Redis {version})")


def redis_checks(conn: Redis, settings: Settings, project: Project | None) -> list[Check]:
    """Workers, schedulers, the tick (with a project), queue depth and failed jobs."""
    info = queues.queue_info(conn, settings)
    out = [_workers(info, settings), _schedulers(conn, settings)]
    if project is not None:
        out.append(_tick(conn, project))
    out += [_depth(info, settings), _failed_jobs(conn, settings)]
    return out


def _served(info: dict[str, Any], settings: Settings) -> dict[str, int]:
    """queue -> live workers taking it."""
    live = [w["queues"].split(",") for w in info["workers"] if w["alive"]]
    return {n: sum(queues.queue_name(settings, n) in qs for qs in live)
            for n in queues.QUEUE_NAMES}


def _workers(info: dict[str, Any], settings: Settings) -> Check:
    served = _served(info, settings)
    dead = [w["name"] for w in info["workers"] if not w["alive"]]
    counts = ", ".join(f"{n} {k}" for n, k in served.items())
    found = f"live workers per queue: {counts}" + (
        f" ({len(dead)} dead, not yet expired)" if dead else "")
    missing = [n for n, k in served.items() if not k]
    if not missing:
        return Check("workers", OK, found)
    if len(missing) == len(served):
        return Check("workers", FAIL, f"no live worker ({found})",
                     f"{START_WORKER} (it takes every queue)")
    return Check("workers", FAIL, f"no live worker takes {', '.join(missing)} ({found})",
                 f"{START_WORKER} --queues {','.join(missing)}")


def _schedulers(conn: Redis, settings: Settings) -> Check:
    missing = [n for n in queues.QUEUE_NAMES
               if not queues.scheduler_alive(conn, queues.queue_name(settings, n))]
    if not missing:
        return Check("scheduler", OK, "a live scheduler serves every queue")
    return Check("scheduler", FAIL,
                 f"no live scheduler for {', '.join(missing)}: retries and ticks there "
                 "never run", f"{START_WORKER} (every alearn worker runs a scheduler; a "
                 "dead one's place is taken within seconds)")


def _tick(conn: Redis, project: Project) -> Check:
    """The project's periodic tick: scheduled, queued or running, and not overdue."""
    from rq.registry import ScheduledJobRegistry, StartedJobRegistry

    interval = project.config.rounds.tick_seconds
    prefix = tick_job_id(project, 0)[:-1]
    q = queues.get_queue(conn, project.settings, "round")
    running = StartedJobRegistry(queue=q).get_job_ids(cleanup=False)
    mine = [j for j in (*q.get_job_ids(), *running) if j.startswith(prefix)]
    entries = cast(list[tuple[bytes, float]],
                   conn.zrange(ScheduledJobRegistry(queue=q).key, 0, -1, withscores=True))
    scheduled = [score for j, score in entries if _text(j).startswith(prefix)]
    if mine:
        return Check("tick", OK, f"a tick is queued or running (every {interval} s)")
    if not scheduled:
        return Check("tick", WARN,
                     "no periodic tick is scheduled: nothing resumes a stuck round or pulls "
                     "votes without webhooks",
                     "'alearn status' re-arms it, and an 'alearn worker' started in the "
                     "project keeps it armed")
    due = min(scheduled)
    late = time.time() - due
    if late > TICK_OVERDUE_SECONDS:
        return Check("tick", FAIL, f"the tick due {late:.0f} s ago has not run",
                     f"{START_WORKER} (its scheduler runs the tick)")
    return Check("tick", OK, f"armed: next tick in {max(-late, 0):.0f} s "
                 f"(rounds.tick_seconds = {interval})")


def _depth(info: dict[str, Any], settings: Settings) -> Check:
    depths = info["queues"]
    found = "; ".join(f"{n}: {d['queued']} queued, {d['started']} running, "
                      f"{d['scheduled']} scheduled" for n, d in depths.items())
    served = _served(info, settings)
    waiting = [n for n, d in depths.items() if d["queued"] and not served[n]]
    if waiting:
        return Check("queues", WARN, f"jobs wait on {', '.join(waiting)}, which no live worker "
                     f"takes ({found})", f"{START_WORKER} --queues {','.join(waiting)}")
    return Check("queues", OK, found)


def _failed_jobs(conn: Redis, settings: Settings) -> Check:
    """Failed jobs in RQ's registries; a warning when one failed in the last day."""
    from rq.job import Job
    from rq.registry import FailedJobRegistry

    total, recent, latest = 0, 0, None
    now = dt.datetime.now(dt.UTC)
    for name in queues.QUEUE_NAMES:
        reg = FailedJobRegistry(queue=queues.get_queue(conn, settings, name))
        total += reg.count
        for job in Job.fetch_many(reg.get_job_ids(-20, -1), connection=conn):
            ended = job.ended_at.replace(tzinfo=dt.UTC) if job and job.ended_at else None
            if job is None or ended is None:
                continue
            if (now - ended).total_seconds() < RECENT_FAILURE_SECONDS:
                recent += 1
                if latest is None or ended > latest[0]:
                    result = job.latest_result()
                    lines = ((result.exc_string if result else "") or "").strip().splitlines()
                    latest = (ended, job.description or job.id, lines[-1] if lines else "")
    if not total:
        return Check("failed-jobs", OK, "no failed jobs")
    if not recent or latest is None:
        return Check("failed-jobs", OK, f"{total} failed jobs, none in the last 24 h")
    reason = " ".join(latest[2].split())[:200]
    return Check("failed-jobs", WARN,
                 f"{recent} jobs failed in the last 24 h ({total} kept); the latest: "
                 f"{latest[1]!r}: {reason}",
                 "a step that failed for good fails its round: 'alearn status' shows it "
                 "and 'alearn round retry' resumes it")


def rounds_check(store: Store, project: Project, conn: Redis | None) -> Check:
    """Failed rounds, a planned round whose jobs died, a dead close job, stale rounds."""
    with store.session() as s:
        rounds = s.scalars(select(Round).order_by(Round.number)).all()
    if not rounds:
        return Check("rounds", OK, "no rounds yet")
    found, fixes, statuses = [], [], []

    def add(status: str, text: str, fix: str | None = None) -> None:
        statuses.append(status)
        found.append(text)
        if fix and fix not in fixes:
            fixes.append(fix)

    for rnd in rounds:
        if rnd.status == FAILED:
            reason = " ".join((rnd.error or "no reason kept").split())[:200]
            add(FAIL, f"round {rnd.number} failed: {reason}",
                f"'alearn round retry --round {rnd.number}' resumes it (or 'alearn round "
                f"abort --round {rnd.number}')")
    active = active_round(store)
    if active is not None:
        add(*_active(store, project, conn, active))
    stale = stale_rounds(store, [r.id for r in rounds if r.status == CLOSED])
    for r in rounds:
        if r.id in stale:
            add(WARN, f"round {r.number} is stale (votes changed after it closed)",
                f"'alearn round close --round {r.number}' recomputes it")
    if not found:
        last = rounds[-1]
        add(OK, f"{len(rounds)} rounds, the latest (round {last.number}) {last.status}")
    return Check("rounds", worst(statuses), "; ".join(found), "; ".join(fixes) or None)


def _active(store: Store, project: Project, conn: Redis | None,
            rnd: Round) -> tuple[str, str, str | None]:
    where = f"round {rnd.number} is {rnd.status}"
    if rnd.status in (PUSHED, COLLECTING):
        p = round_progress(store, rnd.id)
        where += f" ({p.tasks_done}/{p.tasks} tasks done)"
    if conn is None:
        return OK, where + "; its jobs not checked (Redis unreachable)", None
    retry = (f"keep an 'alearn worker' running (the tick resumes it), or 'alearn round "
             f"retry --round {rnd.number}'")
    if rnd.status == PLANNED:
        created = rnd.created_at.replace(tzinfo=dt.UTC) if rnd.created_at else None
        young = created is not None and (
            dt.datetime.now(dt.UTC) - created).total_seconds() < START_GRACE_SECONDS * 4
        state = job_state(conn, rnd.job_id)
        if state != "alive" and not young:
            return FAIL, f"{where}, but its job chain is {state}", retry
        return OK, f"{where}; its job chain is {state}", None
    close_id = close_job_id(project, rnd.id)
    if job_exists(conn, close_id) and job_state(conn, close_id) == "dead":
        return WARN, f"{where}, and its close job died", retry
    return OK, where, None
