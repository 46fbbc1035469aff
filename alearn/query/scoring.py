"""Scoring the pool with the head: float32 blocks streamed from the feature cache.

The head's standardisation is folded into its weights (``EmbeddingClassifier._folded``),
so each block of a few hundred float16 rows is cast to float32 in one reused buffer and
multiplied once; the logits of a group of blocks become probabilities, then one
utility and the predicted class per row. Nothing of the pool's size is held but those
two numbers and the item id per row: a million items in 1280 dimensions is scored in
about 20 MB, where ``predict_proba`` on the whole pool needed two float64 copies (10 GB
each). Top-k picks use ``argpartition`` (:func:`top_k`).

**Remembered scores.** :func:`pool_scores` keeps the last few passes beside the cache
(``derived/scores-<head version>-<utility>-<cache version>-<items>.npz``, 16 bytes an
item). A pass is a function of exactly those: the head (its version is a hash of all
that determines it), the utility, the cached vectors (the cache version changes with
any chunk written or merged) and the store's items (count and last id, which fix the
row map). So ``alearn round plan`` after the select job of the same head reads the
select's pass instead of streaming the pool again; the picks are still made from the
pool as it is now (items selected since are left out after scoring).
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import alearn.atomic as atomic
from alearn.features.pool import Pool, derived_dir
from alearn.model.head import EmbeddingClassifier
from alearn.project import Project
from alearn.query.utilities import UTILITIES, RngLike, top_n

#: rows whose logits are turned into probabilities and utilities at once
GROUP_ROWS = 65536
#: remembered passes kept per feature cache (the newest)
KEEP_SCORES = 4
#: part of a remembered pass's name: change it when a pass would come out differently
SCORES_FORMAT = 1


@dataclass
class Scores:
    """One utility (higher = more uncertain) and the predicted class column per item."""

    ids: np.ndarray  # item ids, in the order the cache holds them
    utility: np.ndarray  # float32
    predicted: np.ndarray  # int32 column of head.classes_

    def subset(self, mask: np.ndarray) -> Scores:
        return Scores(self.ids[mask], self.utility[mask], self.predicted[mask])


def pool_scores(project: Project, pool: Pool, head: EmbeddingClassifier, utility: str,
                head_version: str | None) -> Scores:
    """:func:`score_pool`, remembered under ``head_version`` (None: not remembered)."""
    if head_version is None:
        return score_pool(pool, head, utility)
    path = derived_dir(project, pool.key) / (
        f"scores-{SCORES_FORMAT}-{head_version}-{utility}-{pool.version}-{pool.items[0]}-"
        f"{pool.items[1]}.npz")
    kept = _read_scores(path, len(pool))
    if kept is not None:
        return kept
    scores = score_pool(pool, head, utility)
    with contextlib.suppress(OSError):  # a read-only cache folder: scored, not kept
        atomic.write_with(path, lambda f: np.savez(f, ids=scores.ids, utility=scores.utility,
                                                   predicted=scores.predicted))
        old = sorted(path.parent.glob("scores-*.npz"), key=_mtime, reverse=True)
        for stale in old[KEEP_SCORES:]:
            if stale != path:
                stale.unlink(missing_ok=True)
    return scores


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _read_scores(path: Path, n: int) -> Scores | None:
    """A remembered pass of ``n`` items, or None (none, unreadable or not whole)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            scores = Scores(z["ids"], z["utility"], z["predicted"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    sizes = {len(scores.ids), len(scores.utility), len(scores.predicted)}
    return scores if sizes == {n} else None


def score_pool(pool: Pool, head: EmbeddingClassifier, utility: str) -> Scores:
    """``utility`` (a name in :data:`~alearn.query.utilities.UTILITIES`) and the predicted
    class of every item of ``pool``, in one streamed pass."""
    import torch

    fn = UTILITIES[utility]
    if not head._foldable():
        return _score_by_predict_proba(pool, head, fn)
    W, b = head._folded()
    # W as a column-major view: torch's float32 GEMM of a (256, dim) block by a narrow
    # (dim, classes) matrix is about twice as fast with it as with a row-major W
    Wt, bt = torch.from_numpy(np.ascontiguousarray(W.T)).T, torch.from_numpy(b)
    n = len(pool)
    ids = np.empty(n, dtype=np.int64)
    util = np.empty(n, dtype=np.float32)
    pred = np.empty(n, dtype=np.int32)
    logits = torch.empty((GROUP_ROWS, W.shape[1]), dtype=torch.float32)
    group_ids = np.empty(GROUP_ROWS, dtype=np.int64)
    filled = done = 0

    def flush() -> None:
        nonlocal filled, done
        if not filled:
            return
        P = head._proba_from_logits(logits[:filled].numpy().copy())
        ids[done: done + filled] = group_ids[:filled]
        util[done: done + filled] = fn(P)
        pred[done: done + filled] = P.argmax(axis=1)
        done += filled
        filled = 0

    with torch.no_grad():
        for owners, X in pool.blocks():
            mine = owners >= 0
            if not mine.all():
                owners, X = owners[mine], X[mine]
            k = len(owners)
            if filled + k > GROUP_ROWS:
                flush()
            torch.addmm(bt, torch.from_numpy(X), Wt, out=logits[filled: filled + k])
            group_ids[filled: filled + k] = owners
            filled += k
        flush()
    return Scores(ids[:done], util[:done], pred[:done])


def _score_by_predict_proba(pool: Pool, head: EmbeddingClassifier,
                            fn: Callable[[np.ndarray], np.ndarray]) -> Scores:
    """The same pass through ``head.predict_proba`` (float32 blocks), for heads whose
    probabilities are not the folded linear model's."""
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for owners, X in pool.blocks(4096):
        mine = owners >= 0
        if mine.any():
            P = head.predict_proba(X[mine])
            parts.append((owners[mine].copy(), fn(P).astype(np.float32), P.argmax(axis=1)))
    if not parts:
        return Scores(np.empty(0, np.int64), np.empty(0, np.float32), np.empty(0, np.int32))
    return Scores(*(np.concatenate(c) for c in zip(*parts, strict=True)))


def top_k(scores: np.ndarray, k: int, *, rng: RngLike = None) -> np.ndarray:
    """Indices of the ``k`` highest scores, highest first, in O(n) (``argpartition``).

    Every score tied with the k-th is a candidate, so ties are broken as :func:`top_n`
    breaks them (lower index, or at random with ``rng``).
    """
    scores = np.asarray(scores)
    if k >= len(scores):
        return top_n(scores, k, rng=rng)
    part = np.argpartition(-scores, k - 1)[:k]
    cand = np.flatnonzero(scores >= scores[part].min())
    return cand[top_n(scores[cand], k, rng=rng)]
