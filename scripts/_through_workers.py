"""``bench_round.py --through-workers``: the turnaround a user waits for.

The clock starts when the round's last annotation's webhook is POSTed to the real
receiver (``alearn webhook serve``) and stops when the last task of the next batch is
visible in Label Studio (its project's task count, polled every 50 ms). In between,
real ``alearn worker`` processes on a Redis of the benchmark's own (a private
``redis-server``) run what a user's would: pull -> close -> (``rounds.auto_next``) embed
-> train -> select -> push, each in a forked work-horse. Per phase, the seconds come from
the RQ jobs' own timestamps (enqueued, started, ended); peak RSS is each worker's and
each work-horse's ``VmHWM`` from ``/proc/<pid>/status``, sampled every 50 ms (a
high-water mark: only a process that lives less than one sample can be missed).

Each pool runs ``--rounds`` timed turnarounds: the first is the workers' first select
of that pool (cold page cache for the feature file aside), the next ones are warm. Then
``alearn round plan --json`` and ``alearn status --json`` are timed as a user runs them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ALEARN = str(Path(sys.executable).parent / "alearn")
PHASES = ("pull", "close", "embed", "train", "select", "push")
SECRET = "bench-webhook-secret-" + "x" * 24


def _free_port() -> int:
    from labelstudio.server import free_port

    return free_port()


def _wait(what: Callable[[], Any], timeout: float, label: str, every: float = 0.05) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = what()
        if got:
            return got
        time.sleep(every)
    raise TimeoutError(f"{label} did not happen within {timeout:.0f} s")


class RssWatch(threading.Thread):
    """Peak VmHWM (bytes) of each worker process and of every descendant it forks, and
    each work-horse's CPU seconds (user + system) and when it was seen alive, so that a
    job's CPU time can be told from its wall time on a loaded machine."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, roots: dict[int, str]) -> None:
        super().__init__(daemon=True)
        self.roots, self.peak = roots, {}
        self.horses: dict[int, dict[str, Any]] = {}  # pid -> worker, cpu_s, first, last
        self.stopped = threading.Event()

    def _cpu(self, pid: int) -> float | None:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / self.TICK  # utime + stime

    def _children(self, pid: int) -> list[int]:
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            return []
        return [int(c) for c in text.split()]

    def _hwm(self, pid: int) -> int | None:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def run(self) -> None:
        while not self.stopped.is_set():
            for root, name in self.roots.items():
                stack = [(root, name)]
                while stack:
                    pid, role = stack.pop()
                    hwm = self._hwm(pid)
                    if hwm is not None:
                        key = (role, pid)
                        self.peak[key] = max(self.peak.get(key, 0), hwm)
                    cpu = self._cpu(pid) if role.endswith("/horse") else None
                    if cpu is not None:
                        now = time.time()
                        h = self.horses.setdefault(pid, {"worker": name, "first": now})
                        h["cpu_s"], h["last"] = cpu, now
                    stack.extend((c, f"{name}/horse") for c in self._children(pid))
            self.stopped.wait(0.05)

    def cpu_of(self, worker: str, start: float, end: float) -> float | None:
        """CPU seconds of the work-horses of ``worker`` seen alive within [start, end]
        (epoch seconds): one job's horse (RQ forks one per job)."""
        seen = [h["cpu_s"] for h in list(self.horses.values()) if h["worker"] == worker
                and h["last"] >= start - 0.06 and h["first"] <= end + 0.06]
        return round(sum(seen), 3) if seen else None

    def summary(self) -> dict[str, Any]:
        by_role: dict[str, int] = {}
        for (role, _pid), hwm in self.peak.items():
            by_role[role] = max(by_role.get(role, 0), hwm)
        mb = {k: round(v / 2**20, 1) for k, v in sorted(by_role.items())}
        return {"peak_rss_mb": mb, "max_peak_rss_mb": max(mb.values(), default=None),
                "processes_seen": len(self.peak)}


