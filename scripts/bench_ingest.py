#!/usr/bin/env python
"""Benchmark ``alearn ingest`` against a bare Pillow loop over the same files; print JSON.

Writes N small image files under a temporary folder (Fashion-MNIST training images from
the Debian package; each made distinct by its index written into its first three
pixels, 1,000 files per folder), then measures, in this order, in one run:

- ``bare_fps``: files/s of ``with Image.open(path) as im: im.load()`` over every file,
  one process (measured before and after the ingest runs; the mean is the reference);
- for each database (SQLite in the project, PostgreSQL in a throwaway database that is
  dropped afterwards) and each ``--workers`` count: ``ingest`` into a fresh, empty
  store: ``fps`` (files/s, wall clock, from the scan to the last commit),
  ``vs_bare`` = fps / bare_fps, ``per_worker_vs_bare`` = vs_bare / workers, and
  ``cpu_per_file_vs_bare`` (CPU seconds of this process and its worker processes per
  file, over the bare loop's: the cost per core, whatever the machine's load);
- ``reingest_s``, ``reingest_cpu_s``: ingest again over the unchanged tree (every file
  skipped unread), wall clock and CPU;
- ``scaling_N_vs_1``: fps with the most workers (N) over fps with one, per database;
- ``changes`` (last database only): after touching 1% of the files (same bytes, new
  modification time), overwriting 0.1% with other images and adding 0.1% new ones,
  the re-ingest's time and what it found (touched files hashed and kept, changed files
  refused, new files added).

    nice .venv/bin/python scripts/bench_ingest.py --files 200000

Needs PostgreSQL at ``--pg-url`` (default 127.0.0.1:5432, user postgres, trust auth);
``--databases sqlite`` skips it. Everything written is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _datasets import FASHION_DIR, read_idx  # noqa: E402

from alearn.config import Settings  # noqa: E402
from alearn.ingestion.driver import ingest  # noqa: E402
from alearn.project import Project  # noqa: E402

PER_FOLDER = 1000


def source_images() -> np.ndarray:
    path = FASHION_DIR / "train-images-idx3-ubyte.gz"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: install the Debian package dataset-fashion-mnist")
    return read_idx(path)


def image_for(pool: np.ndarray, i: int, salt: int = 0) -> Image.Image:
    """Image ``i``: a Fashion-MNIST image with ``i`` (and ``salt``) in its first pixels."""
    arr = pool[i % len(pool)].copy()
    arr.flat[:4] = (i & 255, (i >> 8) & 255, (i >> 16) & 255, salt)
    return Image.fromarray(arr)


def file_for(root: Path, i: int, suffix: str = ".png") -> Path:
    return root / f"{i // PER_FOLDER:05d}" / f"{i:08d}{suffix}"


def write_tree(root: Path, n: int, pool: np.ndarray) -> list[str]:
    for i in range(n):
        path = file_for(root, i)
        if i % PER_FOLDER == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        image_for(pool, i).save(path)
    return sorted(str(file_for(root, i)) for i in range(n))


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@contextmanager
def timed() -> Iterator[dict[str, float]]:
    out: dict[str, float] = {}
    wall, cpu = time.perf_counter(), cpu_seconds()
    yield out
    out["wall_s"] = time.perf_counter() - wall
    out["cpu_s"] = cpu_seconds() - cpu


def bare_loop(files: list[str]) -> dict[str, float]:
    with timed() as t:
        for f in files:
            with Image.open(f) as im:
                im.load()
    return {"fps": len(files) / t["wall_s"], "cpu_per_file_us": 1e6 * t["cpu_s"] / len(files)}


@contextmanager
def database(kind: str, where: Path, pg_url: str) -> Iterator[str]:
    """A fresh, empty database URL; a PostgreSQL one is dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{where / 'alearn.db'}"
        return
    from sqlalchemy import create_engine, text

    name = f"alearn_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield pg_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def timed_ingest(project: Project, workers: int, n: int, bare: dict[str, float],
                 ) -> dict[str, Any]:
    with timed() as t:
        s = ingest(project, workers=workers)
    fps = n / t["wall_s"]
    return {"workers": workers, "seconds": round(t["wall_s"], 2), "fps": round(fps, 1),
            "vs_bare": round(fps / bare["fps"], 3),
            "per_worker_vs_bare": round(fps / bare["fps"] / max(1, workers), 3),
            "cpu_per_file_vs_bare": round(1e6 * t["cpu_s"] / n / bare["cpu_per_file_us"], 3),
            "added": s.added, "duplicate": s.duplicate, "rejected": s.rejected}


