"""The worker entry point: an RQ worker (with its scheduler) on alearn's queues.

:class:`AlearnWorker` is RQ's worker with three additions that keep rounds moving
when something dies:

- short heartbeats (every 5 s while a job runs, every 15 s idle), so a dead worker is
  seen within a minute anywhere and at once on its own host;
- a maintenance pass every 10 s (RQ's default is 10 minutes) that frees the scheduler
  locks of dead schedulers (:func:`workers.queues.take_over_dead_schedulers`), so a new
  worker schedules retries and ticks within seconds of starting;
- the projects it serves (``--project``, and every project whose job it ran) keep their
  periodic tick armed: a tick at start, and the next slot at each maintenance pass, so
  a flushed Redis recovers with nobody's help.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rq import Worker

from alearn.config import Settings
from alearn.exceptions import AlearnError
from alearn.project import Project
from workers import queues

log = logging.getLogger(__name__)

JOB_MONITORING_INTERVAL = 5
WORKER_TTL = 30
MAINTENANCE_INTERVAL = 10


class AlearnWorker(Worker):
    """An RQ worker that takes over dead schedulers and keeps its projects' ticks armed."""

    def __init__(self, *args: Any, projects: Iterable[str] = (), **kwargs: Any) -> None:
        kwargs.setdefault("worker_ttl", WORKER_TTL)
        kwargs.setdefault("job_monitoring_interval", JOB_MONITORING_INTERVAL)
        kwargs.setdefault("maintenance_interval", MAINTENANCE_INTERVAL)
        super().__init__(*args, **kwargs)
        self.projects: dict[str, Project] = {}
        for p in projects:
            self._remember(p)

    def _remember(self, project_dir: Any) -> Project | None:
        if not isinstance(project_dir, str) or project_dir in self.projects:
            return self.projects.get(project_dir) if isinstance(project_dir, str) else None
        try:  # config only: the store is opened by the jobs, never in this process
            project = Project.open(Path(project_dir), Settings.load())
        except (AlearnError, OSError, ValueError):
            return None
        self.projects[project_dir] = project
        return project

    def work(self, *args: Any, **kwargs: Any) -> bool:
        queues.take_over_dead_schedulers(self.connection, self.queue_names())
        for project in self.projects.values():
            try:
                from workers.enqueue import kick

                kick(project, self.connection)
            except Exception:  # noqa: BLE001 - a bad project never stops the worker
                log.exception("worker_event=kick_failed project=%s", project.root)
        return super().work(*args, **kwargs)

    def run_maintenance_tasks(self) -> None:
        queues.take_over_dead_schedulers(self.connection, self.queue_names())
        super().run_maintenance_tasks()
        from workers.enqueue import ensure_tick

        for project in list(self.projects.values()):
            try:
                ensure_tick(project, self.connection)
            except Exception:  # noqa: BLE001
                log.exception("worker_event=tick_arm_failed project=%s", project.root)

    def execute_job(self, job: Any, queue: Any) -> Any:
        try:
            if job.args:
                self._remember(str(job.args[0]))
        except Exception:  # noqa: BLE001 - remembering a project never stops a job
            log.exception("worker_event=remember_failed job=%s", job.id)
        return super().execute_job(job, queue)


def run_worker(settings: Settings, names: Sequence[str] = queues.QUEUE_NAMES, *,
               burst: bool = False, name: str | None = None,
               projects: Iterable[str] = ()) -> bool:
    """Run a worker on the given queues until stopped (or until empty with ``burst``)."""
    conn = queues.connect(settings)
    qs = [queues.get_queue(conn, settings, n) for n in names]
    preload(names)
    worker = AlearnWorker(qs, connection=conn, name=name, projects=projects)
    log.info("worker_event=start name=%s queues=%s", worker.name, ",".join(names))
    return worker.work(burst=burst, with_scheduler=True)


#: What every forked job would otherwise import itself: alearn's round modules import
#: torch and scikit-learn's heavier parts inside the functions that use them (so that
#: 'alearn status' and 'round plan' stay light), which in a work-horse costs up to 3 s of
#: CPU per job (a select at 10,000 items: 2.9 s, of which 0.3 s is the select).
PRELOAD = (
    "alearn.features.pipeline", "alearn.model.training", "alearn.query.selection",
    "alearn.query.diversity", "alearn.rounds.close", "alearn.rounds.label_errors",
    "labelstudio.pull", "labelstudio.push", "labelstudio.adjudication",
    "torch", "sklearn.decomposition", "sklearn.neighbors", "sklearn.cluster",
    "sklearn.preprocessing", "cleanlab.filter",
)
#: Only a worker that embeds needs the backbone's libraries (timm, torchvision).
PRELOAD_EMBED = ("timm", "alearn.features.backbone", "alearn.features.torch_embed")


def preload(names: Iterable[str]) -> None:
    """Import the heavy libraries once in the worker, so that each forked job starts warm;
    then move what is alive out of the garbage collector's sight (``gc.freeze``), so that
    a work-horse's collections do not walk, and copy page by page, the parent's heap."""
    import gc
    import importlib

    wanted = PRELOAD + (PRELOAD_EMBED if "embed" in set(names) else ())
    for module in wanted:
        importlib.import_module(module)
    gc.collect()
    gc.freeze()

