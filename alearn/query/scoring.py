"""Scoring the pool with the head: float32 blocks streamed from the feature cache.

The head's standardisation is folded into its weights (``EmbeddingClassifier._folded``),
so each block of a few hundred float16 rows is cast to float32 in one reused buffer and
multiplied once; the logits of a group of blocks become probabilities, then one
utility and the predicted class per row. Nothing of the pool's size is held but those
two numbers and the item id per row: a million items in 1280 dimensions is scored in
about 20 MB, where ``predict_proba`` on the whole pool needed two float64 copies (10 GB
each). Top-k picks use ``argpartition`` (:func:`top_k`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from alearn.features.pool import Pool
from alearn.model.head import EmbeddingClassifier
from alearn.query.utilities import UTILITIES, RngLike, top_n

#: rows whose logits are turned into probabilities and utilities at once
GROUP_ROWS = 65536


@dataclass
class Scores:
    """One utility (higher = more uncertain) and the predicted class column per item."""

    ids: np.ndarray  # item ids, in the order the cache holds them
    utility: np.ndarray  # float32
    predicted: np.ndarray  # int32 column of head.classes_

    def subset(self, mask: np.ndarray) -> Scores:
        return Scores(self.ids[mask], self.utility[mask], self.predicted[mask])


def score_pool(pool: Pool, head: EmbeddingClassifier, utility: str) -> Scores:
    """``utility`` (a name in :data:`~alearn.query.utilities.UTILITIES`) and the predicted
    class of every item of ``pool``, in one streamed pass."""
    import torch

    fn = UTILITIES[utility]
    if not head._foldable():
        return _score_by_predict_proba(pool, head, fn)
    W, b = head._folded()
    Wt, bt = torch.from_numpy(W), torch.from_numpy(b)
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
