"""The embed job that finds nothing to do, on a large pool: full look against the embed mark.

Builds a project whose ``n`` items (synthetic ``--dim``-d vectors) are all in the real
feature cache, on the real store (SQLite), then times, interleaved, best of ``--repeat``:

- ``full``: ``embed_project(full=True)``: lists every item and asks the cache about every
  hash, which is what every embed run did before the embed mark;
- ``noop``: ``embed_project()`` with the mark in place (nothing new);
- ``new``: ``embed_project()`` after ``--new`` more (cached) items were added: it looks
  up only those, but opening the cache's lookup index is O(cache).

Each run opens a fresh Project and FeatureCache, as each embed job does. CPU seconds are
``time.process_time``. Prints JSON; ``noop_ratio`` = full CPU / noop CPU.

    nice .venv/bin/python scripts/bench_embed_noop.py --n 200000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alearn.config import EmbedConfig, Settings  # noqa: E402
from alearn.features.backbone import cache_key_for  # noqa: E402
from alearn.features.cache import FeatureCache  # noqa: E402
from alearn.features.pipeline import embed_project  # noqa: E402
from alearn.project import Project  # noqa: E402
from alearn.store import Item  # noqa: E402

PIECE = 50_000


def add_cached(project: Project, start: int, stop: int, dim: int) -> None:
    cache = FeatureCache(project.features_dir, cache_key_for(project.config.embed,
                                                            root=project.root))
    rng = np.random.default_rng(start)
    for a in range(start, stop, PIECE):
        b = min(a + PIECE, stop)
        shas = [hashlib.sha256(f"item:{i}".encode()).hexdigest() for i in range(a, b)]
        cache.put(shas, rng.standard_normal((b - a, dim), dtype=np.float32))
        with project.store.session() as s:
            s.execute(insert(Item), [{"sha256": h, "path": f"img/{i:07d}.png", "width": 96,
                                      "height": 96, "extra": {}}
                                     for i, h in zip(range(a, b), shas, strict=True)])


def timed(root: Path, **kw: Any) -> dict[str, float]:
    project = Project.open(root, Settings())
    c, t = time.process_time(), time.perf_counter()
    summary = embed_project(project, progress=False, **kw)
    out = {"cpu_s": time.process_time() - c, "wall_s": time.perf_counter() - t}
    assert summary.computed == 0 and not summary.failed, summary.to_dict()
    out["items"] = summary.items
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--new", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        project = Project.init(Path(tmp) / "proj", classes=["a", "b"], images=images,
                               settings=Settings(), force=True)
        project.config.embed = EmbedConfig(backbone="tf_efficientnet_lite0", weights="none",
                                           image_size=96)
        project.save_config()
        add_cached(project, 0, args.n, args.dim)
        FeatureCache(project.features_dir, cache_key_for(project.config.embed,
                                                         root=project.root)).compact()
        best: dict[str, dict[str, float]] = {}

        def keep(name: str, r: dict[str, float]) -> None:
            if name not in best or r["cpu_s"] < best[name]["cpu_s"]:
                best[name] = r

        timed(project.root)  # writes the first mark
        for _ in range(args.repeat):
            keep("full", timed(project.root, full=True))
            keep("noop", timed(project.root))
        n_new = 0
        for _ in range(args.repeat):
            add_cached(project, args.n + n_new, args.n + n_new + args.new, args.dim)
            n_new += args.new
            keep("new", timed(project.root))
        assert best["noop"]["items"] == args.n and best["new"]["items"] > args.n
        print(json.dumps({
            "n_items": args.n, "new_items": args.new, "dim": args.dim, "repeat": args.repeat,
            **{f"{k}_{m}": round(v[m], 4) for k, v in best.items() for m in ("cpu_s", "wall_s")},
            "noop_ratio": round(best["full"]["cpu_s"] / max(best["noop"]["cpu_s"], 1e-6), 1),
            "new_ratio": round(best["full"]["cpu_s"] / max(best["new"]["cpu_s"], 1e-6), 1),
        }, indent=2))


if __name__ == "__main__":
    main()
