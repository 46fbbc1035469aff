"""CPU seconds of each round job, through the real job functions, at given pool sizes.

For each pool size, a project of that many cached items (``bench_round.make_project``:
synthetic embeddings in the real feature cache, 500 trusted labels, batch 50, 3 annotators
on the roster, ``rounds.auto_next``) gets one round planned, its tasks "pushed" and
3 votes per task written to the store (90% right) as a pull would. Then each job runs
in a fresh process (as a worker's forked work-horse, the modules a worker preloads
already imported), against a private ``redis-server``:

    close   workers.jobs.close_job, then its on_success callback (follow_close:
            the next round is started and its chain enqueued, as with auto_next)
    embed   workers.jobs.embed_job (every item already cached: a no-op; the project's
            items were embedded once before the round, as 'alearn embed' does after an
            ingest, so the embed mark is there; ``--no-mark``: it is not)
    train   workers.jobs.train_job
    select  workers.jobs.select_job (scoring with the version the train job returned)

Pull and push need Label Studio and are not timed here. Each job's CPU seconds
(``time.process_time`` around the call) are printed as JSON; ``--profile DIR`` keeps a
cProfile of each and ``--top K`` prints its K costliest functions (cumulative).

    nice .venv/bin/python scripts/bench_jobs.py --pools 20000,200000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pstats
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

PHASES = ("close", "embed", "train", "select")
EMAILS = [f"bench{i}@example.com" for i in range(3)]


def _child(phase: str, root: str, state: dict[str, Any], profile: str | None,
           top: int) -> dict[str, Any]:
    """One job in this (fresh) process; returns its CPU seconds and result."""
    import cProfile

    import rq

    from workers import jobs, orchestrate, queues
    from workers.worker import preload

    preload(queues.QUEUE_NAMES)  # what a worker does before it forks a job

    # two live embed workers, so the close's next round asks how much is left to embed
    rq.Worker.all = classmethod(lambda cls, *a, **k: [None, None])  # type: ignore
    queues.worker_alive = lambda worker: True  # type: ignore

    def close() -> Any:
        result = jobs.close_job(root, state["round_id"])
        project = orchestrate._open(root)  # as the on_success callback does
        nxt = orchestrate.follow_close(project, queues.connect(project.settings),
                                       state["round_id"], result)
        return {"closed": result.get("closed"), "consensus": result.get("consensus"),
                "next_round": nxt}

    def select() -> Any:
        jobs._trained_version = lambda conn, job_id: state["model_version"]  # type: ignore
        return jobs.select_job(root, state["next_round_id"], "train")

    run = {"close": close,
           "embed": lambda: jobs.embed_job(root, 0, 1),
           "train": lambda: jobs.train_job(root, state["next_round_id"]),
           "select": select}[phase]
    prof = cProfile.Profile()
    c0, t0 = time.process_time(), time.perf_counter()
    prof.enable()
    result = run()
    prof.disable()
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    out: dict[str, Any] = {"cpu_s": round(cpu, 3), "wall_s": round(wall, 3)}
    if isinstance(result, dict):
        out["result"] = {k: v for k, v in result.items()
                         if k in ("closed", "consensus", "next_round", "computed", "cached",
                                  "items", "model_version", "n_train", "selected")}
    if profile:
        prof.dump_stats(profile)
    if top:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(top)
        out["profile"] = buf.getvalue().splitlines()[6:]
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _votes(project: Any, round_id: int, seed: int) -> int:
    """3 votes per task of the round, 90% right, as a pull would mirror them."""
    import numpy as np
    from sqlalchemy import insert, select

    from alearn.store import Annotation, Selection

    rng = np.random.default_rng(seed)
    classes = project.config.classes
    with project.store.session() as s:
        items = list(s.scalars(select(Selection.item_id).where(Selection.round_id == round_id)))
        rows = []
        for k, item in enumerate(items):
            for j, who in enumerate(EMAILS):
                true = project.truth[item]
                label = true if rng.random() < 0.9 else classes[int(rng.integers(len(classes)))]
                rows.append({"ls_annotation_id": 3 * k + j + 1, "ls_task_id": k + 1,
                             "item_id": item, "round_id": round_id, "annotator": who,
                             "label": label, "lead_time": 3.0, "status": "ok"})
        s.execute(insert(Annotation), rows)
    return len(rows)


def setup(n: int, work: Path, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The project, with round 1 pushed and fully voted."""
    from bench_round import make_project

    from alearn.model.training import train_head
    from alearn.query.selection import plan_batch
    from alearn.rounds.lifecycle import PUSHED, create_round, transition
    from alearn.rounds.plan_record import record_plan
    from alearn.team import add_member

    project = make_project(work, n, args.labels, args.batch_size, args.seed)
    cfg = project.config.rounds
    cfg.auto_next, cfg.overlap = True, 3
    project.save_config()
    for email in EMAILS:
        add_member(project.store, email)
    record = train_head(project)
    rnd = create_round(project.store, strategy="margin", batch_size=args.batch_size, overlap=3)
    record_plan(project.store, rnd.id, plan_batch(project, batch_size=args.batch_size,
                                                  strategy="margin",
                                                  model_version=record.version if record
                                                  else None))
    transition(project.store, rnd.id, PUSHED)
    _votes(project, rnd.id, args.seed)
    if not args.no_mark:  # as 'alearn embed' after an ingest leaves it: the embed mark
        from alearn.features.pipeline import embed_project

        embed_project(project, progress=False)
    return project.root, {"round_id": rnd.id}


