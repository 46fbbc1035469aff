#!/usr/bin/env python
"""The fault suite: rounds that always finish, proven against the real parts.

Every scenario runs a real round: a PostgreSQL database of its own, real ``alearn
worker`` processes (RQ, with their schedulers) on a real Redis, a real Label Studio
reached through a proxy that can stop or slow it, and simulated annotators who are real
Label Studio users labeling through the label stream. No webhook is registered: rounds
must close through the workers' periodic tick alone. Then the scenario breaks
something, and checks the invariants against Label Studio's own data:

- annotations lost: every annotation Label Studio holds on the project's tasks is
  mirrored in the store or set aside with a reason (must be 0);
- duplicate tasks per (item, round) in Label Studio (must be 0);
- the round ends closed, or failed with a reason and then closed by ``round retry``;
- trusted labels unchanged by votes that were set aside: the annotators always answer
  the truth, every set-aside vote is wrong, and every trusted label must be the truth;
- the seconds it took to recover.

Prints one JSON object: the settings, and one entry per scenario. Exit status 1 if a
scenario failed. ``--only NAME[,NAME]`` runs some, ``--skip NAME[,NAME]`` all but
those; ``--list`` names them.

    python scripts/fault_suite.py [--only kill_push,flush_collecting] [--tick 10]
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLASSES = ["cat", "dog", "bird"]
N_IMAGES, BATCH, OVERLAP = 24, 6, 2
PG_ADMIN = os.environ.get("ALEARN_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("ALEARN_FAULT_REDIS_URL", "redis://127.0.0.1:6379/14")
TMP_PREFIX = "alearn-fault-"


def truth_of(path: str) -> str:
    return CLASSES[int(Path(path).stem) % 3]


def wrong_of(path: str) -> str:
    return CLASSES[(int(Path(path).stem) + 1) % 3]


# -- Label Studio behind a proxy that can stop, slow or cut it ------------------------
class Proxy:
    """An HTTP reverse proxy in front of Label Studio (the workers' ALEARN_LS_URL)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.split("//", 1)[1].rstrip("/")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.delay: dict[str, float] = {}  # path substring -> seconds before forwarding
        self.on_response: dict[str, Callable[[], None]] = {}  # path -> hook, then cut
        self.requests: Counter[str] = Counter()
        self._server: http.server.ThreadingHTTPServer | None = None
        self.start()

    def start(self) -> None:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                method_path = f"{self.command} {self.path}"
                proxy.requests[method_path.split("?")[0]] += 1
                for part, seconds in list(proxy.delay.items()):
                    if part in method_path:
                        time.sleep(seconds)
                conn = http.client.HTTPConnection(proxy.upstream, timeout=300)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection", "content-length")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                for part, hook in list(proxy.on_response.items()):
                    if part in method_path:
                        proxy.on_response.pop(part, None)
                        hook()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client was killed mid-request: that is the scenario

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _forward

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def outage(self, seconds: float) -> threading.Thread:
        """Stop answering (connections refused) for ``seconds``, in the background."""
        self.stop()

        def later() -> None:
            time.sleep(seconds)
            self.start()

        t = threading.Thread(target=later, daemon=True)
        t.start()
        return t


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the world a scenario runs in -----------------------------------------------------
class World:
    """Label Studio, the proxy, two annotators; per scenario a project and workers."""

    def __init__(self, tmp: Path, tick: int) -> None:
        from labelstudio.server import free_port, start_server

        self.tmp, self.tick = tmp, tick
        self.ls_data = tmp / "label-studio"
        self.token = secrets.token_hex(20)
        info = start_server(self.ls_data, image_root=None, document_root=tmp,
                            port=free_port(), username="admin@alearn.local",
                            password=secrets.token_urlsafe(12), token=self.token,
                            timeout=300)
        self.ls_url = info.url
        self.proxy = Proxy(self.ls_url)
        from labelstudio.annotators import invite_annotator

        self.team = [invite_annotator(self.ls_url, self.token,
                                      f"fault-{i}-{uuid.uuid4().hex[:6]}@alearn.local",
                                      "pw-" + secrets.token_hex(8)) for i in range(OVERLAP)]
        # someone with a Label Studio account who is not on any project's roster
        self.stranger = invite_annotator(self.ls_url, self.token,
                                         f"stranger-{uuid.uuid4().hex[:6]}@x.local",
                                         "pw-" + secrets.token_hex(8))

    def close(self) -> None:
        from labelstudio.server import stop_server

        self.proxy.stop()
        stop_server(self.ls_data)


class Scenario:
    """One project on its own PostgreSQL database, with its own worker processes."""

    def __init__(self, world: World, name: str, *, tick: int | None = None) -> None:
        from redis import Redis

        from alearn.config import EmbedConfig, Settings
        from alearn.ingestion.driver import ingest
        from alearn.project import Project

        self.world, self.name = world, name
        self.dir = world.tmp / name
        self.db_name = f"alearn_fault_{uuid.uuid4().hex[:10]}"
        self._sql(f'CREATE DATABASE "{self.db_name}"')
        self.db_url = PG_ADMIN.rsplit("/", 1)[0] + f"/{self.db_name}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ALEARN_")},
            "ALEARN_DATABASE_URL": self.db_url, "ALEARN_REDIS_URL": REDIS_URL,
            "ALEARN_LS_URL": world.proxy.url, "ALEARN_LS_TOKEN": world.token,
            "ALEARN_LS_DOCUMENT_ROOT": str(world.tmp), "ALEARN_PROJECT": str(self.dir / "proj"),
        }
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("ALEARN_")})
        self.redis = Redis.from_url(REDIS_URL)
        self.redis.flushdb()
        images = self.dir / "images"
        _write_images(images, N_IMAGES)
        self.project = Project.init(self.dir / "proj", classes=CLASSES, images=images,
                                    settings=Settings())
        self.project.config.embed = EmbedConfig(backbone="test_efficientnet", weights="none",
                                                image_size=32, batch_size=8, num_workers=0)
        self.project.config.rounds.batch_size = BATCH
        self.project.config.rounds.overlap = OVERLAP
        self.project.config.rounds.strategy = "margin"
        self.project.config.rounds.tick_seconds = tick or world.tick
        self.project.save_config()
        seed = self.dir / "seed.csv"
        seed.write_text("path,label\n" + "".join(f"{i:03d}.png,{CLASSES[i % 3]}\n"
                                                 for i in range(6)))
        ingest(self.project)
        ingest(self.project, manifest=seed)
        from alearn.team import add_member

        for member in world.team:  # the stranger stays off the roster
            add_member(self.project.store, member.email)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.logs = self.dir / "logs"
        self.logs.mkdir(exist_ok=True)

    # services ------------------------------------------------------------------------
    def _sql(self, statement: str) -> None:
        from sqlalchemy import create_engine, text

        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(statement))
        admin.dispose()

    def start_worker(self) -> float:
        log = open(self.logs / f"worker{len(self.workers)}.log", "ab")  # noqa: SIM115
        alearn = str(Path(sys.executable).parent / "alearn")
        self.workers.append(subprocess.Popen(
            [alearn, "worker"], cwd=self.dir / "proj", env=self.env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True))
        return time.monotonic()

    def kill_workers(self) -> None:
        """SIGKILL every worker with its scheduler and its work horse (RQ puts the horse
        in a process group of its own, so the whole tree is killed, as a host would die)."""
        for w in self.workers:
            if w.poll() is None:
                for pid in [*_descendants(w.pid), w.pid]:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                w.wait()

    def stop(self) -> None:
        for w in self.workers:
            if w.poll() is None:
                try:
                    os.killpg(w.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for w in self.workers:
            try:
                w.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(w.pid, signal.SIGKILL)
        self.world.proxy.delay.clear()
        self.world.proxy.on_response.clear()
        self.project.store.dispose()
        self._sql(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        alearn = str(Path(sys.executable).parent / "alearn")
        return subprocess.run([alearn, *args], cwd=self.dir / "proj", env=self.env,
                              capture_output=True, text=True, timeout=300)

    # the round -----------------------------------------------------------------------
    def start_round(self) -> int:
        from workers.orchestrate import start_round

        return start_round(self.project, self.redis).id

    def round(self, round_id: int) -> Any:
        from alearn.rounds.lifecycle import get_round

        return get_round(self.project.store, round_id)

    def wait(self, what: Callable[[], Any], timeout: float, label: str) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if what():
                return time.monotonic() - t0
            time.sleep(0.25)
        raise TimeoutError(f"{label} did not happen within {timeout:.0f} s")

    def wait_status(self, round_id: int, *statuses: str, timeout: float = 180) -> float:
        return self.wait(lambda: self.round(round_id).status in statuses, timeout,
                         f"round id {round_id} reaching {statuses} (is "
                         f"{self.round(round_id).status})")

    def wait_job(self, step: str, timeout: float = 60) -> float:
        """Until a job of ``step`` is running on a worker (polled every 10 ms: a step on
        this tiny pool may take a third of a second)."""
        from rq.job import Job, JobStatus
        from rq.registry import StartedJobRegistry

        from workers import queues

        queue = {"embed": "embed", "train": "train", "select": "train", "push": "sync",
                 "pull": "sync", "close": "round"}[step]
        registry = StartedJobRegistry(queue=queues.get_queue(self.redis, self.project.settings,
                                                             queue))
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            for jid in registry.get_job_ids():
                try:
                    job = Job.fetch(jid, connection=self.redis)
                except Exception:  # noqa: BLE001 - finished and gone meanwhile
                    continue
                if (job.meta.get("step") == step or job.func_name.endswith(f".{step}_job")) \
                        and job.get_status() == JobStatus.STARTED:
                    return time.monotonic() - t0
            time.sleep(0.01)
        raise TimeoutError(f"no {step} job ran within {timeout:.0f} s")

    @property
    def ls_project(self) -> int:
        return int(self.project.store.get_meta("ls_project_id"))

    def paths(self) -> dict[int, str]:
        from sqlalchemy import select

        from alearn.store import Item

        with self.project.store.session() as s:
            return {int(i): p for i, p in s.execute(select(Item.id, Item.path)).all()}

    def label(self, max_tasks: int | None = None, who: list[Any] | None = None) -> int:
        """The team labels through the stream, always with the truth."""
        from labelstudio.annotators import label_stream

        paths = self.paths()
        return sum(label_stream(self.world.ls_url, a.token, self.ls_project,
                                lambda d: truth_of(paths[int(d["item_id"])]),
                                lead_time=1.0, max_tasks=max_tasks)
                   for a in (who or self.world.team))

    def admin(self) -> Any:
        from labelstudio.client import LSClient

        return LSClient(self.world.ls_url, self.world.token)

    def tasks(self) -> list[dict[str, Any]]:
        with self.admin() as admin:
            return list(admin.iter_tasks(self.ls_project, annotations=True))

    # invariants ----------------------------------------------------------------------
    def invariants(self, round_id: int, injected: set[int] | None = None) -> dict[str, Any]:
        """The invariants; ``injected``: tasks the scenario itself added to Label Studio
        (not alearn's, so not counted as duplicates)."""
        from sqlalchemy import select

        from alearn.store import Annotation, Label, QuarantinedAnnotation

        tasks = self.tasks()
        held = {int(a["id"]) for t in tasks for a in t["annotations"]}
        with self.project.store.session() as s:
            mirrored = set(s.scalars(select(Annotation.ls_annotation_id)))
            aside = set(s.scalars(select(QuarantinedAnnotation.ls_annotation_id)))
            labels = dict(s.execute(select(Label.item_id, Label.label)
                                    .where(Label.origin == "consensus")).all())
            no_reason = s.scalar(select(Annotation.id).where(
                Annotation.status != "ok", Annotation.reason.is_(None)).limit(1))
        per_key = Counter((t["data"].get("item_id"), t["data"].get("round")) for t in tasks
                          if t["id"] not in (injected or set()))
        paths = self.paths()
        wrong = [i for i, lab in labels.items() if lab != truth_of(paths[i])]
        rnd = self.round(round_id)
        return {
            "annotations_in_label_studio": len(held),
            "annotations_lost": len(held - mirrored - aside),
            "set_aside_without_reason": int(no_reason is not None),
            "duplicate_tasks": sum(n - 1 for n in per_key.values() if n > 1),
            "trusted_labels": len(labels),
            "trusted_labels_wrong": len(wrong),
            "round_status": rnd.status,
        }


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _write_images(root: Path, n: int, *, start: int = 0) -> None:
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for i in range(start, n):
        rng = np.random.default_rng(900 + i)
        arr = rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
        arr[..., i % 3] = 255  # the class shows, a little
        Image.fromarray(arr).save(root / f"{i:03d}.png")


# -- scenarios ------------------------------------------------------------------------
def _label_and_close(sc: Scenario, rid: int, timeout: float = 120) -> float:
    """The team labels the whole batch; the round must close by itself (no webhook)."""
    sc.wait_status(rid, "pushed", "collecting", timeout=180)
    sc.label()
    return sc.wait_status(rid, "closed", timeout=timeout)


def closes_by_itself(sc: Scenario) -> dict[str, Any]:
    sc.start_worker()
    rid = sc.start_round()
    sc.wait_status(rid, "pushed", timeout=180)
    sc.label()
    t = sc.wait_status(rid, "closed", timeout=sc.project.config.rounds.tick_seconds + 30)
    return {"round": rid, "recovery_s": None, "closed_after_last_vote_s": round(t, 1)}


def _kill_during(step: str) -> Callable[[Scenario], dict[str, Any]]:
    def run(sc: Scenario) -> dict[str, Any]:
        sc.start_worker()
        if step in ("pull", "close"):
            rid = sc.start_round()
            sc.wait_status(rid, "pushed", timeout=180)
            if step == "pull":
                sc.world.proxy.delay["GET /api/tasks"] = 2.0
            sc.label()
        else:
            rid = sc.start_round()
        sc.wait_job(step, timeout=120)
        sc.kill_workers()
        sc.world.proxy.delay.clear()
        time.sleep(5)
        t0 = sc.start_worker()
        if step in ("pull", "close"):
            sc.wait_status(rid, "closed", timeout=180)
        else:
            sc.wait_status(rid, "pushed", "collecting", timeout=180)
        recovered = time.monotonic() - t0
        if step not in ("pull", "close"):
            _label_and_close(sc, rid)
        return {"round": rid, "recovery_s": round(recovered, 1)}
    run.__name__ = f"kill_{step}"
    return run


def kill_push_after_import(sc: Scenario) -> dict[str, Any]:
    """SIGKILL once Label Studio has imported the tasks, before alearn records them."""
    sc.start_worker()
    sc.world.proxy.on_response["/import"] = sc.kill_workers
    rid = sc.start_round()
    sc.wait(lambda: "/import" not in sc.world.proxy.on_response, 180, "the import")
    time.sleep(5)
    t0 = sc.start_worker()
    sc.wait_status(rid, "pushed", "collecting", timeout=180)
    recovered = time.monotonic() - t0
    _label_and_close(sc, rid)
    return {"round": rid, "recovery_s": round(recovered, 1)}


def _flush_when(state: str) -> Callable[[Scenario], dict[str, Any]]:
    def run(sc: Scenario) -> dict[str, Any]:
        sc.start_worker()
        if state == "planned":
            sc.world.proxy.delay["/import"] = 4.0
            rid = sc.start_round()
            sc.wait_job("push", timeout=120)
        else:
            rid = sc.start_round()
            sc.wait_status(rid, "pushed", timeout=180)
            if state == "collecting":
                sc.label(max_tasks=2)
                sc.wait_status(rid, "collecting", timeout=120)
        sc.redis.flushdb()
        t0 = time.monotonic()
        sc.world.proxy.delay.clear()
        if state != "planned":
            sc.label()
        sc.wait_status(rid, "pushed", "collecting", "closed", timeout=180)
        if state == "planned":
            sc.label()
        sc.wait_status(rid, "closed", timeout=180)
        return {"round": rid, "recovery_s": round(time.monotonic() - t0, 1),
                "redis": "FLUSHDB of alearn's Redis database (all of its keys)"}
    run.__name__ = f"flush_{state}"
    return run


def _ls_down_during(step: str) -> Callable[[Scenario], dict[str, Any]]:
    def run(sc: Scenario) -> dict[str, Any]:
        sc.start_worker()
        if step == "push":
            sc.world.proxy.delay["/import"] = 3.0
            rid = sc.start_round()
            sc.wait_job("push", timeout=120)
        else:
            rid = sc.start_round()
            sc.wait_status(rid, "pushed", timeout=180)
            sc.label()
        outage = sc.world.proxy.outage(60)
        t0 = time.monotonic()
        sc.world.proxy.delay.clear()
        outage.join()
        retried = None
        if step == "push":
            sc.wait_status(rid, "pushed", "collecting", "failed", timeout=180)
            if sc.round(rid).status == "failed":
                retried = {"error": sc.round(rid).error,
                           "retry": sc.cli("round", "retry").stdout.strip()}
            sc.wait_status(rid, "pushed", "collecting", timeout=180)
            sc.label()
        sc.wait_status(rid, "closed", "failed", timeout=240)
        if sc.round(rid).status == "failed":
            retried = {"error": sc.round(rid).error,
                       "retry": sc.cli("round", "retry").stdout.strip()}
            sc.wait_status(rid, "closed", timeout=120)
        return {"round": rid, "outage_s": 60,
                "recovery_s": round(time.monotonic() - t0 - 60, 1), "failed_then_retried": retried}
    run.__name__ = f"ls_down_during_{step}"
    return run


def ls_slow_past_lease(sc: Scenario) -> dict[str, Any]:
    """Label Studio answers the import after 25 s, longer than a step's 20 s lease."""
    from workers.queues import LEASE_SECONDS

    sc.start_worker()
    sc.start_worker()  # a second worker that would take the push if the lease lapsed
    sc.world.proxy.delay["/import"] = LEASE_SECONDS + 5.0
    rid = sc.start_round()
    sc.wait_status(rid, "pushed", timeout=240)
    sc.world.proxy.delay.clear()
    _label_and_close(sc, rid)
    return {"round": rid, "delay_s": LEASE_SECONDS + 5, "lease_s": LEASE_SECONDS,
            "imports": sc.world.proxy.requests.get(
                f"POST /api/projects/{sc.ls_project}/import", 0)}


def pg_restart_during_close(sc: Scenario) -> dict[str, Any]:
    sc.start_worker()
    rid = sc.start_round()
    sc.wait_status(rid, "pushed", timeout=180)
    sc.label()
    sc.wait_job("close", timeout=120)
    how = _restart_postgres(down_s=5)
    t0 = time.monotonic()
    sc.wait_status(rid, "closed", "failed", timeout=180)
    retried = None
    if sc.round(rid).status == "failed":
        retried = sc.round(rid).error
        sc.cli("round", "retry")
        sc.wait_status(rid, "closed", timeout=120)
    from rq.job import Job

    from workers.enqueue import close_job_id

    close = Job.fetch(close_job_id(sc.project, rid), connection=sc.redis)
    return {"round": rid, "postgres": how, "recovery_s": round(time.monotonic() - t0, 1),
            "close_attempts": 1 + 3 - int(close.retries_left or 0), "failed_then_retried": retried}


def _restart_postgres(down_s: float) -> str:
    """Stop PostgreSQL at once (fast mode: open connections are cut), keep it down for
    ``down_s`` seconds, start it again."""
    clusters = Path("/etc/postgresql")
    if shutil.which("pg_ctlcluster") and clusters.is_dir() and os.geteuid() == 0:
        version = sorted(p.name for p in clusters.iterdir())[-1]
        ctl = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]
        subprocess.run([*ctl, "stop", "-m", "fast"], check=True, capture_output=True,
                       timeout=120)
        time.sleep(down_s)
        subprocess.run([*ctl, "start"], check=True, capture_output=True, timeout=120)
        return f"pg_ctlcluster {version} main stop -m fast; {down_s:g} s down; start"
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname LIKE 'alearn_fault_%'"))
    admin.dispose()
    return "every connection terminated (pg_terminate_backend): no right to restart it"


def webhook_repeated_and_wrong_secret(sc: Scenario) -> dict[str, Any]:
    """The receiver gets one event 10 times, and once with a wrong secret."""
    import httpx

    sc.start_worker()
    rid = sc.start_round()
    sc.wait_status(rid, "pushed", timeout=180)
    secret = secrets.token_hex(16)
    port = _free_port()
    alearn = str(Path(sys.executable).parent / "alearn")
    hook = subprocess.Popen([alearn, "webhook", "serve", "--port", str(port)],
                            cwd=sc.dir / "proj", env={**sc.env, "ALEARN_WEBHOOK_SECRET": secret},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        sc.wait(lambda: _answers(url + "/health"), 30, "the webhook receiver")
        sc.label()
        body = {"action": "ANNOTATION_CREATED", "project": {"id": sc.ls_project}}
        codes = [httpx.post(url + "/webhook", json=body,
                            headers={"Authorization": f"Bearer {secret}"}).status_code
                 for _ in range(10)]
        bad = httpx.post(url + "/webhook", json=body,
                         headers={"Authorization": f"Bearer wrong-{secret}"}).status_code
        t = sc.wait_status(rid, "closed", timeout=60)
    finally:
        hook.terminate()
        hook.wait(timeout=10)
    from rq.job import Job

    from workers.enqueue import close_job_id

    closes = int(Job.exists(close_job_id(sc.project, rid), connection=sc.redis))
    return {"round": rid, "accepted": codes.count(202), "wrong_secret_status": bad,
            "closed_after_webhooks_s": round(t, 1), "close_jobs": closes,
            "check": bad == 401 and codes.count(202) == 10}


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _post_annotation(sc: Scenario, token: str, task_id: int, result: Any) -> int:
    import httpx

    r = httpx.post(f"{sc.world.ls_url}/api/tasks/{task_id}/annotations/",
                   headers={"Authorization": f"Token {token}"},
                   json={"project": sc.ls_project, "result": result, "lead_time": 1.0},
                   timeout=30)
    return r.status_code


def annotates_twice(sc: Scenario) -> dict[str, Any]:
    """One annotator labels a task wrongly, then again (rightly): the latest counts."""
    from labelstudio.label_config import choice_result

    sc.start_worker()
    rid = sc.start_round()
    sc.wait_status(rid, "pushed", timeout=180)
    paths = sc.paths()
    task = sc.tasks()[0]
    path = paths[int(task["data"]["item_id"])]
    a = sc.world.team[0]
    codes = [_post_annotation(sc, a.token, task["id"], choice_result(wrong_of(path))),
             _post_annotation(sc, a.token, task["id"], choice_result(truth_of(path)))]
    sc.label()
    sc.wait_status(rid, "closed", timeout=120)
    return {"round": rid, "posted": codes, "check": _superseded(sc) >= 1}


def _superseded(sc: Scenario) -> int:
    from sqlalchemy import func, select

    from alearn.store import Annotation

    with sc.project.store.session() as s:
        return int(s.scalar(select(func.count()).where(
            Annotation.reason.like("superseded%"))) or 0)


def malformed_result(sc: Scenario) -> dict[str, Any]:
    """A result whose ``value`` is a list, and one that is not a list at all."""
    sc.start_worker()
    rid = sc.start_round()
    sc.wait_status(rid, "pushed", timeout=180)
    t1, t2 = sc.tasks()[:2]
    bad = [{"type": "choices", "from_name": "label", "to_name": "image", "value": ["cat"]}]
    stranger = sc.world.stranger  # not on the team: its votes must not fill a task
    codes = [_post_annotation(sc, stranger.token, t1["id"], bad),
             _post_annotation(sc, stranger.token, t2["id"], {"choices": "dog"})]
    sc.label()
    sc.wait_status(rid, "closed", timeout=120)
    from sqlalchemy import select

    from alearn.store import Annotation, QuarantinedAnnotation

    with sc.project.store.session() as s:
        reasons = [r for r in s.scalars(select(Annotation.reason).where(
            Annotation.status != "ok"))] + list(s.scalars(select(QuarantinedAnnotation.reason)))
    return {"round": rid, "label_studio_answered": codes, "set_aside_reasons": reasons,
            "check": all(c >= 400 for c in codes) or bool(reasons)}


def foreign_task(sc: Scenario) -> dict[str, Any]:
    """A task injected into the project, naming a real item and the round, voted wrong."""
    from labelstudio.label_config import choice_result

    sc.start_worker()
    rid = sc.start_round()
    sc.wait_status(rid, "pushed", timeout=180)
    paths = sc.paths()
    real = sc.tasks()[0]
    item = int(real["data"]["item_id"])
    with sc.admin() as admin:
        (fake,) = admin.import_tasks(sc.ls_project, [{"data": {**real["data"]}}])
    for a in sc.world.team:
        _post_annotation(sc, a.token, fake, choice_result(wrong_of(paths[item])))
    sc.label()
    sc.wait_status(rid, "closed", timeout=120)
    from sqlalchemy import select

    from alearn.store import QuarantinedAnnotation

    with sc.project.store.session() as s:
        kinds = list(s.scalars(select(QuarantinedAnnotation.kind)))
    return {"round": rid, "injected_tasks": [fake], "quarantined": kinds,
            "check": kinds.count("foreign") == len(sc.world.team)}


def _changed_after_close(change: str) -> Callable[[Scenario], dict[str, Any]]:
    def run(sc: Scenario) -> dict[str, Any]:
        from labelstudio.label_config import choice_result

        sc.start_worker()
        rid = sc.start_round()
        _label_and_close(sc, rid)
        paths = sc.paths()
        task = sc.tasks()[0]
        ann = task["annotations"][0]
        path = paths[int(task["data"]["item_id"])]
        with sc.admin() as admin:
            if change == "edited":
                admin.update_annotation(int(ann["id"]), result=choice_result(wrong_of(path)))
            else:
                admin.delete_annotation(int(ann["id"]))
        from alearn.rounds.lifecycle import is_stale

        t = sc.wait(lambda: bool(is_stale(sc.project.store, rid)),
                    sc.project.config.rounds.tick_seconds + 30, "the round marked stale")
        status = sc.cli("status").stdout
        recompute = sc.cli("round", "close", "--round", str(sc.round(rid).number))
        return {"round": rid, "stale_after_s": round(t, 1),
                "status_says_stale": "is stale" in status,
                "recomputed": recompute.returncode == 0,
                **({} if recompute.returncode == 0 else
                   {"recompute_said": (recompute.stdout + recompute.stderr)[-600:]}),
                "stale_after_recompute": bool(is_stale(sc.project.store, rid)),
                "check": recompute.returncode == 0 and not is_stale(sc.project.store, rid)
                and "is stale" in status}
    run.__name__ = f"annotation_{change}_after_close"
    return run


def failing_select(sc: Scenario) -> dict[str, Any]:
    """Select fails for good: every image already has a trusted label, so there is
    nothing to select (embed and train succeed). The round fails with the step and the
    reason, and status names 'alearn round retry'. The operator adds images; 'round
    retry' then resumes the round, which is labeled and closes."""
    gold = sc.dir / "all.csv"
    gold.write_text("path,label\n" + "".join(f"{i:03d}.png,{CLASSES[i % 3]}\n"
                                             for i in range(N_IMAGES)))
    r = sc.cli("ingest", "--manifest", str(gold))
    assert r.returncode == 0, r.stderr
    sc.start_worker()
    rid = sc.start_round()
    t = sc.wait_status(rid, "failed", timeout=180)
    error = sc.round(rid).error
    status = sc.cli("status").stdout
    more = sc.dir / "images"
    _write_images(more, N_IMAGES + BATCH * 2, start=N_IMAGES)
    added = sc.cli("ingest")
    retry = sc.cli("round", "retry")
    _label_and_close(sc, rid)
    return {"round": rid, "failed_after_s": round(t, 1), "error": error,
            "status_names_retry": "alearn round retry" in status,
            "added_then": added.stdout.strip()[:120], "retry": retry.stdout.strip(),
            "check": bool(error) and error.startswith("select: EmptyPoolError")
            and "alearn round retry" in status}


SCENARIOS: list[Callable[[Scenario], dict[str, Any]]] = [
    closes_by_itself,
    _kill_during("embed"), _kill_during("train"), _kill_during("select"),
    kill_push_after_import, _kill_during("pull"), _kill_during("close"),
    _flush_when("planned"), _flush_when("pushed"), _flush_when("collecting"),
    _ls_down_during("push"), _ls_down_during("pull"),
    ls_slow_past_lease, pg_restart_during_close, webhook_repeated_and_wrong_secret,
    annotates_twice, malformed_result, foreign_task,
    _changed_after_close("edited"), _changed_after_close("deleted"), failing_select,
]
#: scenarios that run at the product's default tick (the rest use --tick, to keep it short)
DEFAULT_TICK = {"closes_by_itself"}


def run_one(world: World, fn: Callable[[Scenario], dict[str, Any]]) -> dict[str, Any]:
    t0 = time.monotonic()
    sc = None
    out: dict[str, Any] = {"scenario": fn.__name__}
    try:
        sc = Scenario(world, fn.__name__, tick=30 if fn.__name__ in DEFAULT_TICK else None)
        result = fn(sc)
        rid = result.get("round")
        inv = sc.invariants(rid, set(result.get("injected_tasks", []))) if rid else {}
        check = result.pop("check", True)
        ok = (check and inv.get("annotations_lost", 0) == 0
              and inv.get("duplicate_tasks", 0) == 0 and inv.get("trusted_labels_wrong", 0) == 0
              and inv.get("set_aside_without_reason", 0) == 0
              and inv.get("round_status") == "closed")
        out.update(passed=bool(ok), **result, **inv)
    except Exception as exc:  # noqa: BLE001 - a scenario's failure is reported, not raised
        out.update(passed=False, error=f"{type(exc).__name__}: {exc}",
                   traceback=traceback.format_exc(limit=4))
        if sc is not None:
            out["worker_log_tail"] = _tail(sc.logs)
    finally:
        if sc is not None:
            try:
                sc.stop()
            except Exception as exc:  # noqa: BLE001
                out.setdefault("cleanup_error", str(exc))
    out["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps({"progress": out["scenario"], "passed": out["passed"],
                      "seconds": out["seconds"]}), file=sys.stderr, flush=True)
    return out


