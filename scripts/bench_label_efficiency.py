#!/usr/bin/env python
"""Label efficiency: how many labels each strategy needs to reach a target accuracy.

The round loop of alearn (select -> label -> retrain) with a simulated oracle that
returns the true label, scored on a held-out test set. The head, the strategies and
the 'auto' schedule are alearn's own (``select_from_pool``, ``choose_strategy``,
``EmbeddingClassifier`` with the project defaults), on embeddings from
``alearn.features.backbone`` (cached under ``--cache-dir``, so reruns skip embedding).

Fair start: for a given seed every strategy starts from the same place.
- ``auto`` starts from zero labels: its cold-start strategy picks the first batches
  until every class has ``min_labels_per_class`` labels (every pick is counted).
- Every other strategy, and the modAL peer baseline, starts from one batch of
  ``--batch-size`` uniformly random pool items drawn with that seed (the same items
  for all of them); those labels are counted too.

The peer baseline ``modal_uncertainty`` is a plain modAL ``ActiveLearner`` with
``uncertainty_sampling`` on the same head and features; a fresh learner is built each
round from the labels so far (``ActiveLearner.teach`` fails with scikit-learn >= 1.8).

The unlabeled pool in the head: each strategy in ``--spread-strategies`` also runs as
``<strategy>+spread`` with ``head.unlabeled = "spread"`` (label spreading over a
nearest-neighbour graph of the pool, :mod:`alearn.model.semi_supervised`); every other
configuration uses ``head.unlabeled = "none"``. ``random`` (plain head) stays the
baseline every ratio is taken against.

Two measures: accuracy, and balanced accuracy (macro-averaged recall), each with its
own target (``--target`` x the full-pool head's figure). ``--long-tail R`` makes the
pool and the test set long-tailed: class ``c`` (of ``k``) keeps a share
``R ** (-c / (k - 1))`` of its items, so the largest class has ``R`` times the
smallest's.

Output (JSON on stdout): ``full_accuracy`` and ``full_balanced_accuracy`` (the head
trained on the whole labeled pool), the targets, and per configuration the curves per
seed, ``labels_to_target`` and ``balanced_labels_to_target`` per seed (the first labels
count whose figure reaches its target; null if the budget ran out), their medians, and
``ratio_vs_random`` / ``balanced_ratio_vs_random`` (those medians over random's).

Example::

    python scripts/bench_label_efficiency.py --dataset fashion-mnist --pool 10000 \\
        --test 2000 --batch-size 20 --seeds 3 --out result.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _datasets import load_split  # noqa: E402

from alearn.config import EmbedConfig, HeadConfig, RoundsConfig  # noqa: E402
from alearn.model.head import EmbeddingClassifier  # noqa: E402
from alearn.model.training import head_from_settings  # noqa: E402
from alearn.query.selection import resolve_strategy, select_from_pool  # noqa: E402
from alearn.query.strategies import STRATEGIES, choose_strategy  # noqa: E402

log = logging.getLogger("bench")
DEFAULT_STRATEGIES = "auto,random,margin,least_confident,entropy,ranked_batch"
MODAL = "modal_uncertainty"
SPREAD = "+spread"


def embed_split(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Pool/test embeddings and labels, from the cache or computed once.

    A missing cache is filled by a spawned child process: the benchmarks fork their
    workers after this, and a child forked from a process whose torch has run its
    OpenMP threads can hang in its first parallel region.
    """
    import multiprocessing

    path = _embeddings_path(args)
    if not path.is_file():
        child = multiprocessing.get_context("spawn").Process(
            target=_embed_to, args=(args, path), name="embed")
        child.start()
        child.join()
        if child.exitcode != 0 or not path.is_file():
            raise SystemExit(f"embedding the {args.dataset} split failed (exit code "
                             f"{child.exitcode}); see the messages above.")
    log.info("embeddings from %s", path)
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _embed_config(args: argparse.Namespace) -> tuple[EmbedConfig, str]:
    """The backbone settings of ``args`` and their feature-cache key."""
    from alearn.features.backbone import cache_key_for

    cfg = EmbedConfig(backbone=args.backbone, image_size=args.image_size, weights=args.weights)
    return cfg, cache_key_for(cfg)


def _embeddings_path(args: argparse.Namespace) -> Path:
    key = hashlib.sha1(
        f"{args.dataset}|{args.pool}|{args.test}|{args.split_seed}|{_embed_config(args)[1]}"
        .encode()).hexdigest()[:16]
    return Path(args.cache_dir).expanduser() / f"{key}.npz"


