"""Coverage of the pool (the report's section): time and peak memory against pool size,
and whether the pockets it finds are the part of the pool no trusted label covers.

For each pool size, a project with that many cached items (synthetic embeddings: 10
Gaussian classes in 1280 dimensions, stored in the real feature cache, compacted) and
``--labels`` trusted labels drawn from 9 of the 10 classes: the tenth class is what the
labels do not cover. ``alearn.report.coverage.coverage`` runs once, timed, with its peak
RSS (VmHWM reset before it, scripts/_scale.py) and how much that peak exceeds the
resident memory just before the call (that counts the pages of the memory-mapped cache
file it touched), and the peak of what it allocates (tracemalloc, a second untimed call).
Reported: seconds, peak RSS, the clusters
and pockets, the share of the held-out class that lies in the pockets (recall) and the
share of the listed pockets (weighted by their size) that is of the held-out class
(precision). scikit-learn is imported before the clock starts, as the report has it.

    nice .venv/bin/python scripts/bench_coverage.py --pools 20000,200000

``--dataset digits`` or ``--dataset fashion-mnist``: real images embedded by the
product's default backbone; each class is held out in turn (no trusted label) while
``--per-class`` items of every other class are trusted, and recall and precision are
exact, from every clustered item's cluster.

    nice .venv/bin/python scripts/bench_coverage.py --dataset digits --n 1500
    nice .venv/bin/python scripts/bench_coverage.py --dataset fashion-mnist --n 1500
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
from sqlalchemy import insert

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import sklearn.cluster  # noqa: E402, F401  (imported before the clock starts, as in a report)
import sklearn.decomposition  # noqa: E402, F401
from _scale import _status, measured  # noqa: E402

from alearn.config import EmbedConfig, Settings  # noqa: E402
from alearn.features.backbone import cache_key_for  # noqa: E402
from alearn.features.cache import FeatureCache  # noqa: E402
from alearn.project import Project  # noqa: E402
from alearn.report.coverage import coverage  # noqa: E402
from alearn.store import Item, Label  # noqa: E402

CLASSES = [f"c{i}" for i in range(10)]
DIM = 1280
PIECE = 65_536
HELD_OUT = 9  # no trusted label of this class


def make_project(workdir: Path, n: int, n_labels: int, seed: int) -> tuple[Project, np.ndarray]:
    images = workdir / f"images{n}"
    images.mkdir(parents=True)
    project = Project.init(workdir / f"proj{n}", classes=CLASSES, images=images,
                           settings=Settings())
    project.config.embed = EmbedConfig(backbone="tf_efficientnet_lite0", weights="none",
                                       image_size=96)
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
    cache.compact()
    labeled = [i for i in range(n) if y[i] != HELD_OUT][:n_labels]
    with project.store.session() as s:
        s.execute(insert(Label), [{"item_id": i + 1, "label": CLASSES[int(y[i])],
                                   "origin": "manifest", "is_gold": False,
                                   "confidence": 1.0} for i in labeled])
    return project, y


def bench_pool(n: int, args: argparse.Namespace, work: Path) -> dict:
    project, y = make_project(work, n, args.labels, args.seed)
    before = _status("VmRSS")
    cov, seconds, peak = measured(lambda: coverage(project))
    tracemalloc.start()  # a second, untimed call: the peak of what it allocates
    again = coverage(project)
    heap = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert again == cov
    held = float(np.mean(y == HELD_OUT))
    # each listed pocket weighted by its share of the pool, judged by its listed items
    weights = [p["share"] for p in cov["pockets"]]
    purity = [float(np.mean([y[i["item_id"] - 1] == HELD_OUT for i in p["items"]]))
              for p in cov["pockets"]]
    project.store.dispose()
    return {
        "pool": n, "seconds": round(seconds, 2), "peak_rss_mb": peak,
        # what the call added on top of the process's resident memory before it (this
        # counts the pages of the memory-mapped cache file it touched)
        "peak_increase_mb": None if peak is None or before is None
        else round(peak - before / 2**20, 1),
        # the peak of the memory the call allocates (Python and numpy, tracemalloc)
        "allocated_peak_mb": round(heap / 2**20, 1),
        "sampled": cov["sampled"], "clusters": cov["n_clusters"],
        "uncovered_clusters": cov["uncovered"],
        "uncovered_share": round(cov["uncovered_share"], 4),
        "held_out_share": round(held, 4),
        # the held-out class's share of the pool that the pockets hold (pockets are
        # estimated from the sample, so this can slightly exceed 1)
        "recall": round(cov["uncovered_share"] / held, 3) if held else None,
        # of the listed pockets' share of the pool, the part that is the held-out class
        # (estimated from each pocket's listed items)
        "precision": round(float(np.average(purity, weights=weights)), 3) if weights else None,
        "listed_pockets": len(cov["pockets"]),
        "largest_pockets_held_out": [round(x, 2) for x in purity[:6]],
    }


def dataset_runs(args: argparse.Namespace, work: Path) -> dict:
    """Real images: ``--dataset`` embedded by the product's backbone (the configured
    default, tf_efficientnet_lite0 with offline weights) into a project's feature cache;
    each class held out in turn, ``--per-class`` trusted labels of every other class."""
    import torch
    from _datasets import load_split

    from alearn.features.backbone import embed_pil, load_backbone

    split = load_split(args.dataset, n_pool=args.n, n_test=0, seed=args.seed)
    k = len(split.classes)
    (work / "no-images").mkdir()  # the images stay in memory; only features are stored
    project = Project.init(work / "real", classes=list(split.classes),
                           images=work / "no-images", settings=Settings())
    torch.set_num_threads(2)
    X = embed_pil(load_backbone(project.config.embed, root=project.root),
                  split.pool_images, batch_size=32, progress=False)
    shas = [hashlib.sha256(f"{args.dataset}:{i}".encode()).hexdigest() for i in range(len(X))]
    FeatureCache(project.features_dir, cache_key_for(project.config.embed,
                                                    root=project.root)).put(shas, X)
    with project.store.session() as s:
        s.execute(insert(Item), [{"sha256": h, "path": f"{i:05d}.png", "width": 28,
                                  "height": 28, "extra": {}} for i, h in enumerate(shas)])
    y = split.pool_labels
    runs = []
    for held in range(k):
        with project.store.session() as s:
            s.query(Label).delete()
            s.execute(insert(Label), [
                {"item_id": int(i) + 1, "label": split.classes[c], "origin": "manifest",
                 "is_gold": False, "confidence": 1.0}
                for c in range(k) if c != held
                for i in np.flatnonzero(y == c)[:args.per_class]])
        cov, seconds, _ = measured(lambda: coverage(project, members=True))
        runs.append({"held_out": split.classes[held], "seconds": round(seconds, 2),
                     **_exact(cov, y, held)})
    project.store.dispose()
    # precision only where a pocket was found (it is undefined where none was)
    found = [r["precision"] for r in runs if r["precision"] is not None]
    mean = {"recall": round(float(np.mean([r["recall"] for r in runs])), 3),
            "precision": round(float(np.mean(found)), 3) if found else None,
            "runs_with_pockets": len(found)}
    return {"dataset": args.dataset, "images": len(X), "dim": int(X.shape[1]),
            "per_class": args.per_class, "clusters": cov["n_clusters"], "mean": mean,
            "runs": runs}


def _exact(cov: dict, y: np.ndarray, held: int) -> dict:
    """From every clustered item's cluster: the held-out class's sampled items that lie in
    uncovered clusters (recall), and the uncovered clusters' items that are of it
    (precision)."""
    empty = {c["cluster"] for c in cov["clusters"] if not c["trusted"]}
    ids = np.asarray(cov["members"]["item_ids"])
    inside = np.isin(np.asarray(cov["members"]["clusters"]), list(empty))
    is_held = y[ids - 1] == held
    return {"uncovered_clusters": len(empty),
            "recall": round(float(inside[is_held].mean()), 3) if is_held.any() else 0.0,
            "precision": round(float(is_held[inside].mean()), 3) if inside.any() else None}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", default="20000,200000")
    parser.add_argument("--labels", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", help="real images instead of synthetic pools: "
                        "digits or fashion-mnist (scripts/_datasets.py)")
    parser.add_argument("--n", type=int, default=1500, help="images of --dataset")
    parser.add_argument("--per-class", type=int, default=30,
                        help="trusted labels per class not held out (--dataset)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-coverage-") as tmp:
        if args.dataset:
            out = {"benchmark": "coverage", **dataset_runs(args, Path(tmp))}
            print(json.dumps(out, indent=2))
            return out
        results = [bench_pool(int(n), args, Path(tmp)) for n in args.pools.split(",")]
    out = {"benchmark": "coverage", "dim": DIM, "classes": len(CLASSES),
           "labels": args.labels, "pools": results}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
