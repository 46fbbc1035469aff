"""The pool's PCA projection for the diversity strategies, fitted once and kept on disk.

Ranked batch and TypiClust measure distances between embeddings; in 1280 dimensions
that is slow and, for k-means, noisy. They see the candidates through a
:data:`PROJECTION_DIM`-d PCA of the raw embeddings (centred, not whitened, so Euclidean
distances keep their scale; TypiClust L2-normalises what it gets, as before). The
basis is fitted on a seeded sample of at most :data:`FIT_SAMPLE` items and saved as
``derived/pca.npz`` beside the backbone's feature cache, so it is computed once per
backbone: it is refitted only while the pool outgrows its sample (the pool has at least
twice the items it was fitted on, and that was fewer than :data:`FIT_SAMPLE`).
Projecting the few thousand candidates and labeled items of a round is one small
matrix product; nothing of the pool's size is projected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

import alearn.atomic as atomic
from alearn.features.pool import Pool, derived_dir
from alearn.project import Project

PROJECTION_DIM = 64
FIT_SAMPLE = 20000
_LOADED: dict[str, tuple[float, Projection]] = {}


@dataclass(frozen=True)
class Projection:
    """``(X - mean) @ components``: (n, dim) -> (n, d), float32."""

    mean: np.ndarray
    components: np.ndarray  # (dim, d)
    n_fit: int

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return ((np.asarray(X, dtype=np.float32) - self.mean) @ self.components
                ).astype(np.float32, copy=False)


def pool_projection(project: Project, pool: Pool) -> Projection | None:
    """The backbone's projection (None when the embeddings have at most
    :data:`PROJECTION_DIM` dimensions or the pool is too small to fit one)."""
    if pool.dim <= PROJECTION_DIM or len(pool) <= PROJECTION_DIM:
        return None
    path = derived_dir(project, pool.key) / "pca.npz"
    proj = _load(path)
    want = min(FIT_SAMPLE, len(pool))
    if proj is not None and proj.components.shape[0] == pool.dim and \
            (proj.n_fit >= FIT_SAMPLE or len(pool) < 2 * proj.n_fit):
        return proj
    from sklearn.decomposition import PCA  # scikit-learn: imported on use

    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(pool.ids, size=want, replace=False))
    pca = PCA(PROJECTION_DIM, random_state=0,
              svd_solver="randomized" if want > 2000 else "full")
    pca.fit(pool.vectors(sample))
    proj = Projection(mean=pca.mean_.astype(np.float32),
                      components=np.ascontiguousarray(pca.components_.T, dtype=np.float32),
                      n_fit=want)
    atomic.write_with(path, lambda f: np.savez(f, mean=proj.mean,
                                               components=proj.components,
                                               n_fit=np.int64(want)))
    _LOADED.pop(str(path), None)
    return proj


def _load(p: Path) -> Projection | None:
    try:
        mtime = p.stat().st_mtime
    except FileNotFoundError:
        return None
    hit = _LOADED.get(str(p))
    if hit is not None and hit[0] == mtime:
        return hit[1]
    try:
        with np.load(p, allow_pickle=False) as z:
            proj = Projection(mean=z["mean"], components=z["components"],
                              n_fit=int(z["n_fit"]))
    except (OSError, ValueError, KeyError):
        return None
    _LOADED[str(p)] = (mtime, proj)
    return proj