def _embed_to(args: argparse.Namespace, path: Path) -> None:
    """Embed the split and write it to ``path`` (in a child process: see embed_split)."""
    import torch

    from alearn.features.backbone import embed_pil, load_backbone

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        stream=sys.stderr)
    cfg, fkey = _embed_config(args)
    split = load_split(args.dataset, n_pool=args.pool, n_test=args.test, seed=args.split_seed)
    torch.set_num_threads(args.torch_threads)
    backbone = load_backbone(cfg)
    t0 = time.perf_counter()
    Xp = embed_pil(backbone, split.pool_images, batch_size=32, progress=True)
    Xt = embed_pil(backbone, split.test_images, batch_size=32, progress=True)
    dt = time.perf_counter() - t0
    log.info("embedded %d images in %.0f s (%.0f img/s)", len(Xp) + len(Xt), dt,
             (len(Xp) + len(Xt)) / dt)
    data = {"Xp": Xp, "yp": split.pool_labels, "Xt": Xt, "yt": split.test_labels,
            "classes": np.array(split.classes), "feature_key": np.array(fkey)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **data)
    tmp.replace(path)


def long_tail(d: dict[str, np.ndarray], ratio: float) -> dict[str, np.ndarray]:
    """Pool and test subsets where class c of k keeps ``ratio ** (-c / (k - 1))`` of its
    items (the first ones, which are a random draw already); ratio 1 changes nothing."""
    if ratio == 1:
        return d
    k = len(d["classes"])
    out = dict(d)
    for X, y in (("Xp", "yp"), ("Xt", "yt")):
        keep = np.zeros(len(d[y]), dtype=bool)
        for c in range(k):
            members = np.flatnonzero(d[y] == c)
            n = max(1, round(len(members) * ratio ** (-c / (k - 1))))
            keep[members[:n]] = True
        out[X], out[y] = d[X][keep], d[y][keep]
    return out


def make_head(head_cfg: HeadConfig, Xp: np.ndarray) -> EmbeddingClassifier:
    """The product's head, standardised with the pool's statistics (and given the pool as
    its unlabeled sample), as a project makes it."""
    stats = (Xp.mean(axis=0, dtype=np.float64), Xp.std(axis=0, dtype=np.float64))
    return head_from_settings(head_cfg, stats, Xp if head_cfg.unlabeled != "none" else None)


