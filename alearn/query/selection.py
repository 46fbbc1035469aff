"""Batch planning: score the unlabeled pool with the head and pick the next batch.

The pool is every item with cached features, minus items with a trusted label, minus
items any earlier round selected, minus ``exclude``. Strategy ``'auto'`` resolves with
:func:`alearn.query.strategies.choose_strategy`; a strategy that needs the head falls back to
the cold-start strategy while there is no head (labels in fewer than two classes).

Score convention: :attr:`PlannedItem.score` is lower for items to label first, as Label
Studio's "Uncertainty sampling" serves the lowest prediction score first. With a head
it is ``p_top1 - p_top2`` in [0, 1], i.e. ``1 - uncertainty_margin`` (low = uncertain);
without a head it is ``rank / batch size``.

Gold items: with ``rounds.gold_rate`` > 0, ``round(batch * gold_rate)`` of the batch (at
least one, at most all but one) are gold items, i.e. items whose trusted label is known
(``Label.is_gold``), so that annotators can be measured against the truth. Gold never
shown in an earlier round comes first; the choice and their places in the ranking are
seeded. Annotators must not be able to tell them apart: a gold item gets the head's
prediction like any other item, and a score between its neighbours' in the ranking.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import func, select

from alearn.exceptions import EmptyPoolError
from alearn.features.pool import Pool, open_pool
from alearn.model.current import current_head, head_of
from alearn.model.head import EmbeddingClassifier
from alearn.project import Project
from alearn.query.pool_select import pick
from alearn.query.strategies import (
    NEEDS_HEAD,
    check_strategy_name,
    choose_strategy,
    get_strategy,
)
from alearn.query.utilities import RngLike, uncertainty_margin
from alearn.store import Item, Label, Selection

logger = logging.getLogger(__name__)


@dataclass
class PlannedItem:
    """One item of a planned batch; ``rank`` 0 is the most wanted."""

    item_id: int
    path: str
    score: float
    predicted: str | None
    rank: int
    is_gold: bool = False


@dataclass
class Plan:
    """A planned batch: the resolved strategy, the head used and the ranked items."""

    strategy: str
    model_version: str | None
    items: list[PlannedItem] = field(default_factory=list)
    n_pool: int = 0
    n_train: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_strategy(name: str, *, has_head: bool, cold_start: str) -> str:
    """``name``, or the cold-start strategy when ``name`` needs a head and there is none."""
    if name in NEEDS_HEAD and not has_head:
        return cold_start if cold_start not in NEEDS_HEAD else "typiclust"
    return name


def select_from_pool(
    name: str,
    n: int,
    *,
    X_pool: np.ndarray,
    head: EmbeddingClassifier | None = None,
    X_labeled: np.ndarray | None = None,
    rng: RngLike = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Run strategy ``name`` on the pool.

    Parameters
    ----------
    name : str
        A registered strategy (not 'auto').
    n : int
        Batch size.
    X_pool : ndarray of shape (n_pool, dim)
        Embeddings of the unlabeled pool.
    head : EmbeddingClassifier or None
        Fitted head; needed by strategies in ``NEEDS_HEAD``.
    X_labeled : ndarray of shape (n_labeled, dim) or None
        Embeddings of labeled and already-selected items.
    rng : Generator, int or None

    Returns
    -------
    indices : ndarray of int64, shape (min(n, n_pool),)
        Ranked rows of ``X_pool``.
    probas : ndarray of shape (n_pool, n_classes) or None
        The head's probabilities on the pool (columns in ``head.classes_``).
    """
    strategy = get_strategy(name)
    probas = head.predict_proba(X_pool) if head is not None else None
    idx = strategy(probas, n, embeddings=X_pool, labeled_embeddings=X_labeled, rng=rng)
    return idx, probas


