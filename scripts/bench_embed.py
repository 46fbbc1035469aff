#!/usr/bin/env python
"""Benchmark ``embed_project`` against a bare timm forward pass; print JSON.

Writes N real images (Fashion-MNIST test PNGs from the Debian package, else sklearn's
digits upscaled) into a temporary project, records them as items, and measures:

- ``bare_ips``: images/s of forward_features + forward_head over the same images,
  already decoded and preprocessed into tensors (same batch size and size);
- ``alearn_ips``: images/s of ``embed_project`` (store query, cache lookup, DataLoader
  decoding the PNG files, forward pass, float16 cache writes);
- ``overhead_pct`` = 100 * (bare_ips / alearn_ips - 1);
- ``cached_run_seconds``: a second ``embed_project`` over the same images (nothing to
  compute, no backbone loaded).

Each timing is the best of ``--repeats`` runs (the cache is emptied between runs).

    .venv/bin/python scripts/bench_embed.py --n 2000 --image-size 96 --threads 2
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def source_images(n: int) -> tuple[np.ndarray, str]:
    """(n, h, w) uint8 grayscale images, and where they came from."""
    if FASHION.is_file():
        with gzip.open(FASHION, "rb") as f:
            data = f.read()
        count, rows, cols = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
        imgs = np.frombuffer(data, np.uint8, offset=16).reshape(count, rows, cols)
        if n <= count:
            return imgs[:n], f"fashion-mnist {FASHION.name}"
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = (load_digits().images * (255 / 16)).astype(np.uint8)
    reps = -(-n // len(digits))
    up = [np.asarray(Image.fromarray(d).resize((28, 28), Image.Resampling.BICUBIC))
          for d in np.tile(digits, (reps, 1, 1))[:n]]
    return np.stack(up), "sklearn digits upscaled to 28x28 (repeated)"


_SHARD = """
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[4]))
from alearn.features.backbone import load_backbone
from alearn.features.pipeline import embed_project
from alearn.project import Project
project = Project.open(Path(sys.argv[1]))
bb = load_backbone(project.config.embed, root=project.root)
i, n = int(sys.argv[2]), int(sys.argv[3])
go = Path(sys.argv[5])
(go.parent / f"ready-{i}").touch()
while not go.exists():
    time.sleep(0.01)