def scores(head: EmbeddingClassifier, X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, balanced accuracy) of ``head`` on ``X``, ``y``."""
    pred = head.predict(X)
    return float(np.mean(pred == y)), float(balanced_accuracy_score(y, pred))


def run_loop(name: str, seed: int, d: dict[str, np.ndarray], args: argparse.Namespace,
             rounds_cfg: RoundsConfig, head_cfg: HeadConfig,
             targets: tuple[float, float]) -> list[tuple[int, float, float]]:
    """One select -> label -> retrain run; returns [(labels, accuracy, balanced), ...]."""
    if name.endswith(SPREAD):
        name, head_cfg = name[:-len(SPREAD)], head_cfg.model_copy(update={"unlabeled": "spread"})
    Xp, yp, Xt, yt = d["Xp"], d["yp"], d["Xt"], d["yt"]
    classes = [str(c) for c in d["classes"]]
    rng = np.random.default_rng(seed)
    n_pool = len(Xp)
    labeled = np.zeros(n_pool, dtype=bool)
    if name != "auto":  # the shared seed set: one random batch
        labeled[np.random.default_rng(seed).choice(n_pool, args.batch_size, replace=False)] = True
    curve: list[tuple[int, float, float]] = []
    while True:
        y_lab = yp[labeled]
        head = None
        if len(np.unique(y_lab)) >= 2:
            head = make_head(head_cfg, Xp).fit(Xp[labeled], y_lab)
            acc, bal = scores(head, Xt, yt)
        else:
            acc = float(np.mean(yt == y_lab[0])) if len(y_lab) else 0.0
            bal = 1.0 / len(classes) if len(y_lab) else 0.0
        n_lab = int(labeled.sum())
        curve.append((n_lab, acc, bal))
        reached = reached_both(curve, targets)
        if (reached and not args.full_curves) or n_lab >= args.budget:
            return curve
        if n_lab >= n_pool:
            return curve
        pool_idx = np.flatnonzero(~labeled)
        n = min(args.batch_size, args.budget - n_lab)
        if name == MODAL and head is not None:
            picks = _modal_query(make_head(head_cfg, Xp), Xp[labeled], y_lab, Xp[pool_idx], n)
        else:
            strategy = name
            if name == "auto":
                counts = Counter(classes[c] for c in y_lab.tolist())
                strategy = choose_strategy(rounds_cfg, counts, classes)
            elif name == MODAL:
                strategy = "random"
            strategy = resolve_strategy(strategy, has_head=head is not None,
                                        cold_start=rounds_cfg.cold_start_strategy)
            picks, _ = select_from_pool(strategy, n, X_pool=Xp[pool_idx], head=head,
                                        X_labeled=Xp[labeled], rng=rng)
        labeled[pool_idx[picks]] = True  # the oracle answers with the true labels


def _modal_query(head: EmbeddingClassifier, X_lab: np.ndarray, y_lab: np.ndarray,
                 X_pool: np.ndarray, n: int) -> np.ndarray:
    from modAL.models import ActiveLearner
    from modAL.uncertainty import uncertainty_sampling

    learner = ActiveLearner(estimator=head, query_strategy=uncertainty_sampling,
                            X_training=X_lab, y_training=y_lab)
    idx, _ = learner.query(X_pool, n_instances=n)
    return np.asarray(idx)


def labels_to_target(curve: list[tuple[int, float, float]], target: float,
                     measure: int = 1) -> int | None:
    """The first labels count whose figure (1: accuracy, 2: balanced) reaches ``target``."""
    return next((point[0] for point in curve if point[measure] >= target), None)


def reached_both(curve: list[tuple[int, float, float]], targets: tuple[float, float]) -> bool:
    return all(labels_to_target(curve, t, m) is not None
               for m, t in zip((1, 2), targets, strict=True))


def _median(values: list[int | None]) -> float | None:
    m = float(np.median([np.inf if v is None else v for v in values]))
    return None if np.isinf(m) else m


def _median_at(curves: dict[int, list[tuple[int, float, float]]], n: int,
               measure: int) -> float | None:
    """Median over seeds of the figure at the first point with ``n`` labels or more."""
    vals = [next((pt[measure] for pt in c if pt[0] >= n), None) for c in curves.values()]
    return None if None in vals else round(float(np.median(vals)), 4)


def _compact_json(data: dict) -> str:
    """Indented JSON with each list of numbers kept on one line."""
    text = json.dumps(data, indent=1)
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]",
                  lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist",
                   help="digits | fashion-mnist | imagefolder:PATH")
    p.add_argument("--pool", type=int, default=10000, help="Unlabeled pool size.")
    p.add_argument("--test", type=int, default=2000, help="Held-out test set size.")
    p.add_argument("--strategies", default=DEFAULT_STRATEGIES,
                   help=f"Comma-separated; 'auto' is the default schedule. {MODAL} (the modAL "
                        "peer baseline) is added unless --no-peer.")
    p.add_argument("--no-peer", action="store_true", help=f"Leave out {MODAL}.")
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--budget", type=int, default=2000, help="Most labels per run.")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--target", type=float, default=0.95, help="Fraction of full accuracy.")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--weights", default="auto", help="embed.weights (auto, offline, ...).")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--cache-dir", default="~/.cache/alearn-bench")
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--full-curves", action="store_true",
                   help="Keep labeling up to the budget after reaching the target.")
    p.add_argument("--cold-start", default=None, help="Override rounds.cold_start_strategy.")
    p.add_argument("--uncertainty", default=None, help="Override rounds.uncertainty_strategy.")
    p.add_argument("--min-labels", type=int, default=None,
                   help="Override rounds.min_labels_per_class.")
    p.add_argument("--C", type=float, default=None, help="Override head.C.")
    p.add_argument("--spread-strategies", default="auto,random",
                   help="Comma-separated strategies also run with head.unlabeled = 'spread' "
                        "(as '<strategy>+spread'); empty for none.")
    p.add_argument("--report-at", default="60,100,200",
                   help="Labels counts at which the summary gives the median (balanced) "
                        "accuracy over seeds.")
    p.add_argument("--long-tail", type=float, default=1.0,
                   help="Largest class / smallest class in pool and test (1: as drawn).")
    p.add_argument("--out", default=None, help="Also write the JSON here.")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    over = {k: v for k, v in [("cold_start_strategy", args.cold_start),
                              ("uncertainty_strategy", args.uncertainty),
                              ("min_labels_per_class", args.min_labels)] if v is not None}
    rounds_cfg = RoundsConfig(strategy="auto", **over)
    head_cfg = HeadConfig(**({"C": args.C} if args.C is not None else {}))
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    bad = [s for s in names if s != "auto" and s not in STRATEGIES]
    if bad:
        p.error(f"--strategies: unknown {bad}; valid: auto, {', '.join(sorted(STRATEGIES))}")
    spread = [s.strip() for s in args.spread_strategies.split(",") if s.strip()]
    bad = [s for s in spread if s != "auto" and s not in STRATEGIES]
    if bad:
        p.error(f"--spread-strategies: unknown {bad}")
    if args.long_tail < 1:
        p.error("--long-tail: the largest class over the smallest, 1 or more")
    head_cfg = head_cfg.model_copy(update={"unlabeled": "none"})
    if "random" not in names:
        names.append("random")
    names += ([] if args.no_peer else [MODAL]) + [s + SPREAD for s in spread]

    d = long_tail(embed_split(args), args.long_tail)
    with threadpool_limits(limits=1, user_api="blas"):
        full, full_bal = scores(make_head(head_cfg, d["Xp"]).fit(d["Xp"], d["yp"]),
                                d["Xt"], d["yt"])
        targets = (args.target * full, args.target * full_bal)
        log.info("full-pool accuracy %.4f (balanced %.4f), targets %.4f, %.4f",
                 full, full_bal, *targets)
        results: dict[str, dict] = {}
        for name in names:
            t0 = time.perf_counter()
            curves = {}
            for seed in range(args.seeds):
                curves[seed] = run_loop(name, seed, d, args, rounds_cfg, head_cfg, targets)
                log.info("%s seed %d: %s labels (balanced: %s)", name, seed,
                         labels_to_target(curves[seed], targets[0]),
                         labels_to_target(curves[seed], targets[1], 2))
            reach = [labels_to_target(c, targets[0]) for c in curves.values()]
            reach_bal = [labels_to_target(c, targets[1], 2) for c in curves.values()]
            results[name] = {
                "labels_to_target": reach,
                "median_labels_to_target": _median(reach),
                "balanced_labels_to_target": reach_bal,
                "median_balanced_labels_to_target": _median(reach_bal),
                "curves": {str(s): {"labels": [pt[0] for pt in c],
                                    "accuracy": [round(pt[1], 4) for pt in c],
                                    "balanced_accuracy": [round(pt[2], 4) for pt in c]}
                           for s, c in curves.items()},
                "seconds": round(time.perf_counter() - t0, 1),
                "at_labels": {n: [_median_at(curves, int(n), m) for m in (1, 2)]
                              for n in args.report_at.split(",") if n.strip()},
            }
    for prefix in ("", "balanced_"):
        rnd = results["random"][f"median_{prefix}labels_to_target"]
        for r in results.values():
            m = r[f"median_{prefix}labels_to_target"]
            r[f"{prefix}ratio_vs_random"] = None if m is None or not rnd else round(m / rnd, 3)
    out = {
        "command": " ".join(["python", "scripts/bench_label_efficiency.py",
                             *(argv or sys.argv[1:])]),
        "dataset": args.dataset, "pool": len(d["Xp"]), "test": len(d["Xt"]),
        "dim": int(d["Xp"].shape[1]), "feature_key": str(d["feature_key"]),
        "batch_size": args.batch_size, "budget": args.budget, "seeds": args.seeds,
        "head": head_cfg.model_dump(), "rounds": rounds_cfg.model_dump(
            include={"cold_start_strategy", "uncertainty_strategy", "min_labels_per_class"}),
        "long_tail": args.long_tail,
        "class_counts": {"pool": np.bincount(d["yp"]).tolist(),
                         "test": np.bincount(d["yt"]).tolist()},
        "full_accuracy": round(full, 4), "full_balanced_accuracy": round(full_bal, 4),
        "target": args.target, "target_accuracy": round(targets[0], 4),
        "target_balanced_accuracy": round(targets[1], 4),
        "default_head_unlabeled": HeadConfig().unlabeled,
        "summary": {k: {key: v[key] for key in (
            "median_labels_to_target", "ratio_vs_random",
            "median_balanced_labels_to_target", "balanced_ratio_vs_random", "at_labels")}
            for k, v in results.items()},
        "strategies": results,
    }
    text = _compact_json(out)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":
    main()