def plan_batch(
    project: Project,
    *,
    batch_size: int | None = None,
    strategy: str | None = None,
    model_version: str | None = None,
    exclude: Iterable[int] = (),
) -> Plan:
    """Plan the next batch (nothing is written but the head, if it is trained here).

    Parameters
    ----------
    project : Project
    batch_size : int, optional
        Defaults to ``rounds.batch_size``.
    strategy : str, optional
        A registered name or 'auto'; defaults to ``rounds.strategy``.
    model_version : str, optional
        A saved head to score with (the select job passes its train job's); by default
        the current head (:func:`alearn.model.current.current_head`).
    exclude : iterable of int
        Item ids to leave out of the pool.
    """
    cfg = project.config
    n = cfg.rounds.batch_size if batch_size is None else batch_size
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    requested = check_strategy_name(strategy or cfg.rounds.strategy)
    pool = open_pool(project)
    ids = pool.ids
    store = project.store
    labels = store.trusted_labels()
    with store.session() as s:
        chosen = set(s.scalars(select(Selection.item_id).distinct()))
    taken = set(labels) | chosen
    labeled = np.isin(ids, np.fromiter(taken, dtype=np.int64))
    in_pool = ~labeled & ~np.isin(ids, np.fromiter(set(exclude), dtype=np.int64))
    if not in_pool.any():
        raise EmptyPoolError(_empty_pool_hint(project, len(ids), len(labels), len(chosen)))
    head, version, n_train = _head(project, model_version)
    counts = Counter(labels.values())
    name = choose_strategy(cfg.rounds.model_copy(update={"strategy": requested}), counts,
                           cfg.classes)
    name = resolve_strategy(name, has_head=head is not None,
                            cold_start=cfg.rounds.cold_start_strategy)
    seed = zlib.crc32(f"{version}:{len(ids)}:{len(taken)}:{name}".encode())
    gold_ids = _gold_candidates(project, exclude=set(exclude), chosen=chosen, seed=seed)
    n_gold = gold_count(n, cfg.rounds.gold_rate, len(gold_ids))
    chosen_ids = pick(name, n - n_gold, project=project, pool=pool, in_pool=in_pool,
                      labeled=labeled, head=head, seed=seed, head_version=version)
    scored = head is not None and name in NEEDS_HEAD
    if scored and head is not None:
        probas = head.predict_proba(pool.vectors(chosen_ids))
        scores = 1.0 - uncertainty_margin(probas)
        predicted: list[str | None] = [str(c) for c in head.classes_[probas.argmax(1)]]
    else:
        scores = np.arange(len(chosen_ids)) / max(len(chosen_ids), 1)
        predicted = [None] * len(chosen_ids)
    ranked: list[tuple[int, float, str | None, bool]] = [
        (int(i), float(sc), p, False)
        for i, sc, p in zip(chosen_ids.tolist(), scores.tolist(), predicted, strict=True)
    ]
    if n_gold:
        ranked = _mix_gold(ranked, gold_ids[:n_gold], pool=pool, head=head, scored=scored,
                           seed=seed)
    with store.session() as s:
        wanted = [r[0] for r in ranked]
        paths = dict(s.execute(select(Item.id, Item.path).where(Item.id.in_(wanted))).all())
    items = [
        PlannedItem(item_id=i, path=paths.get(i, ""), score=sc, predicted=p, rank=r,
                    is_gold=g)
        for r, (i, sc, p, g) in enumerate(ranked)
    ]
    logger.info("plan strategy=%s requested=%s model_version=%s pool=%d items=%d gold=%d",
                name, requested, version, int(in_pool.sum()), len(items), n_gold)
    return Plan(strategy=name, model_version=version, items=items,
                n_pool=int(in_pool.sum()), n_train=n_train)


def _head(project: Project, version: str | None) -> tuple[EmbeddingClassifier | None,
                                                           str | None, int]:
    """(head, version, n_train): the given saved head, else the current one (or none)."""
    trained = current_head(project) if version is None else head_of(project, version)
    if trained is None:
        return None, None, 0
    return trained.head, trained.version, trained.n_train


