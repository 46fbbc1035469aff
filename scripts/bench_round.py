"""Round turnaround: from a round's last annotation to the next batch in Label Studio.

For each pool size, a project with that many cached items (synthetic embeddings:
10 Gaussian classes in 1280 dimensions, stored in the real feature cache) and a few
hundred trusted labels runs one round against a real Label Studio: plan, push, three
annotators label every task (admin-created annotations as distinct users), then the
timed part, done by the same library calls the workers make:

    pull   mirror the annotations into the store
    close  agreement, consensus, annotator quality, convergence check
    train  fit the head on the trusted labels
    select score the whole pool and store the next batch
    push   create the next batch's tasks with predictions

Each phase opens the project afresh, as a worker job does, so nothing read by one phase
is reused by the next. Prints JSON. Queue latency between jobs (milliseconds on a local
Redis) is not included.

    .venv/bin/python scripts/bench_round.py --pools 10000,100000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import insert
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from label_studio_sdk import LabelStudio  # noqa: E402

from alearn.config import EmbedConfig, Settings  # noqa: E402
from alearn.features.backbone import cache_key_for  # noqa: E402
from alearn.features.cache import FeatureCache  # noqa: E402
from alearn.model.training import train_head  # noqa: E402
from alearn.project import Project  # noqa: E402
from alearn.query.selection import plan_batch  # noqa: E402
from alearn.rounds.close import close_round  # noqa: E402
from alearn.rounds.lifecycle import PUSHED, create_round, record_plan, transition  # noqa: E402
from alearn.store import Item, Label  # noqa: E402
from labelstudio.client import LSClient  # noqa: E402
from labelstudio.label_config import choice_result  # noqa: E402
from labelstudio.projects import ensure_project  # noqa: E402
from labelstudio.pull import pull_annotations  # noqa: E402
from labelstudio.push import push_round  # noqa: E402
from labelstudio.server import free_port, start_server, stop_server  # noqa: E402
from labelstudio.server_security import admin_credentials, local_document_root  # noqa: E402

CLASSES = [f"c{i}" for i in range(10)]
DIM = 1280


def make_project(workdir: Path, n: int, n_labels: int, batch: int, seed: int) -> Project:
    images = workdir / "pool" / f"images{n}"
    images.mkdir(parents=True)
    project = Project.init(workdir / f"proj{n}", classes=CLASSES, images=images,
                           settings=Settings(), force=True)
    project.config.embed = EmbedConfig(backbone="tf_efficientnet_lite0", weights="none",
                                       image_size=96)
    project.config.rounds.batch_size = batch
    project.config.rounds.strategy = "margin"
    project.save_config()
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(CLASSES), DIM)).astype(np.float32)
    y = rng.integers(0, len(CLASSES), size=n)
    X = (centers[y] * 0.5 + rng.normal(size=(n, DIM)).astype(np.float32)).astype(np.float16)
    shas = [hashlib.sha256(f"{seed}:{i}".encode()).hexdigest() for i in range(n)]
    FeatureCache(project.features_dir, cache_key_for(project.config.embed,
                                                     root=project.root)).put(shas, X)
    with project.store.session() as s:
        s.execute(insert(Item), [{"sha256": h, "path": f"img/{i:06d}.png", "width": 96,
                                  "height": 96, "extra": {}} for i, h in enumerate(shas)])
    with project.store.session() as s:
        s.execute(insert(Label), [{"item_id": i + 1, "label": CLASSES[int(y[i])],
                                   "origin": "manifest", "is_gold": False,
                                   "confidence": 1.0} for i in range(n_labels)])
    project.truth = {i + 1: CLASSES[int(y[i])] for i in range(n)}  # type: ignore[attr-defined]
    return project


def fresh(project: Project) -> Project:
    """A new Project object, as each worker job opens one: nothing is shared in memory."""
    return Project.open(project.root, Settings())


def plan_and_push(project: Project, client: LSClient) -> tuple[int, dict[str, float]]:
    times: dict[str, float] = {}
    t = time.perf_counter()
    record = train_head(fresh(project))
    times["train"] = time.perf_counter() - t
    t = time.perf_counter()
    project = fresh(project)
    rnd = create_round(project.store, strategy="margin",
                       batch_size=project.config.rounds.batch_size, overlap=3)
    # as the select job does: score with the version the train job returned
    record_plan(project.store, rnd.id, plan_batch(
        project, batch_size=rnd.batch_size, strategy="margin",
        model_version=record.version if record else None))
    times["select"] = time.perf_counter() - t
    t = time.perf_counter()
    project = fresh(project)
    push_round(project.store, client, rnd.id)
    transition(project.store, rnd.id, PUSHED)
    times["push"] = time.perf_counter() - t
    return rnd.id, times


def annotate(project: Project, client: LSClient, users: list[int], round_id: int) -> int:
    from alearn.store import Selection

    rng = np.random.default_rng(round_id)
    n = 0
    with project.store.session() as s:
        tasks = [(sel.ls_task_id, sel.item_id) for sel in
                 s.query(Selection).filter_by(round_id=round_id)]
    for task_id, item_id in tasks:
        for user in users:
            true = project.truth[item_id]  # type: ignore[attr-defined]
            label = true if rng.random() < 0.9 else CLASSES[int(rng.integers(len(CLASSES)))]
            client.create_annotation(task_id, choice_result(label), completed_by=user,
                                     lead_time=3.0)
            n += 1
    return n


def bench_pool(n: int, args: argparse.Namespace, client: LSClient, users: list[int],
               workdir: Path) -> dict:
    t0 = time.perf_counter()
    project = make_project(workdir, n, args.labels, args.batch_size, args.seed)
    setup_s = time.perf_counter() - t0
    # the local server serves only links to image roots: one for this pool
    served = local_document_root(workdir / "ls")
    assert served is not None
    (served / project.image_root.name).symlink_to(project.image_root.resolve())
    ensure_project(project.store, client, project.config, project.image_root,
                   document_root=served)
    round_id, _ = plan_and_push(project, client)
    n_ann = annotate(project, client, users, round_id)
    # --- the timed turnaround starts at the last annotation ---
    phases: dict[str, float] = {}
    t = time.perf_counter()
    pull = pull_annotations(fresh(project).store, client, classes=CLASSES)
    phases["pull"] = time.perf_counter() - t
    t = time.perf_counter()
    metrics = close_round(fresh(project), round_id)
    phases["close"] = time.perf_counter() - t
    _, times = plan_and_push(project, client)
    phases.update(times)
    return {
        "pool": n, "dim": DIM, "trusted_labels_before": args.labels,
        "batch_size": args.batch_size, "overlap": 3, "annotations": n_ann,
        "pulled_new": pull.new, "consensus": metrics.consensus,
        "seconds": {k: round(v, 3) for k, v in phases.items()},
        "turnaround_s": round(sum(phases.values()), 3),
        "setup_s": round(setup_s, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pools", default="10000,100000")
    p.add_argument("--labels", type=int, default=500, help="trusted labels before the round")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--through-workers", action="store_true",
                   help="time the real path instead: webhook -> RQ workers -> Label Studio "
                        "(scripts/_through_workers.py)")
    p.add_argument("--workers", type=int, default=2, help="--through-workers: worker processes")
    p.add_argument("--rounds", type=int, default=2, help="--through-workers: timed turnarounds")
    args = p.parse_args(argv)
    if args.through_workers:
        from _through_workers import run

        return run(args, make_project)
    with tempfile.TemporaryDirectory(prefix="alearn-bench-round-") as tmp, \
            threadpool_limits(1, user_api="blas"):
        work = Path(tmp)
        data = work / "ls"
        (work / "pool").mkdir()
        port = free_port()
        creds = admin_credentials(data)
        info = start_server(data, image_root=work / "pool", username=creds["email"],
                            password=creds["password"], token=creds["token"], port=port)
        try:
            client = LSClient(info.url, creds["token"])
            sdk = LabelStudio(base_url=info.url, api_key=creds["token"])
            users = [int(sdk.users.create(email=f"bench{i}@example.com",
                                          username=f"bench{i}").id) for i in range(3)]
            results = [bench_pool(int(n), args, client, users, work)
                       for n in args.pools.split(",")]
        finally:
            stop_server(data)
    out = {"benchmark": "round_turnaround", "results": results,
           "goal": "turnaround under 5 s at 100k cached items"}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
