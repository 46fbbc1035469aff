"""A round's votes as arrays: votes -> ratings -> consensus, read from the store.

Round close, 'more_votes' adjudication and the agreement view all start here, so they
count the same annotations (status ``ok``, not cancelled, with a label) the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select

from alearn.project import Project
from alearn.rounds.annotator_record import carried_counts
from alearn.stats.ratings import Ratings, ratings_matrix
from alearn.store import Annotation, Label

#: (item id, annotator, label, lead time in seconds or None)
Vote = tuple[int, str, str, float | None]


def round_votes(project: Project, round_ids: list[int] | None) -> list[Vote]:
    """The usable annotations of some rounds (None: all rounds), by item and annotator."""
    query = select(Annotation.item_id, Annotation.annotator, Annotation.label,
                   Annotation.lead_time).where(
        Annotation.status == "ok", Annotation.was_cancelled.is_(False),
        Annotation.label.is_not(None),
    ).order_by(Annotation.item_id, Annotation.annotator)
    if round_ids is not None:
        query = query.where(Annotation.round_id.in_(round_ids))
    with project.store.session() as s:
        return [(int(i), str(a), str(lab), t) for i, a, lab, t in s.execute(query).all()]


def lead_time_matrix(ratings: Any, votes: list[Vote]) -> np.ndarray:
    """Seconds per (item, annotator) cell, NaN where unknown; shape of the ratings."""
    rows = {item: r for r, item in enumerate(ratings.items)}
    cols = {who: c for c, who in enumerate(ratings.annotators)}
    out = np.full(ratings.matrix.shape, np.nan)
    for item, who, _label, seconds in votes:
        if seconds is not None:
            out[rows[item], cols[who]] = seconds
    return out


def gold_labels(project: Project, items: list[int]) -> dict[int, int]:
    """item id -> class index of the gold items among ``items``."""
    index = {c: i for i, c in enumerate(project.config.classes)}
    with project.store.session() as s:
        rows = s.execute(select(Label.item_id, Label.label).where(
            Label.is_gold.is_(True), Label.item_id.in_(items))).all()
    return {int(i): index[lab] for i, lab in rows if lab in index}


@dataclass
class Tally:
    """Votes of some rounds as arrays. ``items[r]`` is the item id of ratings row ``r``;
    ``gold[r]`` its gold class index, -1 for items that are not gold."""

    votes: list[Vote]
    ratings: Ratings
    items: list[int]
    gold: np.ndarray
    lead_times: np.ndarray

    @property
    def gold_items(self) -> set[int]:
        return {i for i, g in zip(self.items, self.gold.tolist(), strict=True) if g >= 0}


def tally(project: Project, round_ids: list[int] | None) -> Tally:
    """Read the votes of some rounds (None: all) and lay them out as ratings."""
    votes = round_votes(project, round_ids)
    ratings = ratings_matrix([v[:3] for v in votes], project.config.classes)
    items = [int(str(i)) for i in ratings.items]
    gold = gold_labels(project, items)
    return Tally(votes=votes, ratings=ratings, items=items,
                 gold=np.array([gold.get(i, -1) for i in items], dtype=int),
                 lead_times=lead_time_matrix(ratings, votes))


def consensus(project: Project, ratings: Ratings, *, tie_policy: str | None = None,
              round_id: int | None = None, method: str | None = None) -> Any:
    """The ``agreement.consensus`` method's (or ``method``'s) result over ``ratings``.
    ``tie_policy``: 'first' or 'adjudicate'; by default from ``agreement.tie_policy``.
    With ``round_id`` (ratings of that round), Dawid-Skene and the model-aware consensus
    start from each annotator's track record in the closed rounds before it
    (:mod:`alearn.rounds.annotator_record`)."""
    from alearn.stats.consensus import get_consensus  # scipy: on use, not by 'alearn status'

    cfg = project.config
    method = method or cfg.agreement.consensus
    if tie_policy is None:
        tie_policy = "first" if cfg.agreement.tie_policy == "first" else "adjudicate"
    extra = model_inputs(project, ratings) if method == "model_aware" else {}
    if round_id is not None and method != "majority":
        extra["prior_counts"] = carried_counts(project.store, round_id, ratings.annotators,
                                               len(cfg.classes))
    return get_consensus(method)(
        ratings.matrix, n_classes=len(cfg.classes), tie_policy=tie_policy,
        min_confidence=cfg.agreement.min_confidence, **extra)


def with_posteriors(project: Project, ratings: Ratings, cons: Any,
                    round_id: int | None = None) -> Any:
    """``cons`` (a consensus of ``ratings``) when its posteriors are posteriors; for
    majority vote, whose shares are none (one vote is always 100%), Dawid-Skene's over
    the same ratings and track record. The adaptive-votes posterior, the annotators'
    figures and their track record all read it."""
    if cons.method != "majority":
        return cons
    return consensus(project, ratings, round_id=round_id, method="dawid_skene")


def model_inputs(project: Project, ratings: Ratings) -> dict[str, Any]:
    """What 'model_aware' consensus needs besides the votes: the head's out-of-sample
    probabilities of the rated items (None without a head) and their gold classes."""
    from alearn.model.out_of_sample import project_proba

    items = [int(str(i)) for i in ratings.items]
    gold = gold_labels(project, items)
    return {"pred_probs": project_proba(project, items),
            "gold": np.array([gold.get(i, -1) for i in items], dtype=int)}
