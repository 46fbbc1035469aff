"""Running a strategy on a pool too large to hold: stream, score, then narrow down.

:func:`pick` is what :func:`alearn.query.selection.plan_batch` calls. It never holds the
pool's vectors:

- uncertainty strategies (least confident, margin, entropy) and class-balanced: one
  streamed scoring pass (:func:`alearn.query.scoring.score_pool`), then the top-k by
  ``argpartition``; these picks are exactly the array strategies' picks;
- ranked batch: its :data:`CANDIDATES_PER_PICK` x batch most uncertain items (least
  confident, the uncertainty it ranks by) are the candidates; its ``alpha`` still counts
  the whole pool;
- TypiClust (the cold start; it needs no head): a seeded sample of
  ``max(TYPICLUST_SAMPLE, 20 x batch)`` items, the whole pool when it is smaller, since
  its typicality is a density estimate that a uniform sample keeps;
- random: indices drawn as :func:`alearn.query.strategies.random_sampling` draws them.

Ranked batch and TypiClust see the candidates and the labeled items through the
backbone's cached PCA projection (:mod:`alearn.query.projection`).
"""

from __future__ import annotations

import numpy as np

from alearn.features.pool import Pool
from alearn.model.head import EmbeddingClassifier
from alearn.project import Project
from alearn.query.diversity import ranked_batch, typiclust
from alearn.query.projection import pool_projection
from alearn.query.scoring import pool_scores, top_k
from alearn.query.strategies import balanced_picks, get_strategy
from alearn.query.utilities import UTILITIES

CANDIDATES_PER_PICK = 20
TYPICLUST_SAMPLE = 20000


def pick(name: str, n: int, *, project: Project, pool: Pool, in_pool: np.ndarray,
         labeled: np.ndarray, head: EmbeddingClassifier | None, seed: int,
         head_version: str | None = None) -> np.ndarray:
    """The item ids strategy ``name`` picks from the pool items ``pool.ids[in_pool]``,
    ranked (at most ``n``). ``labeled`` (a mask over ``pool.ids`` too) marks the items
    labeled or selected before, which diversity keeps away from; ``head`` is required
    by the strategies that need one. With ``head_version`` (the saved head's), the
    pool's scores are remembered (:func:`alearn.query.scoring.pool_scores`)."""
    get_strategy(name)  # an unknown name fails here, as it would in the registry
    pool_ids = pool.ids[in_pool]
    take = min(n, len(pool_ids))
    if take <= 0:
        return np.empty(0, dtype=np.int64)
    if name == "random":
        return pool_ids[np.random.default_rng(seed).choice(len(pool_ids), size=take,
                                                           replace=False)]
    if name == "typiclust":
        size = min(len(pool_ids), max(TYPICLUST_SAMPLE, CANDIDATES_PER_PICK * take))
        cand = pool_ids if size == len(pool_ids) else np.sort(
            np.random.default_rng(seed).choice(pool_ids, size=size, replace=False))
        E, L = _views(project, pool, cand, labeled)
        return cand[typiclust(None, take, embeddings=E, labeled_embeddings=L, rng=seed)]
    if head is None:
        raise ValueError(f"{name} needs the head's probas; train a head first or use "
                         "typiclust")
    utility = {"class_balanced": "margin", "ranked_batch": "least_confident"}.get(name, name)
    if utility not in UTILITIES:
        raise ValueError(f"strategy {name!r} has no streamed form")
    scores = pool_scores(project, pool, head, utility, head_version)
    scores = scores.subset(in_pool[pool.positions(scores.ids)])
    if name == "class_balanced":
        return scores.ids[balanced_picks(scores.utility, scores.predicted, take, rng=seed)]
    if name == "ranked_batch":
        cand = scores.ids[top_k(scores.utility, min(len(scores.ids),
                                                    CANDIDATES_PER_PICK * take), rng=seed)]
        probas = head.predict_proba(pool.vectors(cand))
        E, L = _views(project, pool, cand, labeled)
        idx = ranked_batch(probas, take, embeddings=E, labeled_embeddings=L, rng=seed,
                           pool_size=len(pool_ids))
        return cand[idx]
    return scores.ids[top_k(scores.utility, take, rng=seed)]


def _views(project: Project, pool: Pool, cand: np.ndarray,
           labeled: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Projected vectors of the candidates and of the labeled (or selected) items."""
    proj = pool_projection(project, pool)
    taken = pool.ids[labeled]
    E = pool.vectors(cand)
    L = pool.vectors(taken) if len(taken) else None
    if proj is not None:
        E = proj(E)
        L = None if L is None else proj(L)
    return E, L
