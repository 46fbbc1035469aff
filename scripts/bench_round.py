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

Each phase opens the project afresh, as a worker job does; the pool's memory map, item
map and projection stay open in this long-lived process (a warm worker), keyed by the
feature cache's version. Each phase reports its seconds and its peak RSS (VmHWM reset
before it). ``scale`` adds the scoring read rate against a plain numpy read of the same
cache file, and the select of a cold process next to the warm one (scripts/_scale.py).
Prints JSON. Queue latency between jobs is not included here; ``--through-workers``
times the real path (scripts/_through_workers.py).

    .venv/bin/python scripts/bench_round.py --pools 10000,100000
    nice .venv/bin/python scripts/bench_round.py --pools 10000,100000,1000000 --no-ls

``--no-ls`` skips Label Studio (push, annotations, pull and close, which do not grow with
the pool): the round's items get their true labels directly, and train and select are
timed.
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
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402
from _scale import cold_select, measured, read_rates  # noqa: E402
from label_studio_sdk import LabelStudio  # noqa: E402

from alearn.config import EmbedConfig, Settings  # noqa: E402
from alearn.features.backbone import cache_key_for  # noqa: E402
from alearn.features.cache import FeatureCache  # noqa: E402
from alearn.model.training import train_head  # noqa: E402
from alearn.project import Project  # noqa: E402
from alearn.query.selection import plan_batch  # noqa: E402
from alearn.rounds.close import close_round  # noqa: E402
from alearn.rounds.lifecycle import (  # noqa: E402
    CLOSED,
    PUSHED,
    create_round,
    transition,
)
from alearn.rounds.plan_record import record_plan  # noqa: E402
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
PIECE = 65536


class _Truth:
    """item id -> true class, backed by an array (a dict of a million entries is slow)."""

    def __init__(self, y: np.ndarray) -> None:
        self.y = y

    def __getitem__(self, item_id: int) -> str:
        return CLASSES[int(self.y[int(item_id) - 1])]


def make_project(workdir: Path, n: int, n_labels: int, batch: int, seed: int) -> Project:
    """A project with ``n`` items whose synthetic embeddings are in the real feature cache
    (written in pieces of at most 65,536 rows, so a million fits in memory, then
    compacted as the cache compacts itself) and ``n_labels`` trusted labels."""
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
    cache = FeatureCache(project.features_dir, cache_key_for(project.config.embed,
                                                            root=project.root))
    for a in range(0, n, PIECE):
        b = min(a + PIECE, n)
        X = rng.standard_normal(size=(b - a, DIM), dtype=np.float32)
        X += centers[y[a:b]] * 0.5
        shas = [hashlib.sha256(f"{seed}:{i}".encode()).hexdigest() for i in range(a, b)]
        cache.put(shas, X)
        del X
        with project.store.session() as s:
            s.execute(insert(Item), [{"sha256": h, "path": f"img/{i:07d}.png", "width": 96,
                                      "height": 96, "extra": {}}
                                     for i, h in zip(range(a, b), shas, strict=True)])
    cache.compact()  # one base: what the cache looks like once its merges caught up
    with project.store.session() as s:
        s.execute(insert(Label), [{"item_id": i + 1, "label": CLASSES[int(y[i])],
                                   "origin": "manifest", "is_gold": False,
                                   "confidence": 1.0} for i in range(n_labels)])
    project.truth = _Truth(y)  # type: ignore[attr-defined]
    return project


def fresh(project: Project) -> Project:
    """A new Project object, as each worker job opens one: nothing is shared in memory."""
    return Project.open(project.root, Settings())


def plan_and_push(project: Project, client: LSClient | None) -> tuple[int, dict, str | None]:
    """train, select (recorded), push: ({phase: (seconds, peak RSS MB)}, model version).
    Without ``client`` (``--no-ls``) there is no push."""
    times: dict[str, tuple[float, float | None]] = {}
    record, sec, rss = measured(lambda: train_head(fresh(project)))
    times["train"] = (sec, rss)
    version = record.version if record else None

    def select() -> int:
        p = fresh(project)
        rnd = create_round(p.store, strategy="margin", batch_size=p.config.rounds.batch_size,
                           overlap=3)
        # as the select job does: score with the version the train job returned
        record_plan(p.store, rnd.id, plan_batch(p, batch_size=rnd.batch_size,
                                                strategy="margin", model_version=version))
        return rnd.id

    round_id, sec, rss = measured(select)
    times["select"] = (sec, rss)
    if client is not None:
        def push() -> None:
            p = fresh(project)
            push_round(p.store, client, round_id)
            transition(p.store, round_id, PUSHED)

        _, sec, rss = measured(push)
        times["push"] = (sec, rss)
    return round_id, times, version


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


