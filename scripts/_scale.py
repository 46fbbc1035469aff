"""Scale figures for ``bench_round.py`` (direct-call mode): peak RSS per phase, the
scoring read rate against a plain numpy read of the same cache file, and a cold select
in a fresh process next to the warm one.

- **Peak RSS** of a phase: ``/proc/self/clear_refs`` (``5``) resets the process's
  ``VmHWM`` to its current RSS before the phase, and ``VmHWM`` is read after it.
- **Read rates**: the bytes of the pool's float16 vectors divided by the seconds of
  (a) ``alearn.query.scoring.score_pool`` (the scoring pass select runs: cast, product,
  probabilities, utility), and (b) ``np.fromfile`` over the same ``.X.npy`` files in
  64 MB pieces (a plain read out of the page cache). Both read a warm page cache; best
  of two each, interleaved.
- **Cold select**: ``plan_batch`` in a new Python process (the libraries imported
  first, as a worker's parent does before it forks a work-horse), once as it comes (the
  page cache warm, as for any work-horse) and once after ``posix_fadvise(DONTNEED)``
  evicted the cache files from the page cache (the first round after a reboot). The
  picks must equal the warm process's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _status(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def measured(fn: Callable[[], Any]) -> tuple[Any, float, float | None]:
    """(result, seconds, peak RSS in MB during the call; None where /proc cannot tell)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    t = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t
    hwm = _status("VmHWM") if reset else None
    return out, seconds, None if hwm is None else round(hwm / 2**20, 1)


def cache_files(project: Any) -> list[Path]:
    from alearn.features.pool import open_pool

    pool = open_pool(project)
    return [p for s in pool.segments for p in s.paths if p.name.endswith(".X.npy")]


def read_rates(project: Any, version: str) -> dict[str, Any]:
    """Scoring pass vs plain numpy read, bytes per second, best of two each."""
    from alearn.features.pool import open_pool
    from alearn.model.current import head_of
    from alearn.query.scoring import score_pool

    pool = open_pool(project)
    head = head_of(project, version).head
    files = cache_files(project)
    nbytes = sum(len(s) * pool.dim * 2 for s in pool.segments)
    score_s, read_s = [], []
    for _ in range(2):
        t = time.perf_counter()
        score_pool(pool, head, "margin")
        score_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        for f in files:
            _plain_read(f)
        read_s.append(time.perf_counter() - t)
    score_rate = nbytes / min(score_s) / 1e9
    read_rate = sum(f.stat().st_size for f in files) / min(read_s) / 1e9
    return {"bytes": nbytes, "score_s": round(min(score_s), 3),
            "score_gb_s": round(score_rate, 3), "numpy_read_gb_s": round(read_rate, 3),
            "score_vs_numpy_read": round(score_rate / read_rate, 3),
            "only_memory_mapped_bases": len(files) == len(pool.segments)}


def _plain_read(path: Path, piece: int = 64 * 2**20) -> None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        for off in range(0, size, piece):
            np.fromfile(f, dtype=np.uint8, count=min(piece, size - off))


_CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
import alearn.features.pipeline, alearn.model.training, alearn.query.selection  # worker preload
from alearn.config import Settings
from alearn.project import Project
from alearn.query.selection import plan_batch
t = time.perf_counter()
plan = plan_batch(Project.open({proj!r}, Settings()), batch_size={batch}, strategy="margin",
                  model_version={version!r})
s = time.perf_counter() - t
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps({{"seconds": s, "ids": [i.item_id for i in plan.items],
                   "peak_rss_mb": round(hwm / 1024, 1)}}))
"""


def cold_select(project: Any, version: str, batch: int, warm_ids: list[int],
                *, evict: bool) -> dict[str, Any]:
    """plan_batch in a new process; ``evict``: drop the cache files from the page cache."""
    for kept in Path(project.features_dir).rglob("scores-*.npz"):
        kept.unlink()  # the warm select's scores: a work-horse's select scores a new head
    if evict:
        for f in cache_files(project):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    code = _CHILD.format(root=str(ROOT), proj=str(project.root), batch=batch, version=version)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return {"seconds": round(res["seconds"], 3), "peak_rss_mb": res["peak_rss_mb"],
            "same_batch_as_warm": res["ids"] == warm_ids}
