"""Each annotator's track record, carried from one round's consensus to the next.

A round's consensus, and the adaptive-votes posterior while the round runs, read only
that round's votes, so that a close costs O(batch) however many rounds came before. On
its own, a round of 20 items, most of them with one vote, cannot tell a reliable
annotator from a poor one: Dawid-Skene and the model-aware consensus would fit each
confusion on a handful of votes, and a reliable annotator's single vote would never
settle. So every close records, per annotator, the soft confusion counts its consensus
implies (:func:`round_counts`: at ``[c][l]``, the posterior of class ``c`` summed over
the round's items the annotator labelled ``l``; a gold item counts at its true class) in
``RoundMetrics.annotator_counts``; the consensus of a later round adds the sum over the
closed rounds before it (:func:`carried_counts`) to its own confusion counts
(``prior_counts`` of :func:`alearn.stats.consensus.dawid_skene` and ``model_aware``).
A round recomputed later reads the records of the closed rounds numbered before it, as
they are then, never later rounds' (with ``model_aware`` its labels also read the head of
the recompute's time; recomputing an earlier round changes that round's record, and
later rounds see it only when they are recomputed too). Majority vote has no confusions
and ignores the record; its close records Dawid-Skene's counts. A stored record that is
not a k x k table of counts is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import select

from alearn.rounds import metrics as round_metrics
from alearn.rounds.lifecycle import CLOSED
from alearn.store import Round, Store

#: The most votes one round's record may hold in a cell; a larger one is not a round's.
MAX_COUNT = 1e7


def round_counts(annotators: Sequence[Any], matrix: np.ndarray, posteriors: Any,
                 gold: np.ndarray) -> dict[str, list[list[float]]]:
    """Annotator -> k x k soft counts (row: true class, column: the label given) from a
    round's ratings ``matrix`` (n_items, n_annotators; -1 where not rated), the consensus
    ``posteriors`` (n_items, k) and ``gold`` (class index, -1 elsewhere)."""
    post = np.array(posteriors, dtype=float)
    k = post.shape[1] if post.ndim == 2 else 0
    if not k or not len(post):
        return {}
    is_gold = gold >= 0
    post[is_gold] = np.eye(k)[gold[is_gold]]
    out: dict[str, list[list[float]]] = {}
    for j, who in enumerate(annotators):
        rated = matrix[:, j] >= 0
        if not rated.any():
            continue
        counts = np.zeros((k, k))
        np.add.at(counts.T, matrix[rated, j], post[rated])  # counts.T[l] += posterior
        out[str(who)] = np.round(counts, 4).tolist()
    return out


def carried_counts(store: Store, round_id: int, annotators: Sequence[Any], k: int
                   ) -> np.ndarray | None:
    """The summed counts (len(annotators), k, k) of the closed rounds numbered below
    round ``round_id``; None when none of them recorded any for these annotators. A
    record of another shape (the class list changed since) is left out."""
    with store.session() as s:
        number = s.scalar(select(Round.number).where(Round.id == round_id))
    if number is None:
        return None
    records = round_metrics.annotator_counts_of(store, status=CLOSED, below_number=number)
    index = {str(who): j for j, who in enumerate(annotators)}
    total = np.zeros((len(index), k, k))
    found = False
    for record in records:
        for who, counts in record.items():
            j = index.get(str(who))
            c = _counts(counts, k)
            if j is None or c is None:
                continue
            total[j] += c
            found = True
    return total if found else None


def _counts(value: Any, k: int) -> np.ndarray | None:
    """A stored k x k record as counts, or None when it is not one: another shape (the
    class list changed since), not numbers, negative, or beyond any real round's size
    (a record is read, never trusted)."""
    try:
        c = np.asarray(value, dtype=float)
    except (TypeError, ValueError, OverflowError):  # an integer too large for a float
        return None
    if c.shape != (k, k) or not np.isfinite(c).all() or (c < 0).any() or c.max() > MAX_COUNT:
        return None
    return c


__all__ = ["MAX_COUNT", "carried_counts", "round_counts"]
