"""Round close: agreement, consensus, annotator quality and metrics, from the store.

Runs when every task reached its overlap, or when the operator closes the round. It
is idempotent: closing a closed round returns the stored metrics.

Gold items (a trusted label with ``is_gold``) keep their known label: their votes
measure the annotators (``gold_accuracy``) and count in the agreement figures, but they
are neither consensus items nor adjudication items.

Annotator flags rest on the figures that one bad peer cannot drag down: accuracy on
gold items, and each annotator's accuracy on the round's items as the consensus
estimates it (``model_accuracy``: the mean posterior of the labels it gave, under
Dawid-Skene or the model-aware consensus, whose posteriors also rest on the annotators'
track record). An annotator is flagged when either is confidently
below ``agreement.annotator_min_accuracy``: the one-sided 90% Wilson upper bound is
below it, on at least :data:`MIN_ITEMS` items. The leave-one-out accuracy and peer
kappa stay in the metrics, and what they would flag is kept as ``peer_notes``: with
three annotators, a random one pulls both figures of the two good ones down (their
mean peer kappa is about half their kappa with each other), so they cannot be trusted
to flag on their own.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select

from alearn.exceptions import AlearnError, RoundError
from alearn.model.current import TrainedHead, current_head
from alearn.project import Project
from alearn.rounds import metrics as round_metrics
from alearn.rounds.agreement_window import round_agreement_sample
from alearn.rounds.annotator_record import round_counts
from alearn.rounds.lifecycle import CLOSED, COLLECTING, PUSHED, get_round, record_event, transition
from alearn.rounds.votes import consensus, tally, with_posteriors
from alearn.stats.agreement import agreement_report as _agreement_report
from alearn.stats.annotators import annotator_quality
from alearn.stats.consensus import dawid_skene
from alearn.stats.stopping import not_assessed
from alearn.store import Annotation, Label, Round, Selection

log = logging.getLogger(__name__)

N_BOOT = 500
#: A figure raises an annotator flag only if it rests on at least this many items.
MIN_ITEMS = 5
#: One-sided 90% normal quantile for the Wilson bound.
Z_90 = 1.2816


def close_round(project: Project, round_id: int, *,
                recompute: bool = False) -> round_metrics.RoundMetrics:
    """Compute and store the round's consensus labels and metrics, then close it.

    A closed round returns its stored metrics, unless ``recompute``: then its consensus
    labels and metrics are computed again from the votes as they are now (a round marked
    stale by a vote changed after close).
    """
    store, cfg = project.store, project.config
    rnd = get_round(store, round_id)
    if rnd.status == CLOSED and not recompute:
        return round_metrics.of(rnd)
    if rnd.status == CLOSED:
        with store.session() as s:
            s.execute(delete(Label).where(Label.round_id == round_id,
                                          Label.origin == "consensus"))
    elif rnd.status not in (PUSHED, COLLECTING):
        raise RoundError(
            f"round {rnd.number} is {rnd.status}; only a pushed or collecting round can "
            "be closed. Wait for its batch to reach Label Studio."
        )
    votes = tally(project, [round_id])
    metrics = round_metrics.of(rnd)
    metrics.labels_spent = len(votes.votes)
    with store.session() as s:
        metrics.labels_spent_total = s.scalar(
            select(func.count()).select_from(Annotation).where(Annotation.status == "ok")
        )
        metrics.tasks = s.scalar(
            select(func.count()).where(Selection.round_id == round_id)
        )
    consensus_counts: dict[str, int] = {}
    adjudication: list[int] = []
    is_gold = votes.gold >= 0
    if votes.items:
        # with adaptive votes, agreement rests on gold and audit items only: this
        # round's, and earlier rounds' while they are fewer than audit_min_items
        sample, sample_items, window = round_agreement_sample(project, round_id, votes)
        report = (_agreement_report(sample, n_boot=N_BOOT, seed=rnd.number)
                  if sample is not None else None)
        if metrics.adaptive_votes is not None:
            metrics.adaptive_votes.agreement_items = sample_items
            metrics.adaptive_votes.agreement_rounds = window
        cons = consensus(project, votes.ratings, round_id=round_id)
        fit = with_posteriors(project, votes.ratings, cons, round_id)
        metrics.annotator_counts = round_counts(votes.ratings.annotators,
                                                votes.ratings.matrix, fit.posteriors,
                                                votes.gold)
        names, counts = np.unique(cons.status[~is_gold], return_counts=True)
        consensus_counts = {str(k): int(c) for k, c in zip(names, counts, strict=True)}
        annotators = annotator_report(
            votes.ratings, gold=votes.gold, lead_times=votes.lead_times,
            n_classes=len(cfg.classes), min_accuracy=cfg.agreement.annotator_min_accuracy,
            consensus=fit,
        )
        adjudication = _store_consensus(project, round_id, votes.items, cons)
        kappa = _mean_pairwise(report.pairwise_kappa) if report is not None else None
        low = kappa is not None and kappa < cfg.agreement.kappa_threshold
        metrics.agreement, metrics.kappa = report.to_dict() if report else None, kappa
        metrics.alpha = report.krippendorff_alpha.value if report else None
        metrics.consensus_method = cons.method
        metrics.annotators, metrics.flagged = annotators, bool(low)
        if low:
            log.warning("round_event=low_agreement round=%s kappa=%.3f threshold=%.2f",
                        round_id, kappa, cfg.agreement.kappa_threshold)
    else:  # a recompute after every vote was withdrawn keeps nothing of the votes gone
        metrics.annotator_counts, metrics.annotators = {}, []
        metrics.agreement = metrics.kappa = metrics.alpha = metrics.flagged = None
        metrics.consensus_method = None
        if metrics.adaptive_votes is not None:
            metrics.adaptive_votes.agreement_items = None
            metrics.adaptive_votes.agreement_rounds = None
    metrics.consensus, metrics.consensus_items = consensus_counts, int((~is_gold).sum())
    metrics.adjudication_items = adjudication
    metrics.adjudication = round_metrics.AdjudicationTally(
        mode=cfg.agreement.adjudication, items=len(adjudication), pending=len(adjudication))
    head = _head(project)
    metrics.cv_accuracy = head.cv_accuracy if head is not None else None
    from alearn.rounds.convergence import assess_round

    try:
        metrics.set_convergence(assess_round(project, round_id, metrics, head))
    except AlearnError as exc:  # a failed convergence check does not stop a close
        log.warning("round_event=convergence_skipped round=%s reason=%s", round_id, exc)
        metrics.set_convergence(not_assessed(str(exc)).to_dict())
    with store.session() as s:
        row = s.get(Round, round_id)
        if row is None:
            raise RoundError(f"round {round_id} vanished while closing")
        round_metrics.put(row, metrics)
    if rnd.status == CLOSED:
        record_event(store, round_id, "recomputed", labels_spent=metrics.labels_spent)
    else:
        transition(store, round_id, CLOSED)
    log.info("round_event=closed round=%s labels_spent=%s kappa=%s cv_accuracy=%s",
             round_id, metrics.labels_spent, metrics.kappa, metrics.cv_accuracy)
    return metrics


def _head(project: Project) -> TrainedHead | None:
    """The head on all trusted labels (its record holds the cross-validated accuracy);
    None without features or with labels in fewer than two classes."""
    try:
        return current_head(project)
    except AlearnError as exc:  # no features yet does not stop a close
        log.warning("cv accuracy skipped: %s", exc)
        return None


def _store_consensus(project: Project, round_id: int, items: list[int], cons: Any) -> list[int]:
    """Write trusted labels for agreed items; return the items needing adjudication.

    Gold items keep their known label: their votes measure the annotators.
    """
    classes = project.config.classes
    adjudicate: list[int] = []
    with project.store.session() as s:
        existing = {lab.item_id: lab for lab in s.scalars(
            select(Label).where(Label.item_id.in_(items)))}
        for row, item in enumerate(items):
            status, code = str(cons.status[row]), int(cons.labels[row])
            old = existing.get(item)
            if old is not None and (old.is_gold or old.origin in ("manifest", "adjudicated")):
                continue
            if status != "agreed" or code < 0:
                adjudicate.append(item)
                continue
            label = old or Label(item_id=item, origin="consensus")
            label.label, label.confidence = classes[code], float(cons.confidence[row])
            label.method, label.round_id = cons.method, round_id
            s.add(label)
    return adjudicate


def wilson_upper(p: float, n: int, *, z: float = Z_90) -> float:
    """Upper end of the Wilson score interval of a proportion ``p`` over ``n`` trials."""
    if n <= 0:
        return 1.0
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float(min(1.0, (centre + spread) / (1 + z * z / n)))


def model_accuracy(consensus: Any, R: np.ndarray, n_classes: int) -> np.ndarray:
    """Each annotator's accuracy on this round's items as the consensus estimates it: the
    mean, over its votes, of the posterior of the label it gave; shape (n_annotators,),
    NaN for one without votes. Reuses ``consensus`` when it is a Dawid-Skene or
    model-aware fit (whose posteriors also rest on the annotators' track record); with
    majority vote, whose shares are no posterior, Dawid-Skene's. Only this round's votes
    are averaged, so a drop in one round shows in its figure."""
    if consensus is None or consensus.confusion is None:
        consensus = dawid_skene(R, n_classes=n_classes)
    post = np.asarray(consensus.posteriors, dtype=float)
    out = np.full(R.shape[1], np.nan)
    for j in range(R.shape[1]):
        rated = np.flatnonzero(R[:, j] >= 0)
        if rated.size and post.ndim == 2 and post.shape[1]:
            out[j] = float(post[rated, R[rated, j]].mean())
    return out


def annotator_report(
    ratings: Any, *, gold: np.ndarray, lead_times: np.ndarray, n_classes: int,
    min_accuracy: float, consensus: Any = None, min_items: int = MIN_ITEMS,
) -> list[dict[str, Any]]:
    """The round's annotator figures and flags (see the module docstring), as dicts.

    Parameters
    ----------
    ratings : Ratings
        The round's ratings, shape (n_items, n_annotators).
    gold : ndarray of shape (n_items,)
        True class of gold items, -1 elsewhere.
    lead_times : ndarray of shape (n_items, n_annotators)
    consensus : Consensus, optional
        The round's consensus; a Dawid-Skene fit is reused, otherwise one is made.
    """
    quality = annotator_quality(ratings, gold=gold, lead_times=lead_times,
                                n_classes=n_classes, min_accuracy=min_accuracy,
                                min_items=min_items)
    model = model_accuracy(consensus, ratings.matrix, n_classes)
    out = []
    for q, acc in zip(quality, model.tolist(), strict=True):
        d = q.to_dict()
        reasons = []
        if q.gold_accuracy is not None and q.n_gold >= min_items:
            upper = wilson_upper(q.gold_accuracy, q.n_gold)
            if upper < min_accuracy:
                reasons.append(f"accuracy on gold items is {q.gold_accuracy:.2f} on {q.n_gold} "
                               f"items (90% upper bound {upper:.2f} < {min_accuracy:.2f})")
        known = acc == acc  # not NaN
        if known and q.n_items >= min_items:
            upper = wilson_upper(acc, q.n_items)
            if upper < min_accuracy:
                reasons.append(f"estimated accuracy (consensus) is {acc:.2f} on {q.n_items} "
                               f"items (90% upper bound {upper:.2f} < {min_accuracy:.2f})")
        d.update(model_accuracy=float(acc) if known else None, flagged=bool(reasons),
                 reasons=reasons, peer_notes=[r for r in q.reasons if "gold" not in r])
        if reasons:
            log.info("annotator flagged annotator=%s reasons=%s", q.annotator, "; ".join(reasons))
        out.append(d)
    return out


def _mean_pairwise(kappa: Any) -> float | None:
    m = np.asarray(kappa.matrix(), dtype=float)
    vals = m[np.triu_indices_from(m, k=1)]
    vals = vals[np.isfinite(vals)]
    return float(vals.mean()) if vals.size else None
