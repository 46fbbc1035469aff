"""Query strategies: which unlabeled items people should label next.

A *utility* is a pure function ``probas (n_pool, n_classes) -> scores (n_pool,)``,
higher meaning more informative; a *selector* turns scores into ranked indices. No
strategy trains a model, so a worker can rank stored predictions.

Every strategy in :data:`STRATEGIES` has this signature::

    fn(probas, n, *, embeddings=None, labeled_embeddings=None, rng=None) -> indices

Parameters
----------
probas : ndarray of shape (n_pool, n_classes) or None
    The head's class probabilities for the unlabeled pool; ``None`` before there is a
    head (only ``random`` and ``typiclust`` accept that).
n : int
    Batch size, > 0. A smaller pool yields the whole pool.
embeddings : ndarray of shape (n_pool, dim) or None
    The pool's embeddings, rows aligned with ``probas`` (``ranked_batch`` and
    ``typiclust`` need them).
labeled_embeddings : ndarray of shape (n_labeled, dim) or None
    Embeddings of items already labeled or already chosen by earlier rounds.
rng : numpy Generator, int seed or None
    Randomness (random picks, tie-breaks, k-means init). Equal seeds give equal picks.

Returns
-------
indices : ndarray of int64, shape (min(n, n_pool),)
    Unique row indices into the pool, ranked: the first is the most wanted.

Raises ``EmptyPoolError`` for an empty pool and ``ValueError`` for ``n <= 0`` or
missing / misshapen inputs.

The registry :data:`STRATEGIES` maps the names used in ``alearn.toml`` and ``--strategy``
to these functions; the uncertainty utilities they rank by are in
:mod:`alearn.query.utilities`, and the embedding-based strategies in
:mod:`alearn.query.diversity`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from alearn.config import RoundsConfig
from alearn.exceptions import UnknownNameError
from alearn.query.diversity import ranked_batch, typiclust
from alearn.query.utilities import UTILITIES, RngLike, check_pool, top_n, uncertainty_margin


class Strategy(Protocol):
    def __call__(
        self,
        probas: np.ndarray | None,
        n: int,
        *,
        embeddings: np.ndarray | None = None,
        labeled_embeddings: np.ndarray | None = None,
        rng: RngLike = None,
    ) -> np.ndarray: ...


# --- strategies


def random_sampling(
    probas: np.ndarray | None,
    n: int,
    *,
    embeddings: np.ndarray | None = None,
    labeled_embeddings: np.ndarray | None = None,
    rng: RngLike = None,
) -> np.ndarray:
    """Uniform random sample without replacement (the baseline)."""
    n_pool, take = check_pool("random", probas, n, embeddings)
    return np.random.default_rng(rng).choice(n_pool, size=take, replace=False).astype(np.int64)


def _uncertainty(name: str) -> Strategy:
    utility = UTILITIES[name]

    def strategy(
        probas: np.ndarray | None,
        n: int,
        *,
        embeddings: np.ndarray | None = None,
        labeled_embeddings: np.ndarray | None = None,
        rng: RngLike = None,
    ) -> np.ndarray:
        _, take = check_pool(name, probas, n, embeddings, needs_probas=True)
        return top_n(utility(np.asarray(probas, dtype=float)), take, rng=rng)

    strategy.__name__ = name
    strategy.__doc__ = f"The ``n`` items with the highest {utility.__name__}."
    return strategy


least_confident_sampling = _uncertainty("least_confident")
margin_sampling = _uncertainty("margin")
entropy_sampling = _uncertainty("entropy")


def class_balanced(
    probas: np.ndarray | None,
    n: int,
    *,
    embeddings: np.ndarray | None = None,
    labeled_embeddings: np.ndarray | None = None,
    rng: RngLike = None,
) -> np.ndarray:
    """Equal quotas per predicted class; within a class the highest uncertainty_margin first.

    Picks round-robin over the predicted classes (the class holding the most uncertain
    item first), so every class gets ``n // n_classes`` or one more, and a class with
    too few predicted items leaves its share to the others.
    """
    _, take = check_pool("class_balanced", probas, n, embeddings, needs_probas=True)
    P = np.asarray(probas, dtype=float)
    return balanced_picks(uncertainty_margin(P), np.argmax(P, axis=1), take, rng=rng)


def balanced_picks(u: np.ndarray, pred: np.ndarray, take: int, *,
                   rng: RngLike = None) -> np.ndarray:
    """``class_balanced``'s picks from utilities ``u`` and predicted classes ``pred``
    (both (n_pool,)): round-robin over the classes, the most uncertain first."""
    u = np.asarray(u, dtype=float)
    if rng is not None:  # random tie-break between equal utilities
        u = u - np.random.default_rng(rng).uniform(0, 1e-12, size=len(u))
    order = np.lexsort((-u, pred))  # by class, then the most uncertain first (stable)
    cls = np.asarray(pred)[order]
    starts = np.flatnonzero(np.r_[True, cls[1:] != cls[:-1]])
    queues = [order[a:b] for a, b in zip(starts, [*starts[1:], len(order)], strict=True)]
    queues.sort(key=lambda q: (-u[q[0]], q[0]))
    picked: list[int] = []
    depth = 0
    while len(picked) < take:
        for q in queues:
            if depth < len(q) and len(picked) < take:
                picked.append(int(q[depth]))
        depth += 1
    return np.asarray(picked, dtype=np.int64)


STRATEGIES: dict[str, Strategy] = {
    "random": random_sampling,
    "least_confident": least_confident_sampling,
    "margin": margin_sampling,
    "entropy": entropy_sampling,
    "ranked_batch": ranked_batch,
    "typiclust": typiclust,
    "class_balanced": class_balanced,
}

#: Strategies that need the head's probabilities (they fall back to cold start without).
NEEDS_HEAD = frozenset({"least_confident", "margin", "entropy", "ranked_batch", "class_balanced"})

AUTO = "auto"


def strategy_names(*, include_auto: bool = True) -> list[str]:
    """Valid names for ``--strategy`` / ``rounds.strategy``."""
    return ([AUTO] if include_auto else []) + sorted(STRATEGIES)


def get_strategy(name: str) -> Strategy:
    """The strategy registered as ``name`` (raises UnknownNameError listing valid names)."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise UnknownNameError("strategy", name, sorted(STRATEGIES)) from None


def check_strategy_name(name: str) -> str:
    """Return ``name`` if it is 'auto' or registered, else raise UnknownNameError."""
    if name != AUTO and name not in STRATEGIES:
        raise UnknownNameError("strategy", name, strategy_names())
    return name


def choose_strategy(
    rounds_cfg: RoundsConfig, label_counts: Mapping[str, int], classes: Sequence[str]
) -> str:
    """Resolve ``rounds_cfg.strategy`` to a registered name.

    A named strategy is returned as is. ``'auto'`` is ``rounds_cfg.cold_start_strategy``
    until every class in ``classes`` has at least ``rounds_cfg.min_labels_per_class``
    trusted labels in ``label_counts``, then ``rounds_cfg.uncertainty_strategy``. The
    defaults (typiclust, then margin, from 3 labels per class) were the best schedule
    measured by scripts/bench_label_efficiency.py on Fashion-MNIST.
    """
    name = check_strategy_name(rounds_cfg.strategy)
    if name != AUTO:
        return name
    need = rounds_cfg.min_labels_per_class
    warm = all(label_counts.get(c, 0) >= need for c in classes)
    chosen = rounds_cfg.uncertainty_strategy if warm else rounds_cfg.cold_start_strategy
    get_strategy(chosen)
    return chosen
