"""Queues, the Redis connection and locks, and what ``alearn status`` shows of them.

Four queues, so that hosts can specialise: GPU hosts take ``embed``; CPU hosts take
``train``, ``sync`` (Label Studio push/pull) and ``round`` (orchestration, close).
Redis holds only queues and locks: losing it loses no data (see ``reconcile``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError, RedisError
from rq import Queue

from alearn.config import Settings
from alearn.exceptions import AlearnError
from alearn.processes import pid_alive

log = logging.getLogger(__name__)

QUEUE_NAMES = ("embed", "train", "sync", "round")


class QueueUnavailable(AlearnError):
    """Redis cannot be reached."""


def connect(settings: Settings) -> Redis:
    """A Redis connection, checked with PING."""
    conn = Redis.from_url(settings.redis_url)
    try:
        conn.ping()
    except (RedisConnectionError, OSError) as exc:
        safe = settings.redis_url.split("@")[-1]
        raise QueueUnavailable(
            f"cannot reach Redis at {safe} ({exc}). Start redis-server or set "
            "ALEARN_REDIS_URL. The store keeps all data; rounds resume once Redis is back."
        ) from None
    return conn


def queue_name(settings: Settings, name: str) -> str:
    if name not in QUEUE_NAMES:
        raise ValueError(f"unknown queue {name!r}; valid queues: {', '.join(QUEUE_NAMES)}")
    return f"{settings.queue_prefix}-{name}"


def get_queue(conn: Redis, settings: Settings, name: str) -> Queue:
    return Queue(queue_name(settings, name), connection=conn)


def project_key(project_dir: str) -> str:
    """A short stable key for a project directory (lock and debounce names)."""
    return hashlib.sha1(project_dir.encode()).hexdigest()[:10]


def pull_pending_key(project_dir: str) -> str:
    """Set while a pull of the project waits to start (see ``enqueue.enqueue_pull``)."""
    return f"alearn:debounce:pull:{project_key(project_dir)}"


#: A step's lease lasts this long unless renewed; its holder renews it every third of it.
LEASE_SECONDS = 20
#: A scheduler whose heartbeat is older than this is dead: another worker takes over.
SCHEDULER_STALE_SECONDS = 10
_HOST = socket.gethostname()


def alive_key(job_id: str) -> str:
    """Present while the job's process is running it (renewed with its lease)."""
    return f"alearn:alive:{job_id}"


def _text(value: bytes | str) -> str:
    """A Redis reply as text (replies are bytes unless the connection decodes them)."""
    return value.decode() if isinstance(value, bytes) else value


def job_is_running(conn: Redis, job_id: str) -> bool:
    """True while a worker process is still running ``job_id`` (its lease is renewed)."""
    holder = conn.get(alive_key(job_id))
    if holder is None:
        return False
    host, _, pid = _text(holder).rpartition(":")
    if host == _HOST and pid.isdigit():
        return pid_alive(int(pid))  # same host: a killed process is seen at once
    return True


