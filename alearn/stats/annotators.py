"""How good each annotator is, measured against the others and against gold items.

For every annotator (a column of the ratings matrix ``R``, see :mod:`alearn.stats.ratings`):

- **leave-one-out accuracy**: agreement with the majority vote of the *other* annotators
  on each item; items where the others tie, or where nobody else voted, are left out;
- **peer kappa**: the mean of Cohen's kappa with each peer (pairs where kappa is not
  computable are left out);
- **confusion**: counts with rows = the others' majority class, columns = this
  annotator's label, over the same items as the leave-one-out accuracy;
- **gold accuracy**: on items whose true label is known (``gold``, -1 = not gold);
- **median seconds** per task, from a lead-time matrix shaped like ``R``;
- **flagged**: True, with the reasons, when accuracy (leave-one-out or gold) is below
  ``min_accuracy`` or peer kappa below ``min_kappa``. A figure only raises a flag when it
  rests on at least ``min_items`` items, so a newcomer is not flagged on two tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alearn.exceptions import ConfigError
from alearn.stats.pairwise import pairwise_kappa
from alearn.stats.ratings import named_ratings, vote_counts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnnotatorQuality:
    """Quality figures of one annotator. ``confusion`` has shape (n_classes, n_classes):
    rows are the other annotators' majority class, columns this annotator's label."""

    annotator: Hashable
    n_items: int
    loo_accuracy: float | None
    n_loo: int
    peer_kappa: float | None
    n_peers: int
    confusion: np.ndarray
    gold_accuracy: float | None
    n_gold: int
    median_seconds: float | None
    flagged: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the confusion matrix as nested lists)."""
        return {
            "annotator": str(self.annotator), "n_items": self.n_items,
            "loo_accuracy": self.loo_accuracy, "n_loo": self.n_loo,
            "peer_kappa": self.peer_kappa, "n_peers": self.n_peers,
            "confusion": self.confusion.tolist(), "gold_accuracy": self.gold_accuracy,
            "n_gold": self.n_gold, "median_seconds": self.median_seconds,
            "flagged": self.flagged, "reasons": list(self.reasons),
        }


def _mean_or_none(hits: np.ndarray) -> float | None:
    return float(hits.mean()) if hits.size else None


def annotator_quality(
    R: Any, *, gold: Any = None, lead_times: Any = None, min_accuracy: float = 0.7,
    min_kappa: float = 0.4, min_items: int = 5, n_classes: int | None = None,
) -> list[AnnotatorQuality]:
    """Quality of each annotator (column of ``R``), in column order.

    Parameters
    ----------
    R : ndarray of shape (n_items, n_annotators) or Ratings
        Class indices, -1 where not rated. A :class:`Ratings` names the annotators.
    gold : array-like of shape (n_items,), optional
        True class of gold items, -1 for items that are not gold.
    lead_times : array-like of shape (n_items, n_annotators), optional
        Seconds each annotator spent on each item (NaN or any value where not rated).
    min_accuracy, min_kappa : float
        Flag thresholds.
    min_items : int
        A figure raises a flag only if it rests on at least this many items.
    """
    R, k, names = named_ratings(R, n_classes)
    n, a = R.shape
    gold_arr = _check_gold(gold, n, k)
    times = _check_times(lead_times, R.shape)
    votes = vote_counts(R, k)
    kappa = pairwise_kappa(R, n_classes=k, n_boot=0).matrix()
    out = []
    for j in range(a):
        mine = R[:, j]
        rated = mine >= 0
        others = votes.copy()
        others[np.flatnonzero(rated), mine[rated]] -= 1
        top = others.max(1) if k else np.zeros(n, dtype=np.int64)
        unique_top = (others == top[:, None]).sum(1) == 1
        use = rated & (top > 0) & unique_top
        loo = others.argmax(1) if k else np.zeros(n, dtype=np.int64)
        confusion = np.zeros((k, k), dtype=np.int64)
        np.add.at(confusion, (loo[use], mine[use]), 1)
        loo_acc = _mean_or_none(mine[use] == loo[use])
        peers = np.delete(kappa[j], j)
        peers = peers[np.isfinite(peers)]
        peer_kappa = float(peers.mean()) if peers.size else None
        on_gold = rated & (gold_arr >= 0)
        gold_acc = _mean_or_none(mine[on_gold] == gold_arr[on_gold])
        t = times[rated, j] if times is not None else np.zeros(0)
        t = t[np.isfinite(t)]
        median = float(np.median(t)) if t.size else None
        n_rated, n_loo, n_gold = int(rated.sum()), int(use.sum()), int(on_gold.sum())
        reasons = []
        if loo_acc is not None and n_loo >= min_items and loo_acc < min_accuracy:
            reasons.append(f"accuracy against the other annotators' majority is {loo_acc:.2f} "
                           f"(< {min_accuracy:.2f}) on {n_loo} items")
        if gold_acc is not None and n_gold >= min_items and gold_acc < min_accuracy:
            reasons.append(f"accuracy on gold items is {gold_acc:.2f} (< {min_accuracy:.2f}) "
                           f"on {n_gold} items")
        if peer_kappa is not None and n_rated >= min_items and peer_kappa < min_kappa:
            reasons.append(f"mean Cohen's kappa with {peers.size} peers is {peer_kappa:.2f} "
                           f"(< {min_kappa:.2f})")
        out.append(AnnotatorQuality(
            annotator=names[j], n_items=n_rated, loo_accuracy=loo_acc, n_loo=n_loo,
            peer_kappa=peer_kappa, n_peers=int(peers.size), confusion=confusion,
            gold_accuracy=gold_acc, n_gold=n_gold, median_seconds=median,
            flagged=bool(reasons), reasons=reasons,
        ))
        if reasons:
            log.info("annotator flagged annotator=%s reasons=%s", names[j], "; ".join(reasons))
    return out


def _check_gold(gold: Any, n: int, k: int) -> np.ndarray:
    if gold is None:
        return np.full(n, -1, dtype=np.int64)
    g = np.asarray(gold)
    if g.shape != (n,) or not np.issubdtype(g.dtype, np.integer):
        raise ConfigError(
            f"gold must be an integer array of shape ({n},) with -1 for non-gold items; got "
            f"shape {g.shape} and dtype {g.dtype}."
        )
    if g.size and (g.min() < -1 or g.max() >= k):
        raise ConfigError(f"gold holds values outside -1..{k - 1}; got {g.min()}..{g.max()}.")
    return g.astype(np.int64)


def _check_times(lead_times: Any, shape: tuple[int, int]) -> np.ndarray | None:
    if lead_times is None:
        return None
    t = np.asarray(lead_times, dtype=np.float64)
    if t.shape != shape:
        raise ConfigError(
            f"lead_times must have the shape of the ratings matrix {shape}; got {t.shape}."
        )
    return t


__all__ = ["AnnotatorQuality", "annotator_quality"]