def _tail(logs: Path, n: int = 25) -> str:
    lines: list[str] = []
    for f in sorted(logs.glob("*.log")):
        lines += [f"{f.name}: {line}" for line in
                  f.read_text(errors="replace").splitlines()[-n:]]
    return "\n".join(lines[-n * 2:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="Comma-separated scenario names.")
    ap.add_argument("--skip", default="", help="Comma-separated scenario names to leave out.")
    ap.add_argument("--list", action="store_true", help="Name the scenarios and exit.")
    ap.add_argument("--tick", type=int, default=10,
                    help="rounds.tick_seconds for the scenarios (closes_by_itself uses 30, "
                         "the product's default).")
    ap.add_argument("--keep", action="store_true", help="Keep the temporary folder.")
    args = ap.parse_args(argv)
    names = [fn.__name__ for fn in SCENARIOS]
    if args.list:
        print("\n".join(names))
        return 0
    only, skip = set(filter(None, args.only.split(","))), set(filter(None, args.skip.split(",")))
    chosen = [fn for fn in SCENARIOS
              if (not only or fn.__name__ in only) and fn.__name__ not in skip]
    unknown = (only | skip) - set(names)
    if unknown:
        print(f"unknown scenario(s) {sorted(unknown)}; --list names them", file=sys.stderr)
        return 2
    # a run stopped by a signal still stops its workers (the finally clauses run)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    stray = _stop_stray_workers()
    if stray:
        print(json.dumps({"stopped_workers_of_an_earlier_run": stray}), file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
    saved_env = dict(os.environ)
    t0 = time.monotonic()
    world = World(tmp, args.tick)
    try:
        results = [run_one(world, fn) for fn in chosen]
    finally:
        world.close()
        os.environ.clear()
        os.environ.update(saved_env)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    summary = summarize(results, tick_seconds=args.tick, lease_seconds=_lease(),
                        webhooks="none registered", seconds=round(time.monotonic() - t0, 1))
    print(json.dumps({"summary": summary, "scenarios": results}, indent=2, default=str))
    return 0 if summary["scenarios_passed"] == summary["scenarios_run"] else 1


def summarize(results: list[dict[str, Any]], **settings: Any) -> dict[str, Any]:
    """The run's totals over its scenarios' results, with the run's ``settings``
    (tests/test_fault_suite.py also sums a run in two parts with it)."""
    recov = [r["recovery_s"] for r in results if isinstance(r.get("recovery_s"), float | int)]
    return {
        "scenarios_run": len(results),
        "scenarios_passed": sum(bool(r["passed"]) for r in results),
        "annotations_lost": sum(r.get("annotations_lost", 0) for r in results),
        "duplicate_tasks": sum(r.get("duplicate_tasks", 0) for r in results),
        "trusted_labels_wrong": sum(r.get("trusted_labels_wrong", 0) for r in results),
        "max_recovery_s": max(recov) if recov else None,
        **settings,
    }


def _stop_stray_workers() -> list[int]:
    """SIGKILL the worker trees an earlier run of the suite left on this host (a run
    killed before its clean-up): on the suite's Redis database they would take this
    run's jobs with another project's settings. Only processes whose project is in one
    of the suite's temporary folders and whose Redis is the suite's are touched."""
    stray = []
    for env_file in Path("/proc").glob("[0-9]*/environ"):
        try:
            env = dict(e.split("=", 1) for e in env_file.read_text(errors="replace")
                       .split("\0") if "=" in e)
        except OSError:
            continue
        if (env.get("ALEARN_REDIS_URL") == REDIS_URL
                and f"/{TMP_PREFIX}" in env.get("ALEARN_PROJECT", "")):
            stray.append(int(env_file.parent.name))
    for pid in stray:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return sorted(stray)


def _lease() -> int:
    from workers.queues import LEASE_SECONDS

    return LEASE_SECONDS


if __name__ == "__main__":
    sys.exit(main())