def changes(project: Project, root: Path, n: int, pool: np.ndarray) -> dict[str, Any]:
    """Touch 1%, overwrite 0.1% and add 0.1% files; time the re-ingest that finds them."""
    step_touch, step_change = 100, 1000
    now = time.time_ns()
    touched = [file_for(root, i) for i in range(0, n, step_touch) if i % step_change]
    for path in touched:
        os.utime(path, ns=(now, now))
    changed = [file_for(root, i) for i in range(0, n, step_change)]
    for i in range(0, n, step_change):
        image_for(pool, i, salt=1).save(file_for(root, i))
    added = [file_for(root, n + i) for i in range(len(changed))]
    for i, path in enumerate(added):
        path.parent.mkdir(parents=True, exist_ok=True)
        image_for(pool, n + i).save(path)
    with timed() as t:
        s = ingest(project)
    ok = (len(s.changed) == len(changed) and s.added == len(added)
          and s.skipped == n - len(changed))
    return {"touched": len(touched), "overwritten": len(changed), "new": len(added),
            "seconds": round(t["wall_s"], 2), "found_changed": len(s.changed),
            "found_added": s.added, "skipped": s.skipped, "all_found": ok}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=200_000)
    ap.add_argument("--workers", default="0,1,2",
                    help="comma-separated worker counts (0: decode in the ingesting process)")
    ap.add_argument("--databases", default="sqlite,postgresql")
    ap.add_argument("--pg-url", default=os.environ.get(
        "ALEARN_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()))
    args = ap.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]
    kinds = args.databases.split(",")
    work = Path(tempfile.mkdtemp(prefix="alearn-bench-ingest-", dir=args.tmp))
    try:
        pool = source_images()
        root = work / "images"
        t0 = time.perf_counter()
        files = write_tree(root, args.files, pool)
        report: dict[str, Any] = {
            "files": args.files, "image": "Fashion-MNIST 28x28 grayscale PNG",
            "write_tree_s": round(time.perf_counter() - t0, 1),
            "cpus": len(os.sched_getaffinity(0)), "load_avg_at_start": os.getloadavg()[0],
            "python": platform.python_version(), "pillow": Image.__version__}
        bare_before = bare_loop(files)
        runs: dict[str, Any] = {}
        project = None
        for kind in kinds:
            results = []
            for w in worker_counts:
                where = work / f"{kind}-{w}"
                with database(kind, where, args.pg_url) as url:
                    project = Project.init(where, classes=["a", "b"], images=root,
                                           settings=Settings(database_url=url))
                    results.append(timed_ingest(project, w, args.files, bare_before))
                    last = w == worker_counts[-1]
                    with timed() as t:
                        again = ingest(project, workers=w)
                    results[-1]["reingest_s"] = round(t["wall_s"], 2)
                    results[-1]["reingest_cpu_s"] = round(t["cpu_s"], 2)
                    results[-1]["reingest_skipped"] = again.skipped
                    if last and kind == kinds[-1]:
                        report["changes"] = changes(project, root, args.files, pool)
                    project.store.dispose()
            by_workers = {r["workers"]: r["fps"] for r in results}
            runs[kind] = {"runs": results}
            if 1 in by_workers and max(by_workers) > 1:  # the most workers over one
                runs[kind][f"scaling_{max(by_workers)}_vs_1"] = round(
                    by_workers[max(by_workers)] / by_workers[1], 3)
        bare_after = bare_loop(files)
        bare_fps = (bare_before["fps"] + bare_after["fps"]) / 2
        report["bare_fps"] = {"before": round(bare_before["fps"], 1),
                              "after": round(bare_after["fps"], 1), "mean": round(bare_fps, 1)}
        report["bare_cpu_per_file_us"] = round(bare_before["cpu_per_file_us"], 1)
        for kind in runs:  # ratios against the mean of the two bare runs
            for r in runs[kind]["runs"]:
                r["vs_bare"] = round(r["fps"] / bare_fps, 3)
                r["per_worker_vs_bare"] = round(r["fps"] / bare_fps / max(1, r["workers"]), 3)
        report["databases"] = runs
        report["load_avg_at_end"] = os.getloadavg()[0]
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
