"""Label-error ranking: which trusted labels are most likely wrong.

Two views of each trusted label are combined:

- **confident learning** over the head's cross-validated probabilities (cleanlab's
  ``find_label_issues``, the maintained reference): a label it flags is one the model,
  calibrated per class on all the labels, confidently puts in another class; and the
  model's self-confidence in the label (cleanlab's ``get_label_quality_scores``);
- the **consensus quality**: the posterior of the label under the model-aware consensus
  of all the item's votes, recomputed with the current head.

With a consensus posterior the error score is ``1 - consensus quality``, confident
learning's flag breaking ties, and a label is *doubtful* (worth a reviewer's click) when
its posterior is below ``settled_at`` (``agreement.confidence_target``, the mark at which
adaptive votes stop asking). The posterior already holds the model (its out-of-sample
probabilities are the consensus's prior) and the votes; adding the model's view or
cleanlab's flag to it again counts the model twice. In the annotation benchmark the
combined score ranked the wrong labels worse than the posterior alone, and a review gate
on "flagged, or the model prefers another class" sent about five labels a round while
the head was weak, most of them right. Without a
consensus posterior the score is ``flagged + (1 - model quality)``: flagged labels first,
each group ordered by the model's quality, and a label is doubtful when confident
learning flags it or the model prefers another class. Gold, manifest and adjudicated
labels are known, so they are not ranked.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select

from alearn.exceptions import ConfigError
from alearn.model.out_of_sample import project_proba
from alearn.project import Project
from alearn.rounds.votes import tally
from alearn.stats.consensus import model_aware
from alearn.store import Label

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelErrorRanking:
    """Arrays over the ranked labels (rows in input order) and ``order``, the rows most
    likely wrong first."""

    order: np.ndarray
    score: np.ndarray
    flagged: np.ndarray
    model_quality: np.ndarray
    consensus_quality: np.ndarray | None
    suggested: np.ndarray  # the model's most probable class (its view, for a reviewer)
    #: a label worth a reviewer's click: its consensus posterior is below ``settled_at``
    #: (without one: confident learning flags it, or the model prefers another class)
    doubtful: np.ndarray


def rank_label_errors(labels: Any, pred_probs: Any, *, consensus_posteriors: Any = None,
                      settled_at: float = 0.95) -> LabelErrorRanking:
    """Rank labels by how likely each is wrong.

    Parameters
    ----------
    labels : array-like of int, shape (n,)
        The trusted labels, class indices.
    pred_probs : array-like of shape (n, n_classes)
        Out-of-sample (cross-validated) probabilities of each item.
    consensus_posteriors : array-like of shape (n, n_classes), optional
        Each item's consensus posterior over the classes (model-aware consensus of its
        votes); without it the ranking rests on the model alone.
    settled_at : float
        A label whose consensus posterior reaches this is settled, not doubtful
        (``agreement.confidence_target``).
    """
    y = np.asarray(labels, dtype=int).ravel()
    P = np.asarray(pred_probs, dtype=float)
    if P.ndim != 2 or len(P) != len(y) or (len(y) and (y.min() < 0 or y.max() >= P.shape[1])):
        raise ConfigError(f"need labels (n,) in 0..k-1 and pred_probs (n, k); got labels "
                          f"{y.shape} and pred_probs {P.shape}.")
    P = np.nan_to_num(P, nan=1.0 / max(P.shape[1], 1))
    P = P / np.maximum(P.sum(1, keepdims=True), 1e-12)
    flagged = _confident_learning(y, P)
    rows = np.arange(len(y))
    model_q = P[rows, y] if len(y) else np.zeros(0)
    cons_q, suggested = None, P.argmax(1) if len(y) else np.zeros(0, dtype=int)
    score = flagged + (1.0 - model_q)
    doubtful = flagged | (suggested != y)
    if consensus_posteriors is not None:
        C = np.asarray(consensus_posteriors, dtype=float)
        if C.shape != P.shape:
            raise ConfigError(f"consensus_posteriors has shape {C.shape}; need {P.shape}.")
        cons_q = C[rows, y]
        score = 1.0 - cons_q  # the posterior holds the model already: see the docstring
        doubtful = cons_q < settled_at
    order = np.lexsort((rows, -flagged.astype(int), -score))
    return LabelErrorRanking(order=order, score=score, flagged=flagged, model_quality=model_q,
                             consensus_quality=cons_q, suggested=suggested,
                             doubtful=np.asarray(doubtful, dtype=bool))


def _confident_learning(y: np.ndarray, P: np.ndarray) -> np.ndarray:
    """cleanlab's find_label_issues as a bool array; all False when it cannot run (fewer
    than two labeled classes or too few labels), with the reason logged."""
    from cleanlab.filter import find_label_issues

    if len(np.unique(y)) < 2 or len(y) < P.shape[1]:
        log.info("label errors: confident learning skipped (%d labels in %d classes)",
                 len(y), len(np.unique(y)))
        return np.zeros(len(y), dtype=bool)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flags = np.asarray(find_label_issues(y, P, n_jobs=1), dtype=bool)
    for w in caught:
        log.info("label errors: cleanlab says %s", w.message)
    return flags


@dataclass(frozen=True)
class SuspectLabel:
    """A trusted label ranked by :func:`project_label_errors`."""

    item_id: int
    label: str
    suggested: str
    score: float
    flagged: bool
    votes: dict[str, str]
    suggested_proba: float = float("nan")  # the model's probability of ``suggested``
    doubtful: bool = True  # see LabelErrorRanking.doubtful; only these go to review


def project_label_errors(project: Project, *, limit: int | None = None) -> list[SuspectLabel]:
    """The project's consensus labels, most likely wrong first (at most ``limit``).

    Every round's votes are pooled for the consensus (so the annotators' confusions rest
    on all their work), the head's probabilities are cross-validated over the trusted
    labels; an empty list while there is no head yet.
    """
    classes = project.config.classes
    index = {c: i for i, c in enumerate(classes)}
    with project.store.session() as s:
        trusted = {int(i): str(lab) for i, lab in s.execute(select(Label.item_id, Label.label)
                   .where(Label.origin == "consensus", Label.is_gold.is_(False))).all()
                   if lab in index}
    votes = tally(project, None)
    rows = [r for r, item in enumerate(votes.items) if item in trusted]
    if not rows:
        return []
    P_all = project_proba(project, votes.items)
    if P_all is None:
        log.info("label errors: no head yet (fewer than two classes labeled)")
        return []
    cons = model_aware(votes.ratings.matrix, n_classes=len(classes), pred_probs=P_all,
                       gold=votes.gold, tie_policy="first")
    sel = np.asarray(rows)
    items = [votes.items[r] for r in rows]
    y = np.array([index[trusted[i]] for i in items])
    known = ~np.isnan(P_all[sel]).any(1)
    Pk = P_all[sel][known]
    ranking = rank_label_errors(y[known], Pk, consensus_posteriors=cons.posteriors[sel][known],
                                settled_at=project.config.agreement.confidence_target)
    kept = [i for i, k in zip(items, known.tolist(), strict=True) if k]
    by_item: dict[int, dict[str, str]] = {}
    for item, who, label, _ in votes.votes:
        by_item.setdefault(item, {})[who] = label
    out = [SuspectLabel(item_id=kept[r], label=trusted[kept[r]],
                        suggested=classes[int(ranking.suggested[r])],
                        score=float(ranking.score[r]), flagged=bool(ranking.flagged[r]),
                        votes=by_item.get(kept[r], {}),
                        suggested_proba=float(Pk[r, int(ranking.suggested[r])]),
                        doubtful=bool(ranking.doubtful[r]))
           for r in ranking.order.tolist()]
    return out if limit is None else out[:limit]


__all__ = ["LabelErrorRanking", "SuspectLabel", "project_label_errors", "rank_label_errors"]
