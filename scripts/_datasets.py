"""Labeled image datasets for the benchmarks and demos, offline.

``load_split(spec, n_pool=, n_test=, seed=)`` returns a :class:`Split`: a pool and a
held-out test set of PIL images with their true labels. ``spec`` is one of

- ``digits``: scikit-learn's 1,797 8x8 digits (10 classes);
- ``fashion-mnist``: the Debian package ``dataset-fashion-mnist`` (IDX files in
  /usr/share/datasets/fashion-mnist/); the pool comes from the training file, the test
  set from the t10k file;
- ``imagefolder:PATH``: one sub-folder per class; pool and test are disjoint random
  subsets.

Subsets are drawn with a seeded generator, so a spec, sizes and seed always give the
same images.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class LazyImages(Sequence):
    """A sequence of PIL images made on access (from arrays or files)."""

    def __init__(self, arrays: np.ndarray | None = None, paths: list[Path] | None = None):
        self.arrays, self.paths = arrays, paths

    def __len__(self) -> int:
        return len(self.arrays) if self.arrays is not None else len(self.paths or [])

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if self.arrays is not None:
            return Image.fromarray(self.arrays[i])
        with Image.open(self.paths[i]) as img:  # type: ignore[index]
            return img.convert("RGB")


@dataclass
class Split:
    """A pool and a test set; labels are class indices into ``classes``."""

    name: str
    classes: list[str]
    pool_images: LazyImages
    pool_labels: np.ndarray
    test_images: LazyImages
    test_labels: np.ndarray


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file into an ndarray."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _subset(n_have: int, n_want: int, rng: np.random.Generator, what: str) -> np.ndarray:
    if n_want > n_have:
        raise SystemExit(f"asked for {n_want} {what} images but only {n_have} exist")
    return np.sort(rng.choice(n_have, size=n_want, replace=False))


def load_split(spec: str, *, n_pool: int, n_test: int, seed: int = 0) -> Split:
    """Load ``spec`` and draw a pool of ``n_pool`` and a test set of ``n_test`` images."""
    rng = np.random.default_rng(seed)
    if spec == "fashion-mnist":
        tr_x = read_idx(FASHION_DIR / "train-images-idx3-ubyte.gz")
        tr_y = read_idx(FASHION_DIR / "train-labels-idx1-ubyte.gz")
        te_x = read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz")
        te_y = read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")
        p, t = _subset(len(tr_x), n_pool, rng, "pool"), _subset(len(te_x), n_test, rng, "test")
        return Split(spec, FASHION_CLASSES, LazyImages(tr_x[p]), tr_y[p].astype(np.int64),
                     LazyImages(te_x[t]), te_y[t].astype(np.int64))
    if spec == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        arrays = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
        order = rng.permutation(len(arrays))
        if n_pool + n_test > len(order):
            raise SystemExit(f"digits has {len(order)} images; pool + test must fit")
        p, t = np.sort(order[:n_pool]), np.sort(order[n_pool : n_pool + n_test])
        return Split(spec, [str(c) for c in d.target_names], LazyImages(arrays[p]),
                     d.target[p].astype(np.int64), LazyImages(arrays[t]),
                     d.target[t].astype(np.int64))
    if spec.startswith("imagefolder:"):
        root = Path(spec.split(":", 1)[1])
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        if len(classes) < 2:
            raise SystemExit(f"{root}: need one sub-folder per class (at least two)")
        files = [(f, c) for c, name in enumerate(classes)
                 for f in sorted((root / name).rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
        order = rng.permutation(len(files))
        if n_pool + n_test > len(order):
            raise SystemExit(f"{root} has {len(order)} images; pool + test must fit")
        p, t = order[:n_pool], order[n_pool : n_pool + n_test]
        return Split(spec, classes,
                     LazyImages(paths=[files[i][0] for i in p]),
                     np.array([files[i][1] for i in p], dtype=np.int64),
                     LazyImages(paths=[files[i][0] for i in t]),
                     np.array([files[i][1] for i in t], dtype=np.int64))
    raise SystemExit(f"--dataset {spec!r}: use digits, fashion-mnist or imagefolder:PATH")