def gold_count(batch_size: int, rate: float, available: int) -> int:
    """Gold items in a batch: ``round(batch_size * rate)``, at least 1 when ``rate`` > 0,
    at most ``available`` and at most ``batch_size - 1`` (a batch is never all gold)."""
    if rate <= 0 or available <= 0 or batch_size < 2:
        return 0
    return min(max(1, round(batch_size * rate)), available, batch_size - 1)


def _empty_pool_hint(project: Project, n_embedded: int, n_labeled: int,
                     n_chosen: int) -> str:
    """Why nothing is left to select, with the command that fixes that cause."""
    with project.store.session() as s:
        n_items = s.scalar(select(func.count()).select_from(Item)) or 0
    if n_items == 0:
        return "nothing to select: no images are ingested yet. Run 'alearn ingest'."
    if n_embedded < n_items:
        return (f"nothing to select: {n_items - n_embedded} of {n_items} ingested items are "
                f"not embedded yet ({n_labeled} labeled, {n_chosen} already selected). "
                "Run 'alearn embed'.")
    return (f"nothing to select: all {n_items} items are labeled ({n_labeled}) or already "
            f"selected ({n_chosen}). Add images under the image root, then run 'alearn "
            "ingest' and 'alearn embed'.")


def _gold_candidates(project: Project, *, exclude: set[int], chosen: set[int],
                     seed: int) -> list[int]:
    """Gold item ids, in the order to use them: never shown first, each group shuffled."""
    with project.store.session() as s:
        gold = sorted(int(i) for i in s.scalars(
            select(Label.item_id).join(Item, Item.id == Label.item_id)
            .where(Label.is_gold.is_(True))))
    rng = np.random.default_rng(zlib.crc32(f"{seed}:gold".encode()))
    fresh = [i for i in gold if i not in chosen and i not in exclude]
    shown = [i for i in gold if i in chosen and i not in exclude]
    return [int(i) for i in rng.permutation(fresh)] + [int(i) for i in rng.permutation(shown)]


def _mix_gold(
    ranked: list[tuple[int, float, str | None, bool]],
    gold: list[int],
    *,
    pool: Pool,
    head: EmbeddingClassifier | None,
    scored: bool,
    seed: int,
) -> list[tuple[int, float, str | None, bool]]:
    """Put gold items at seeded places of the ranking, looking like their neighbours.

    ``ranked`` holds ``(item id, score, predicted, is_gold)`` in rank order. A gold item
    gets the head's predicted class (when it has features and there is a head) and the
    mean score of its neighbours; without a head every score is ``rank / batch size``.
    """
    rng = np.random.default_rng(zlib.crc32(f"{seed}:gold-places".encode()))
    total = len(ranked) + len(gold)
    places = set(rng.choice(total, size=len(gold), replace=False).tolist())
    predicted: dict[int, str | None] = {}
    if head is not None:
        have = [g for g, at in zip(gold, pool.positions(np.asarray(gold, dtype=np.int64))
                                   .tolist(), strict=True) if at >= 0]
        if have:
            p = head.predict_proba(pool.vectors(np.asarray(have, dtype=np.int64)))
            predicted = {g: str(c) for g, c in zip(have, head.classes_[p.argmax(1)], strict=True)}
    rest, golds = iter(ranked), iter(gold)
    out = [next(golds) if r in places else next(rest) for r in range(total)]
    mixed = [e if isinstance(e, tuple) else (e, float("nan"), predicted.get(e), True)
             for e in out]
    if not scored:
        return [(i, r / total, p, g) for r, (i, _sc, p, g) in enumerate(mixed)]
    scores = np.array([m[1] for m in mixed])
    real = np.flatnonzero(~np.isnan(scores))
    for r in np.flatnonzero(np.isnan(scores)):
        before, after = real[real < r], real[real > r]
        near = [scores[before[-1]]] if before.size else []
        near += [scores[after[0]]] if after.size else []
        scores[r] = float(np.mean(near)) if near else 0.5
    return [(i, float(sc), p, g) for (i, _s, p, g), sc in zip(mixed, scores, strict=True)]