def bench_pool(n: int, work: Path, args: argparse.Namespace, env: dict[str, str]
               ) -> dict[str, Any]:
    t = time.perf_counter()
    root, state = setup(n, work, args)
    out: dict[str, Any] = {"pool": n, "setup_s": round(time.perf_counter() - t, 1),
                           "cpu_s": {}, "jobs": {}}
    for phase in PHASES:
        prof = str(Path(args.profile) / f"{phase}-{n}.prof") if args.profile else ""
        cmd = [sys.executable, __file__, "--child", phase, "--root", str(root),
               "--state", json.dumps(state), "--profile-file", prof, "--top", str(args.top)]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise SystemExit(f"{phase} at {n} failed:\n{res.stderr[-4000:]}")
        got = json.loads(res.stdout.strip().splitlines()[-1])
        out["cpu_s"][phase] = got["cpu_s"]
        out["jobs"][phase] = got
        result = got.get("result", {})
        if phase == "close":
            from alearn.config import Settings
            from alearn.project import Project
            from alearn.rounds.lifecycle import get_round

            state["next_round_id"] = get_round(Project.open(root, Settings()).store).id
        if phase == "train":
            state["model_version"] = result.get("model_version")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pools", default="20000,200000")
    p.add_argument("--labels", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-mark", action="store_true",
                   help="no embed before the round: the first embed looks at every item")
    p.add_argument("--profile", default="", help="folder for each job's cProfile stats")
    p.add_argument("--top", type=int, default=0, help="print each job's K costliest calls")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    p.add_argument("--root", default="", help=argparse.SUPPRESS)
    p.add_argument("--state", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--profile-file", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        got = _child(args.child, args.root, json.loads(args.state), args.profile_file or None,
                     args.top)
        print(json.dumps(got))
        return got
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise SystemExit("redis-server is not on PATH; install Redis to run this benchmark.")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="alearn-bench-jobs-") as tmp:
        server = subprocess.Popen([redis_server, "--port", str(port), "--save", "",
                                   "--appendonly", "no", "--dir", tmp],
                                  stdout=subprocess.DEVNULL)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("ALEARN_")},
               "ALEARN_REDIS_URL": f"redis://127.0.0.1:{port}/0", "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        os.environ.update(env)
        try:
            time.sleep(0.3)
            results = [bench_pool(int(n), Path(tmp), args, env) for n in args.pools.split(",")]
        finally:
            server.terminate()
            server.wait()
    out = {"benchmark": "round_jobs_cpu", "load_average": os.getloadavg(),
           "results": results}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