summary = embed_project(project, shard=(i, n), backbone=bb, progress=False)
print(json.dumps({"end": time.time(), "computed": summary.computed}))
"""


def _run_shards(project: object, shards: int, threads: int) -> tuple[float, int]:
    """Embed the whole project in ``shards`` processes started together (each loads its
    backbone first, then all start at once); (wall seconds, images computed)."""
    import subprocess

    root = Path(project.root)  # type: ignore[attr-defined]
    shutil.rmtree(project.features_dir, ignore_errors=True)  # type: ignore[attr-defined]
    sync = Path(tempfile.mkdtemp(prefix="alearn-shards-"))
    go = sync / "go"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = [subprocess.Popen([sys.executable, "-c", _SHARD, str(root), str(i), str(shards),
                               str(threads), str(go)], stdout=subprocess.PIPE, text=True,
                              env=env) for i in range(shards)]
    while sum((sync / f"ready-{i}").exists() for i in range(shards)) < shards:
        if any(p.poll() not in (None, 0) for p in procs):
            raise SystemExit("a shard process failed before it started")
        time.sleep(0.01)
    start = time.time()
    go.touch()
    outs = [json.loads(p.communicate()[0]) for p in procs]
    shutil.rmtree(sync, ignore_errors=True)
    return max(o["end"] for o in outs) - start, sum(o["computed"] for o in outs)


def sharded_throughput(project: object, n: int, shards: int, threads: int,
                       repeats: int) -> dict[str, object]:
    """Images/s of one embedding process against ``shards`` of them at once (best of
    ``repeats``, interleaved): what 'round start' gets from its live embed workers."""
    one, many = [], []
    for _ in range(repeats):
        for runs, k in ((one, 1), (many, shards)):
            seconds, computed = _run_shards(project, k, threads)
            if computed != n:
                raise SystemExit(f"{k} shard(s) computed {computed} of {n} images")
            runs.append(seconds)
    one_ips, many_ips = n / min(one), n / min(many)
    return {"shards": shards, "threads_each": threads, "one_process_ips": round(one_ips, 1),
            "sharded_ips": round(many_ips, 1),
            "speedup": round(many_ips / one_ips, 3),
            "speedup_over_shards": round(many_ips / one_ips / shards, 3),
            "one_process_seconds": [round(v, 3) for v in one],
            "sharded_seconds": [round(v, 3) for v in many]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--num-workers", type=int, default=0, help="DataLoader processes")
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--weights", default="offline")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=4, help="batches run before timing")
    ap.add_argument("--shards", type=int, default=0,
                    help="also time embed_project sharded over this many processes (each "
                         "with --threads threads) against one such process")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from PIL import Image

    from alearn.config import EmbedConfig, Settings
    from alearn.features.backbone import load_backbone
    from alearn.features.pipeline import embed_project, load_pool_features
    from alearn.features.torch_embed import forward_embed
    from alearn.project import Project
    from alearn.store import Item

    arrays, origin = source_images(args.n)
    tmp = Path(tempfile.mkdtemp(prefix="alearn-bench-embed-"))
    try:
        image_root = tmp / "images"
        image_root.mkdir()
        items, seen = [], set()
        for i, a in enumerate(arrays):
            rel = f"{i // 1000:03d}/{i:06d}.png"
            (image_root / rel).parent.mkdir(exist_ok=True)
            Image.fromarray(a).save(image_root / rel)
            digest = hashlib.sha256((image_root / rel).read_bytes()).hexdigest()
            if digest not in seen:  # the store holds each distinct image once
                seen.add(digest)
                items.append(Item(sha256=digest, path=rel, width=a.shape[1],
                                  height=a.shape[0]))
        cfg = EmbedConfig(backbone=args.backbone, weights=args.weights,
                          image_size=args.image_size, batch_size=args.batch_size,
                          num_workers=args.num_workers)
        project = Project.init(tmp / "proj", classes=[str(c) for c in range(10)],
                               images=image_root, settings=Settings(database_url=None),
                               embed=cfg.model_dump())
        with project.store.session() as s:
            s.add_all(items)

        t0 = time.perf_counter()
        bb = load_backbone(cfg, root=project.root)
        load_s = time.perf_counter() - t0

        pre = bb.transform()
        paths = [it.path for it in items]
        n = len(items)
        tensors = []
        for p in paths:
            with Image.open(image_root / p) as img:
                tensors.append(pre(img))
        x_all = torch.stack(tensors)
        for _ in range(args.warmup):  # the first batches are slow; shared by both paths
            forward_embed(bb.model, x_all[: args.batch_size])

        def bare() -> tuple[float, float, np.ndarray]:
            t, c = time.perf_counter(), time.process_time()
            out = [forward_embed(bb.model, x_all[s:s + args.batch_size])
                   for s in range(0, len(x_all), args.batch_size)]
            return time.perf_counter() - t, time.process_time() - c, np.concatenate(out)

        def alearn() -> tuple[float, float]:
            shutil.rmtree(project.features_dir, ignore_errors=True)
            t, c = time.perf_counter(), time.process_time()
            summary = embed_project(project, backbone=bb, progress=False)
            took = time.perf_counter() - t, time.process_time() - c
            if summary.computed != n or summary.failed:
                raise SystemExit(f"unexpected summary {summary.to_dict()}")
            return took

        bare_times, alearn_times, bare_cpu, alearn_cpu = [], [], [], []
        for _ in range(args.repeats):  # interleaved, so drifting load hits both alike
            bt, bc, X_bare = bare()
            at, ac = alearn()
            bare_times.append(bt)
            bare_cpu.append(bc)
            alearn_times.append(at)
            alearn_cpu.append(ac)
        t = time.perf_counter()
        cached = embed_project(project, progress=False)  # by key: loads no backbone
        cached_s = time.perf_counter() - t
        ids, X = load_pool_features(project)
        order = np.argsort([it.id for it in items])
        max_diff = float(np.abs(X - X_bare[order]).max())

        sharded = (sharded_throughput(project, n, args.shards, args.threads, args.repeats)
                   if args.shards > 1 else None)
        bare_ips = n / min(bare_times)
        alearn_ips = n / min(alearn_times)
        print(json.dumps({
            "bench": "embed",
            "command": "python scripts/bench_embed.py " + " ".join(sys.argv[1:]),
            "images": n, "image_source": origin, "duplicates_skipped": args.n - n,
            "backbone": bb.name, "weights_id": bb.weights_id, "dim": bb.dim,
            "image_size": args.image_size, "batch_size": args.batch_size,
            "threads": args.threads, "num_workers": args.num_workers,
            "device": str(bb.device),
            "bare_ips": round(bare_ips, 1), "alearn_ips": round(alearn_ips, 1),
            "overhead_pct": round(100 * (bare_ips / alearn_ips - 1), 1),
            "bare_seconds": [round(v, 3) for v in bare_times],
            "alearn_seconds": [round(v, 3) for v in alearn_times],
            # CPU seconds of this process (both threads): steadier than wall time on a
            # shared machine; DataLoader worker processes are not included.
            "cpu_overhead_pct": round(100 * (min(alearn_cpu) / min(bare_cpu) - 1), 1),
            "bare_cpu_seconds": [round(v, 3) for v in bare_cpu],
            "alearn_cpu_seconds": [round(v, 3) for v in alearn_cpu],
            "load_average": os.getloadavg(),
            "cached_run_seconds": round(cached_s, 3), "cached_run_computed": cached.computed,
            "load_backbone_seconds": round(load_s, 3),
            "max_abs_diff_cache_vs_bare": max_diff,
            "cache_bytes": sum(f.stat().st_size for f in project.features_dir.rglob("*")),
            "torch": torch.__version__, "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "sharded": sharded,
        }, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