class Lease:
    """A Redis lock that outlives the work it guards: a thread renews it every third of
    its TTL while the step runs, so a step of any length keeps it, and a killed worker
    loses it within :data:`LEASE_SECONDS`.

    With ``job_id``, the lease also keeps :func:`alive_key` for that job, which is how
    the reconciler tells a running job from one whose worker died.
    """

    def __init__(self, conn: Redis, name: str, *, ttl: int = LEASE_SECONDS,
                 job_id: str | None = None) -> None:
        self.conn, self.name, self.ttl, self.job_id = conn, name, ttl, job_id
        self._lock = conn.lock(f"alearn:lock:{name}", timeout=ttl, thread_local=False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def acquire(self, wait_s: float = 0.0) -> bool:
        """Take the lease; while another holder has it, try again every 0.1 s for up to
        ``wait_s`` seconds (the waiting job counts as alive meanwhile)."""
        deadline = time.monotonic() + wait_s
        while not self._lock.acquire(blocking=False):
            if time.monotonic() >= deadline:
                if wait_s > 0 and self.job_id:
                    self.conn.delete(alive_key(self.job_id))
                return False
            self._mark_alive()
            time.sleep(0.1)
        self._mark_alive()
        self._thread = threading.Thread(target=self._renew, name=f"lease:{self.name}",
                                        daemon=True)
        self._thread.start()
        return True

    def _mark_alive(self) -> None:
        if self.job_id:
            self.conn.set(alive_key(self.job_id), f"{_HOST}:{os.getpid()}", ex=self.ttl)

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                if not self._lock.reacquire():
                    raise LockError("not owned")
                self._mark_alive()
            except (LockError, RedisError) as exc:
                if not self.lost:
                    log.warning("lease %s could not be renewed (%s)", self.name, exc)
                self.lost = True
                try:  # Redis lost it (flushed, restarted): take it again if free
                    if self._lock.acquire(blocking=False):
                        self.lost = False
                        self._mark_alive()
                except RedisError:
                    pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._lock.release()
        except LockError:
            log.warning("lease %s had expired before its step finished", self.name)
        except RedisError as exc:
            log.warning("lease %s not released (%s); it expires by itself", self.name, exc)
        if self.job_id:
            try:
                self.conn.delete(alive_key(self.job_id))
            except RedisError:
                pass


@contextmanager
def job_lock(conn: Redis, name: str, *, ttl: int = LEASE_SECONDS,
             job_id: str | None = None, wait_s: float = 0.0) -> Iterator[bool]:
    """Hold a step's :class:`Lease` while it runs; yields False if another worker holds it
    (still, after waiting up to ``wait_s`` seconds for it)."""
    lease = Lease(conn, name, ttl=ttl, job_id=job_id)
    acquired = lease.acquire(wait_s)
    try:
        yield acquired
    finally:
        if acquired:
            lease.release()


_RELEASE_IF_HOLDER = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def take_over_dead_schedulers(conn: Redis, queue_names: list[str]) -> list[str]:
    """Free the scheduler locks of queues whose scheduler is dead, so that a live worker
    takes them within seconds (RQ alone waits for the lock to expire and then for its
    next maintenance, which can take minutes). Returns the queues freed.

    A scheduler is dead when its heartbeat is older than :data:`SCHEDULER_STALE_SECONDS`,
    or, on this host, when its process is gone.
    """
    from rq.scheduler import RQScheduler

    freed = []
    for queue in queue_names:
        key = RQScheduler.get_locking_key(queue)
        holder = conn.get(key)
        if holder is None:
            continue
        if _scheduler_dead(conn, key, holder) and conn.eval(_RELEASE_IF_HOLDER, 1, key, holder):
            freed.append(queue)
            log.warning("worker_event=scheduler_taken_over queue=%s dead_scheduler=%s",
                        queue, _text(holder))
    return freed


def scheduler_alive(conn: Redis, queue: str) -> bool:
    """Whether a live scheduler holds ``queue``'s scheduler lock (read only)."""
    from rq.scheduler import RQScheduler

    key = RQScheduler.get_locking_key(queue)
    holder = conn.get(key)
    return holder is not None and not _scheduler_dead(conn, key, holder)


def _scheduler_dead(conn: Redis, key: str, holder: bytes | str) -> bool:
    from rq.scheduler import SCHEDULER_KEY_TEMPLATE

    info = {_text(k): _text(v) for k, v in
            conn.hgetall(SCHEDULER_KEY_TEMPLATE % _text(holder)).items()}
    beat = _parse_utc(info.get("last_heartbeat"))
    if beat is None:  # no hash yet: a starting scheduler, unless its lock went stale
        ttl = conn.ttl(key)
        dead = 0 <= ttl < 60 - SCHEDULER_STALE_SECONDS
    else:
        dead = time.time() - beat > SCHEDULER_STALE_SECONDS
    if not dead and info.get("hostname") == _HOST and info.get("pid", "").isdigit():
        dead = not pid_alive(int(info["pid"]))
    return dead


#: A worker with no heartbeat for this long is dead (ours beat every 15 s when idle and
#: every 5 s while a job runs).
WORKER_STALE_SECONDS = 60


def worker_alive(worker: Any) -> bool:
    """Whether an RQ worker is alive: on this host its process must exist; anywhere, its
    heartbeat must be recent."""
    pid = getattr(worker, "pid", None)
    if getattr(worker, "hostname", None) == _HOST and pid and not pid_alive(int(pid)):
        return False
    beat = getattr(worker, "last_heartbeat", None)
    if beat is None:
        return True
    if beat.tzinfo is None:
        beat = beat.replace(tzinfo=dt.UTC)
    return time.time() - beat.timestamp() < WORKER_STALE_SECONDS


def _parse_utc(text: str | None) -> float | None:
    if not text:
        return None
    from rq.utils import utcparse

    try:
        return utcparse(text).replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


def queue_info(conn: Redis, settings: Settings) -> dict[str, Any]:
    """What ``alearn status`` shows of the queues: depths (queued, started, scheduled,
    failed) and workers, dead ones told apart (no heartbeat for a while, or, on this
    host, the process is gone)."""
    from rq import Worker
    from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

    depths: dict[str, Any] = {}
    for name in QUEUE_NAMES:
        q = get_queue(conn, settings, name)
        depths[name] = {
            "queued": q.count,
            "started": StartedJobRegistry(queue=q).count,
            "scheduled": ScheduledJobRegistry(queue=q).count,
            "failed": FailedJobRegistry(queue=q).count,
        }
    workers = []
    for w in Worker.all(connection=conn):
        alive = worker_alive(w)
        workers.append({"name": w.name, "state": w.get_state() if alive else "dead",
                        "alive": alive, "queues": ",".join(w.queue_names())})
    return {"queues": depths, "workers": workers,
            "live_workers": sum(w["alive"] for w in workers)}