def bench_pool(n: int, args: argparse.Namespace, client: LSClient | None, users: list[int],
               workdir: Path) -> dict:
    t0 = time.perf_counter()
    project = make_project(workdir, n, args.labels, args.batch_size, args.seed)
    setup_s = time.perf_counter() - t0
    phases: dict[str, tuple[float, float | None]] = {}
    if client is not None:
        # the local server serves only links to image roots: one for this pool
        served = local_document_root(workdir / "ls")
        assert served is not None
        (served / project.image_root.name).symlink_to(project.image_root.resolve())
        ensure_project(project.store, client, project.config, project.image_root,
                       document_root=served)
    round_id, _, _ = plan_and_push(project, client)
    n_ann, pulled, consensus = 0, None, None
    if client is not None:
        n_ann = annotate(project, client, users, round_id)
        # --- the timed turnaround starts at the last annotation ---
        pull, sec, rss = measured(lambda: pull_annotations(fresh(project).store, client,
                                                           classes=CLASSES))
        phases["pull"], pulled = (sec, rss), pull.new
        metrics, sec, rss = measured(lambda: close_round(fresh(project), round_id))
        phases["close"], consensus = (sec, rss), metrics.consensus
    else:  # no votes to pull: the round's items get their true labels, as close would
        _label_round(project, round_id)
    _, times, version = plan_and_push(project, client)
    phases.update(times)
    out = {
        "pool": n, "dim": DIM, "trusted_labels_before": args.labels,
        "batch_size": args.batch_size, "overlap": 3, "annotations": n_ann,
        "label_studio": client is not None, "pulled_new": pulled, "consensus": consensus,
        "seconds": {k: round(v[0], 3) for k, v in phases.items()},
        "peak_rss_mb": {k: v[1] for k, v in phases.items()},
        "turnaround_s": round(sum(v[0] for v in phases.values()), 3),
        "setup_s": round(setup_s, 1),
    }
    if version is not None and not args.no_scale:
        out["scale"] = scale_figures(project, version, args.batch_size)
    return out


def _label_round(project: Project, round_id: int) -> None:
    from alearn.store import Selection

    with project.store.session() as s:
        items = [sel.item_id for sel in s.query(Selection).filter_by(round_id=round_id)]
        s.execute(insert(Label), [{"item_id": i, "label": project.truth[i],  # type: ignore
                                   "origin": "consensus", "is_gold": False,
                                   "confidence": 1.0} for i in items])
    transition(project.store, round_id, PUSHED)  # so that the next round may start
    transition(project.store, round_id, CLOSED)


def scale_figures(project: Project, version: str, batch: int) -> dict:
    """Read rates, and the warm select next to cold ones (nothing recorded)."""
    rates = read_rates(fresh(project), version)
    plan, warm_s, warm_rss = measured(lambda: plan_batch(
        fresh(project), batch_size=batch, strategy="margin", model_version=version))
    ids = [it.item_id for it in plan.items]
    return {
        "read": rates,
        "select_warm_in_process": {"seconds": round(warm_s, 3), "peak_rss_mb": warm_rss},
        "select_fresh_process": cold_select(project, version, batch, ids, evict=False),
        "select_fresh_process_page_cache_evicted": cold_select(project, version, batch, ids,
                                                               evict=True),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pools", default="10000,100000")
    p.add_argument("--labels", type=int, default=500, help="trusted labels before the round")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ls", action="store_true",
                   help="direct calls without Label Studio: time train and select only "
                        "(no push, annotations, pull or close), for the scale figures")
    p.add_argument("--no-scale", action="store_true",
                   help="skip the read-rate and cold-select figures")
    p.add_argument("--through-workers", action="store_true",
                   help="time the real path instead: webhook -> RQ workers -> Label Studio "
                        "(scripts/_through_workers.py)")
    p.add_argument("--workers", type=int, default=2, help="--through-workers: worker processes")
    p.add_argument("--rounds", type=int, default=2, help="--through-workers: timed turnarounds")
    p.add_argument("--consensus", default=None,
                   help="--through-workers: agreement.consensus (default: the config's)")
    args = p.parse_args(argv)
    if args.through_workers:
        from _through_workers import run

        return run(args, make_project)
    torch.set_num_threads(1)  # one core, as the numpy read it is compared with
    with tempfile.TemporaryDirectory(prefix="alearn-bench-round-") as tmp, \
            threadpool_limits(1, user_api="blas"):
        work = Path(tmp)
        (work / "pool").mkdir()
        if args.no_ls:
            results = [bench_pool(int(n), args, None, [], work) for n in args.pools.split(",")]
        else:
            results = with_label_studio(work, args)
    out = {"benchmark": "round_turnaround", "results": results,
           "goal": "turnaround under 5 s at 100k cached items; at 1M: scoring read rate "
                   ">= 0.5x a plain numpy read of the same cache file, peak RSS < 3 GB"}
    print(json.dumps(out, indent=2))
    return out


def with_label_studio(work: Path, args: argparse.Namespace) -> list[dict]:
    data = work / "ls"
    creds = admin_credentials(data)
    info = start_server(data, image_root=work / "pool", username=creds["email"],
                        password=creds["password"], token=creds["token"], port=free_port())
    try:
        client = LSClient(info.url, creds["token"])
        sdk = LabelStudio(base_url=info.url, api_key=creds["token"])
        users = [int(sdk.users.create(email=f"bench{i}@example.com",
                                      username=f"bench{i}").id) for i in range(3)]
        return [bench_pool(int(n), args, client, users, work) for n in args.pools.split(",")]
    finally:
        stop_server(data)


if __name__ == "__main__":
    main()