def _start_redis(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("--through-workers needs redis-server on PATH (its own, private one)")
    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    from redis import Redis

    _wait(lambda: _pings(Redis.from_url(url)), 20, "redis-server")
    return proc, url


def _pings(conn: Any) -> bool:
    try:
        return bool(conn.ping())
    except Exception:  # noqa: BLE001 - not up yet
        return False


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _jobs_since(conn: Any, t0: dt.datetime) -> list[Any]:
    """Every finished or failed job that ended after ``t0`` (the webhook): the jobs of
    the turnaround, also one enqueued just before it (a tick's pull), oldest first."""
    from rq import Queue
    from rq.job import Job
    from rq.registry import FailedJobRegistry, FinishedJobRegistry

    ids: list[str] = []
    for q in Queue.all(connection=conn):
        ids += FinishedJobRegistry(queue=q).get_job_ids()
        ids += FailedJobRegistry(queue=q).get_job_ids()
    jobs = [j for j in Job.fetch_many(ids, connection=conn) if j is not None]
    jobs = [j for j in jobs if j.enqueued_at and j.ended_at and _utc(j.ended_at) > t0]
    return sorted(jobs, key=lambda j: _utc(j.enqueued_at))


def _utc(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _phase_seconds(jobs: list[Any], t0: dt.datetime, watch: RssWatch) -> dict[str, Any]:
    """Per phase: queue wait, run time (wall), the work-horse's CPU time, and when it
    started and ended after the webhook. Busy retries and several embed shards fold into
    one entry per phase."""
    out: dict[str, Any] = {}
    for job in jobs:
        name = (job.func_name or "").rsplit(".", 1)[-1].removesuffix("_job")
        if name not in PHASES or not job.started_at or not job.ended_at:
            continue
        e, s, f = _utc(job.enqueued_at), _utc(job.started_at), _utc(job.ended_at)
        entry = out.setdefault(name, {"jobs": 0, "queued_s": 0.0, "run_s": 0.0,
                                      "enqueued_after_webhook_s": (e - t0).total_seconds(),
                                      "start_after_webhook_s": (s - t0).total_seconds()})
        entry["jobs"] += 1
        entry["queued_s"] += (s - e).total_seconds()
        entry["run_s"] += (f - s).total_seconds()
        worker = f"worker{str(job.worker_name).rsplit('-', 1)[-1]}"
        cpu = watch.cpu_of(worker, s.timestamp(), f.timestamp())
        entry["cpu_s"] = entry.get("cpu_s", 0.0) + (cpu or 0.0)
        entry["end_after_webhook_s"] = (f - t0).total_seconds()
        entry["status"] = job.get_status()
    return {k: {kk: round(vv, 3) if isinstance(vv, float) else vv for kk, vv in v.items()}
            for k, v in out.items()}


class Bench:
    """One pool: its project, workers, webhook receiver and Label Studio project."""

    def __init__(self, n: int, args: argparse.Namespace, ls: dict[str, Any], work: Path,
                 make_project: Callable[..., Any]) -> None:
        from alearn.team import add_member

        t = time.perf_counter()
        self.project = make_project(work, n, args.labels, args.batch_size, args.seed)
        self.setup_s = time.perf_counter() - t
        self.n, self.args, self.ls, self.work = n, args, ls, work
        cfg = self.project.config.rounds
        cfg.auto_next, cfg.overlap = True, 3
        if args.consensus:
            self.project.config.agreement.consensus = args.consensus
        self.project.save_config()
        for email in ls["emails"]:
            add_member(self.project.store, email)
        served = ls["served"]
        (served / self.project.image_root.name).symlink_to(self.project.image_root.resolve())
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("ALEARN_")},
                    "ALEARN_REDIS_URL": ls["redis_url"], "ALEARN_LS_URL": ls["url"],
                    "ALEARN_LS_TOKEN": ls["token"], "ALEARN_LS_DOCUMENT_ROOT": str(served),
                    "ALEARN_WEBHOOK_SECRET": SECRET, "OMP_NUM_THREADS": "1",
                    "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        out = open(self.work / f"{log}-{self.n}.log", "ab")  # noqa: SIM115 - child keeps it
        p = subprocess.Popen([ALEARN, *argv], cwd=self.project.root, env=self.env,
                             stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def run(self) -> dict[str, Any]:
        from redis import Redis

        from labelstudio.client import LSClient

        conn = Redis.from_url(self.ls["redis_url"])
        conn.flushdb()
        workers = {self._spawn(["worker", "--name", f"bench-{self.n}-{i}"], f"worker{i}").pid:
                   f"worker{i}" for i in range(self.args.workers)}
        port = _free_port()
        self._spawn(["webhook", "serve", "--port", str(port)], "webhook")
        self.hook = f"http://127.0.0.1:{port}/webhook"
        watch = self.watch = RssWatch(workers)
        watch.start()
        client = LSClient(self.ls["url"], self.ls["token"])
        try:
            import httpx

            _wait(lambda: _answers(f"http://127.0.0.1:{port}/health"), 60, "webhook receiver")
            from workers.orchestrate import start_round

            first = start_round(self.project, conn)  # as 'alearn round start' does
            rid = self._wait_pushed(first.id, 600)
            turns = []
            for _ in range(self.args.rounds):
                turn, rid = self._turnaround(client, conn, rid, httpx)
                turns.append(turn)
            cli = {"round_plan_json": self._time_cli(["round", "plan", "--json"]),
                   "status_json": self._time_cli(["status", "--json"])}
        finally:
            watch.stopped.set()
            _stop(self.procs)
            client.close()
        return {"pool": self.n, "workers": self.args.workers, "batch_size": self.args.batch_size,
                "overlap": 3, "consensus": self.project.config.agreement.consensus,
                "setup_s": round(self.setup_s, 1), "turnarounds": turns,
                **cli, **watch.summary()}

    def _wait_pushed(self, round_id: int, timeout: float) -> int:
        from alearn.rounds.lifecycle import get_round

        def pushed() -> bool:
            status = get_round(self.project.store, round_id).status
            if status == "failed":
                raise RuntimeError(f"round {round_id} failed: see the worker logs in {self.work}")
            return status in ("pushed", "collecting")

        _wait(pushed, timeout, f"round {round_id} pushed", every=0.2)
        return round_id

    def _turnaround(self, client: Any, conn: Any, rid: int, httpx: Any) -> tuple[dict, int]:
        from alearn.rounds.lifecycle import get_round

        pid = int(self.project.store.get_meta("ls_project_id"))
        votes = _votes(self.project, self.ls["users"], rid)
        for task, result, user in votes[:-1]:
            client.create_annotation(task, result, completed_by=user, lead_time=3.0)
        # the votes before the last are mirrored first, as the webhooks of earlier
        # annotations would have them mirrored
        self._post(httpx)
        _wait(lambda: get_round(self.project.store, rid).status == "collecting", 120,
              "the earlier votes mirrored", every=0.1)
        _wait(lambda: not _busy(conn), 120, "the queues idle", every=0.1)
        tasks_before = _task_count(client, pid)
        task, result, user = votes[-1]
        client.create_annotation(task, result, completed_by=user, lead_time=3.0)
        t0_wall, t0 = dt.datetime.now(dt.UTC), time.perf_counter()
        self._post(httpx)  # the last annotation's webhook: the clock starts
        target = tasks_before + self.args.batch_size
        _wait(lambda: _task_count(client, pid) >= target or self._converged(rid), 600,
              "the next batch in Label Studio")
        if self._converged(rid):
            raise RuntimeError(
                f"the project converged when round {get_round(self.project.store, rid).number}"
                " closed, so no next batch followed to time: ask for fewer --rounds, or "
                "use a larger pool")
        wall = time.perf_counter() - t0
        nxt = get_round(self.project.store)  # the active round: the next one
        self._wait_pushed(nxt.id, 60)
        time.sleep(0.3)  # the push job's end is written just after its last task
        phases = _phase_seconds(_jobs_since(conn, t0_wall), t0_wall, self.watch)
        closed = get_round(self.project.store, rid)
        from alearn.rounds import metrics as round_metrics

        m = round_metrics.of(closed)
        return ({"round": closed.number, "status": closed.status, "annotations": len(votes),
                 "labels_spent": m.labels_spent, "consensus": m.consensus,
                 "turnaround_s": round(wall, 3), "phases": phases,
                 "horses_cpu_s": round(sum(v.get("cpu_s", 0.0) for v in phases.values()), 3),
                 "load_average_1min": round(os.getloadavg()[0], 1),
                 "next_round": nxt.number}, nxt.id)

    def _converged(self, round_id: int) -> bool:
        """The round closed and its convergence check stopped the rounds (no next one)."""
        from alearn.rounds import metrics as round_metrics
        from alearn.rounds.lifecycle import get_round

        rnd = get_round(self.project.store, round_id)
        return rnd.status == "closed" and bool(round_metrics.of(rnd).converged)

    def _post(self, httpx: Any) -> None:
        r = httpx.post(self.hook, json={"action": "ANNOTATION_CREATED"},
                       headers={"Authorization": f"Bearer {SECRET}"}, timeout=10)
        if r.status_code != 202:
            raise RuntimeError(f"the webhook answered {r.status_code}: {r.text}")

    def _time_cli(self, argv: list[str]) -> dict[str, float]:
        """Wall seconds and CPU seconds (user + system, the command's own process) of
        ``alearn ARGV``: on a loaded machine the CPU time is what the command costs."""
        import resource

        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        done = subprocess.run([ALEARN, *argv], cwd=self.project.root, env=self.env,
                              capture_output=True, text=True, timeout=600)
        took = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise RuntimeError(f"alearn {' '.join(argv)} failed: {done.stderr.strip()}")
        json.loads(done.stdout)  # it printed what a script can read
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return {"wall_s": round(took, 3), "cpu_s": round(cpu, 3)}


def _votes(project: Any, users: list[int], round_id: int) -> list[tuple[int, list, int]]:
    """(task, result, user) for every task of the round and each annotator: the true
    class 90% of the time, else a random one (as the direct mode's annotators)."""
    import numpy as np
    from sqlalchemy import select

    from alearn.store import Selection
    from labelstudio.label_config import choice_result

    classes = project.config.classes
    rng = np.random.default_rng(round_id)
    with project.store.session() as s:
        tasks = s.execute(select(Selection.ls_task_id, Selection.item_id).where(
            Selection.round_id == round_id).order_by(Selection.id)).all()
    out = []
    for task, item in tasks:
        for user in users:
            true = project.truth[item]
            label = true if rng.random() < 0.9 else classes[int(rng.integers(len(classes)))]
            out.append((int(task), choice_result(label), user))
    return out


def _task_count(client: Any, ls_project: int) -> int:
    """The tasks Label Studio shows in the project (what its data manager lists)."""
    return int(client._sdk.projects.get(id=ls_project).task_number or 0)


def _busy(conn: Any) -> bool:
    from rq import Queue
    from rq.registry import StartedJobRegistry

    return any(q.count or StartedJobRegistry(queue=q).count for q in Queue.all(connection=conn))


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def run(args: argparse.Namespace, make_project: Callable[..., Any]) -> dict[str, Any]:
    """The through-workers benchmark over ``args.pools``; prints and returns its JSON."""
    from label_studio_sdk import LabelStudio

    from labelstudio.server import start_server, stop_server
    from labelstudio.server_security import admin_credentials, local_document_root

    results = []
    with tempfile.TemporaryDirectory(prefix="alearn-bench-through-") as tmp:
        work = Path(tmp)
        (work / "pool").mkdir()
        redis, redis_url = _start_redis(work)
        data = work / "ls"
        creds = admin_credentials(data)
        info = start_server(data, image_root=work / "pool", username=creds["email"],
                            password=creds["password"], token=creds["token"],
                            port=_free_port())
        try:
            sdk = LabelStudio(base_url=info.url, api_key=creds["token"])
            emails = [f"through{i}@example.com" for i in range(3)]
            users = [int(sdk.users.create(email=e, username=e.split("@")[0]).id)
                     for e in emails]
            ls = {"url": info.url, "token": creds["token"], "users": users, "emails": emails,
                  "served": local_document_root(data), "redis_url": redis_url}
            for n in args.pools.split(","):
                results.append(Bench(int(n), args, ls, work, make_project).run())
        finally:
            stop_server(data)
            redis.terminate()
            redis.wait(timeout=10)
    out = {"benchmark": "round_turnaround_through_workers", "results": results,
           "goal": "turnaround < 2 s at 100k and < 10 s at 1M cached items; peak RSS of "
                   "any worker < 3 GB; round plan --json < 5 s and status < 1 s at 1M"}
    print(json.dumps(out, indent=2))
    return out
