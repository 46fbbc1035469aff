"""Benchmark consensus methods on simulated annotators of mixed quality.

The panel: five annotators with accuracies 0.95, 0.9, 0.8 and 0.65, plus one that answers
at random. The 0.8 and 0.65 annotators share a bias: when they get an item of class 0 or
1 wrong, they usually (80%) answer the other class of that pair, as people confuse two
similar classes; their other errors, and everyone else's, are uniform over the wrong
classes. Truth is uniform over the classes; each item is labelled by ``--per-item``
annotators drawn from the panel without replacement.

Printed JSON (one object): accuracy against the truth and seconds for
  - majority vote (alearn), with ties broken at random (seeded) and, separately, with
    ties counted as wrong;
  - alearn's Dawid-Skene;
  - crowd-kit's DawidSkene (defaults: n_iter=100, tol=1e-5) as a reference peer.
Seconds are the best of ``--repeats`` runs of the aggregation call alone (the matrix for
alearn, the (task, worker, label) DataFrame for crowd-kit, built outside the timer), on
one thread.

crowd-kit is never a dependency of alearn. It runs in its own virtual environment, in a
child process fed the same votes through a temporary .npz file::

    python3 -m venv /tmp/ckvenv && /tmp/ckvenv/bin/pip install crowd-kit==1.4.2
    .venv/bin/python scripts/bench_consensus.py --crowdkit-python /tmp/ckvenv/bin/python

Without ``--crowdkit-python`` crowd-kit is imported in-process if it is installed there;
otherwise its figures are null and a note says how to install it.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from alearn.stats.consensus import dawid_skene, majority_vote  # noqa: E402

PANEL = [0.95, 0.9, 0.8, 0.65, None]  # None answers uniformly at random
BIASED = [False, False, True, True, False]
BIAS_SHARE = 0.8

CROWDKIT_CHILD = r"""
import json, sys, time
import numpy as np, pandas as pd
import crowdkit
from crowdkit.aggregation import DawidSkene
data = np.load(sys.argv[1])
R, repeats = data["R"], int(sys.argv[2])
task, worker = np.nonzero(R >= 0)
df = pd.DataFrame({"task": task, "worker": worker, "label": R[task, worker]})
best = float("inf")
for _ in range(repeats):
    t0 = time.perf_counter()
    pred = DawidSkene(n_iter=100, tol=1e-5).fit_predict(df)
    best = min(best, time.perf_counter() - t0)
labels = np.full(R.shape[0], -1)
labels[pred.index.to_numpy()] = pred.to_numpy()
np.save(sys.argv[3], labels)
print(json.dumps({"seconds": best, "version": crowdkit.__version__}))
"""


def simulate(n_items: int, n_classes: int, per_item: int, seed: int):
    """Return (R, truth): R of shape (n_items, 5) with -1 where not asked."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, n_classes, n_items)
    R = np.full((n_items, len(PANEL)), -1, dtype=np.int64)
    chosen = np.argsort(rng.random((n_items, len(PANEL))), axis=1)[:, :per_item]
    rows = np.arange(n_items)
    for slot in range(per_item):
        who = chosen[:, slot]
        acc = np.array([1.0 if p is None else p for p in PANEL])[who]
        wrong = (truth + rng.integers(1, n_classes, n_items)) % n_classes
        pair = (truth < 2) & np.array(BIASED)[who] & (rng.random(n_items) < BIAS_SHARE)
        wrong = np.where(pair, 1 - truth, wrong)
        label = np.where(rng.random(n_items) < acc, truth, wrong)
        is_random = np.array([p is None for p in PANEL])[who]
        label = np.where(is_random, rng.integers(0, n_classes, n_items), label)
        R[rows, who] = label
    return R, truth


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def run_crowdkit(R: np.ndarray, repeats: int, python: str | None):
    """(labels, seconds, note) from crowd-kit, or (None, None, note)."""
    if python is None:
        try:
            import crowdkit  # noqa: F401
        except ImportError:
            return None, None, ("crowd-kit not installed: python3 -m venv /tmp/ckvenv && "
                                "/tmp/ckvenv/bin/pip install crowd-kit==1.4.2, then pass "
                                "--crowdkit-python /tmp/ckvenv/bin/python")
        python = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "votes.npz", R=R)
        out = Path(tmp) / "labels.npy"
        proc = subprocess.run(
            [python, "-c", CROWDKIT_CHILD, str(Path(tmp) / "votes.npz"), str(repeats), str(out)],
            capture_output=True, text=True, env={**os.environ}, check=False,
        )
        if proc.returncode != 0:
            return None, None, f"crowd-kit run failed: {proc.stderr.strip()[-500:]}"
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        return np.load(out), info["seconds"], f"crowd-kit {info['version']}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--per-item", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="timing: best of this many runs")
    ap.add_argument("--crowdkit-python", default=None,
                    help="python of a venv with crowd-kit (it runs in a child process)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    if not 1 <= args.per_item <= len(PANEL) or args.classes < 2 or args.items < 1:
        ap.error(f"need 1 <= --per-item <= {len(PANEL)}, --classes >= 2 and --items >= 1")

    R, truth = simulate(args.items, args.classes, args.per_item, args.seed)
    k = args.classes
    mv, mv_s = timed(lambda: majority_vote(R, n_classes=k, tie_policy="adjudicate"),
                     args.repeats)
    tie = mv.status == "tie"
    rng = np.random.default_rng(args.seed + 1)
    broken = mv.labels.copy()
    for i in np.flatnonzero(tie):  # ties broken uniformly among the tied classes
        top = np.flatnonzero(mv.votes[i] == mv.votes[i].max())
        broken[i] = rng.choice(top)
    ds, ds_s = timed(lambda: dawid_skene(R, n_classes=k, tie_policy="first"), args.repeats)
    ck_labels, ck_s, ck_note = run_crowdkit(R, args.repeats, args.crowdkit_python)

    ds_acc = float(np.mean(ds.labels == truth))
    ck_acc = None if ck_labels is None else float(np.mean(ck_labels == truth))
    result = {
        "command": " ".join(["python", *sys.argv]) if argv is None else None,
        "numpy": np.__version__,
        "items": args.items, "classes": k, "per_item": args.per_item, "seed": args.seed,
        "panel": [{"accuracy": "random" if p is None else p, "biased_0_1": b}
                  for p, b in zip(PANEL, BIASED, strict=True)],
        "majority_vote": {
            "accuracy_ties_random": float(np.mean(broken == truth)),
            "accuracy_ties_wrong": float(np.mean(np.where(tie, False, mv.labels == truth))),
            "tie_rate": float(tie.mean()), "seconds": mv_s,
        },
        "alearn_dawid_skene": {"accuracy": ds_acc, "seconds": ds_s, "n_iter": ds.n_iter,
                               "converged": ds.converged},
        "crowdkit_dawid_skene": {"accuracy": ck_acc, "seconds": ck_s, "note": ck_note},
        "checks": {
            "ds_beats_majority": ds_acc > float(np.mean(broken == truth)),
            "ds_within_0.5pp_of_crowdkit_or_better":
                None if ck_acc is None else ds_acc >= ck_acc - 0.005,
            "ds_not_slower_than_crowdkit": None if ck_s is None else ds_s <= ck_s,
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
