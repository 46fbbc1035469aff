"""The worker entry point: an RQ worker (with its scheduler) on alearn's queues."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from rq import Worker

from alearn.config import Settings
from workers import queues

log = logging.getLogger(__name__)


def run_worker(settings: Settings, names: Sequence[str] = queues.QUEUE_NAMES, *,
               burst: bool = False, name: str | None = None) -> bool:
    """Run a worker on the given queues until stopped (or until empty with ``burst``)."""
    conn = queues.connect(settings)
    qs = [queues.get_queue(conn, settings, n) for n in names]
    # Import the heavy libraries once in the parent, so each forked job starts warm.
    import alearn.features  # noqa: F401
    import alearn.training  # noqa: F401

    worker = Worker(qs, connection=conn, name=name)
    log.info("worker_event=start name=%s queues=%s", worker.name, ",".join(names))
    return worker.work(burst=burst, with_scheduler=True)
