"""Queues, the Redis connection and locks.

Four queues, so that hosts can specialise: GPU hosts take ``embed``; CPU hosts take
``train``, ``sync`` (Label Studio push/pull) and ``round`` (orchestration, close).
Redis holds only queues and locks: losing it loses no data (see ``reconcile``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError
from rq import Queue

from alearn.config import Settings
from alearn.exceptions import AlearnError

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


@contextmanager
def job_lock(conn: Redis, name: str, *, timeout: int = 900) -> Iterator[bool]:
    """Hold a Redis lock while a step runs; yields False if another worker holds it.

    The timeout frees the lock if its holder is killed.
    """
    lock = conn.lock(f"alearn:lock:{name}", timeout=timeout, blocking=False)
    acquired = lock.acquire(blocking=False)
    try:
        yield acquired
    finally:
        if acquired:
            try:
                lock.release()
            except LockError:
                log.warning("lock %s expired before its step finished", name)
