"""The pure pieces query strategies are built from.

- *Uncertainty utilities*: ``probas (n_pool, n_classes) -> scores (n_pool,)``, higher
  meaning more uncertain, hence more informative to label. Each one is named after the
  strategy that ranks by it: :func:`uncertainty_least_confident`,
  :func:`uncertainty_margin`, :func:`uncertainty_entropy`.
- The *selector* :func:`top_n`, which turns scores into ranked indices.
- The input checks every strategy runs: :func:`check_pool`, :func:`check_labeled`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import entropy as _entropy

from alearn.exceptions import EmptyPoolError

RngLike = np.random.Generator | int | None


# --- utilities: probas (n_pool, n_classes) -> scores (n_pool,), higher = more uncertain


def uncertainty_least_confident(probas: np.ndarray) -> np.ndarray:
    """``1 - max_k p_k`` (modAL ``classifier_uncertainty``), shape (n_pool,)."""
    return 1.0 - np.max(probas, axis=1)


def uncertainty_margin(probas: np.ndarray) -> np.ndarray:
    """``1 - (p_top1 - p_top2)``, shape (n_pool,), in [0, 1]; higher = more uncertain.

    ``p_top1 - p_top2`` is modAL's ``classifier_margin``; this ranks like modAL's
    ``margin_sampling``. With a single class the margin is 0, so the utility is 1.
    """
    probas = np.asarray(probas, dtype=float)
    if probas.shape[1] == 1:
        return np.ones(len(probas))
    part = np.partition(-probas, 1, axis=1)
    return 1.0 - (part[:, 1] - part[:, 0])


def uncertainty_entropy(probas: np.ndarray) -> np.ndarray:
    """Shannon entropy of each row (modAL ``classifier_entropy``), shape (n_pool,)."""
    return _entropy(np.asarray(probas, dtype=float), axis=1)


UTILITIES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "least_confident": uncertainty_least_confident,
    "margin": uncertainty_margin,
    "entropy": uncertainty_entropy,
}


# --- selector


def top_n(scores: np.ndarray, n: int, *, rng: RngLike = None) -> np.ndarray:
    """Indices of the ``n`` highest scores, highest first.

    Ties go to the lower index, or are broken at random when ``rng`` is given (as
    modAL's ``shuffled_argmax``).
    """
    scores = np.asarray(scores, dtype=float)
    if rng is None:
        return np.argsort(-scores, kind="stable")[:n].astype(np.int64)
    perm = np.random.default_rng(rng).permutation(len(scores))
    order = np.argsort(-scores[perm], kind="stable")[:n]
    return perm[order].astype(np.int64)


# --- input checks


def check_pool(
    name: str,
    probas: np.ndarray | None,
    n: int,
    embeddings: np.ndarray | None,
    *,
    needs_probas: bool = False,
    needs_embeddings: bool = False,
) -> tuple[int, int]:
    """Validate a strategy's inputs; return (pool size, number to take)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"{name}: batch size n must be a positive integer, got {n!r}")
    sizes = []
    if probas is not None:
        if np.ndim(probas) != 2:
            raise ValueError(
                f"{name}: probas must have shape (n_pool, n_classes), got {np.shape(probas)}"
            )
        sizes.append(len(probas))
    elif needs_probas:
        raise ValueError(f"{name} needs the head's probas; train a head first or use typiclust")
    if embeddings is not None:
        if np.ndim(embeddings) != 2:
            raise ValueError(
                f"{name}: embeddings must have shape (n_pool, dim), got {np.shape(embeddings)}"
            )
        sizes.append(len(embeddings))
    elif needs_embeddings:
        raise ValueError(f"{name} needs the pool's embeddings")
    if not sizes:
        raise ValueError(f"{name}: pass probas or embeddings so the pool size is known")
    if len(set(sizes)) > 1:
        raise ValueError(f"{name}: probas has {sizes[0]} rows but embeddings has {sizes[1]}")
    if sizes[0] == 0:
        raise EmptyPoolError(
            f"{name}: the unlabeled pool is empty; ingest and embed more images "
            "(alearn ingest / alearn embed)"
        )
    return sizes[0], min(int(n), sizes[0])


def check_labeled(labeled_embeddings: np.ndarray | None, dim: int) -> np.ndarray | None:
    """The labeled rows as floats, None if there are none; ValueError on a wrong shape."""
    if labeled_embeddings is None or len(labeled_embeddings) == 0:
        return None
    L = np.asarray(labeled_embeddings, dtype=float)
    if L.ndim != 2 or L.shape[1] != dim:
        raise ValueError(
            f"labeled_embeddings must have shape (n_labeled, {dim}), got {L.shape}"
        )
    return L
