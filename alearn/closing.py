"""Round close: agreement, consensus, annotator quality and metrics, from the store.

Runs when every task reached its overlap, or when the operator closes the round. It
is idempotent: closing a closed round returns the stored metrics.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sqlalchemy import func, select

from alearn.agreement import agreement_report as _agreement_report
from alearn.agreement import ratings_matrix
from alearn.annotator_quality import annotator_quality
from alearn.consensus import get_consensus
from alearn.exceptions import AlearnError, RoundError
from alearn.project import Project
from alearn.rounds import CLOSED, COLLECTING, PUSHED, get_round, transition
from alearn.store import Annotation, Label, Round, Selection

log = logging.getLogger(__name__)

N_BOOT = 500


def round_votes(
    project: Project, round_ids: list[int] | None
) -> list[tuple[int, str, str, float | None]]:
    """(item id, annotator, label, lead time) of the usable annotations of some rounds
    (None: all rounds)."""
    query = select(Annotation.item_id, Annotation.annotator, Annotation.label,
                   Annotation.lead_time).where(
        Annotation.status == "ok", Annotation.was_cancelled.is_(False),
        Annotation.label.is_not(None),
    ).order_by(Annotation.item_id, Annotation.annotator)
    if round_ids is not None:
        query = query.where(Annotation.round_id.in_(round_ids))
    with project.store.session() as s:
        return [(int(i), str(a), str(lab), t) for i, a, lab, t in s.execute(query).all()]


def close_round(project: Project, round_id: int) -> dict[str, Any]:
    """Compute and store the round's consensus labels and metrics, then close it."""
    store, cfg = project.store, project.config
    rnd = get_round(store, round_id)
    if rnd.status == CLOSED:
        return dict(rnd.metrics or {})
    if rnd.status not in (PUSHED, COLLECTING):
        raise RoundError(
            f"round {rnd.number} is {rnd.status}; only a pushed or collecting round can "
            "be closed. Wait for its batch to reach Label Studio."
        )
    classes = cfg.classes
    votes = round_votes(project, [round_id])
    ratings = ratings_matrix([v[:3] for v in votes], classes)
    items = [int(i) for i in ratings.items]
    lead_times = lead_time_matrix(ratings, votes)
    gold = gold_labels(project, items)
    metrics: dict[str, Any] = dict(rnd.metrics or {})
    metrics["labels_spent"] = len(votes)
    with store.session() as s:
        metrics["labels_spent_total"] = s.scalar(
            select(func.count()).select_from(Annotation).where(Annotation.status == "ok")
        )
        metrics["tasks"] = s.scalar(
            select(func.count()).where(Selection.round_id == round_id)
        )
    consensus_counts: dict[str, int] = {}
    adjudication: list[int] = []
    if items:
        report = _agreement_report(ratings, n_boot=N_BOOT, seed=rnd.number)
        method = get_consensus(cfg.agreement.consensus)
        tie = "first" if cfg.agreement.tie_policy == "first" else "adjudicate"
        cons = method(ratings.matrix, n_classes=len(classes), tie_policy=tie,
                      min_confidence=cfg.agreement.min_confidence)
        consensus_counts = cons.status_counts()
        quality = annotator_quality(
            ratings, gold=np.array([gold.get(i, -1) for i in items]), lead_times=lead_times,
            n_classes=len(classes), min_accuracy=cfg.agreement.annotator_min_accuracy,
        )
        adjudication = _store_consensus(project, round_id, items, cons)
        kappa = report.pairwise_kappa
        metrics.update(
            agreement=report.to_dict(),
            kappa=_mean_pairwise(kappa),
            alpha=report.krippendorff_alpha.value,
            consensus_method=cons.method,
            annotators=[q.to_dict() for q in quality],
        )
        low = metrics["kappa"] is not None and metrics["kappa"] < cfg.agreement.kappa_threshold
        metrics["flagged"] = bool(low)
        if low:
            log.warning("round_event=low_agreement round=%s kappa=%.3f threshold=%.2f",
                        round_id, metrics["kappa"], cfg.agreement.kappa_threshold)
    metrics.update(consensus=consensus_counts, consensus_items=len(items),
                   adjudication_items=adjudication, cv_accuracy=_cv_accuracy(project))
    from alearn.convergence import assess_round, not_assessed

    try:
        metrics["convergence"] = assess_round(project, round_id, metrics)
    except AlearnError as exc:  # a failed convergence check does not stop a close
        log.warning("round_event=convergence_skipped round=%s reason=%s", round_id, exc)
        metrics["convergence"] = not_assessed(str(exc)).to_dict()
    metrics["converged"] = metrics["convergence"]["converged"]
    with store.session() as s:
        row = s.get(Round, round_id)
        if row is None:
            raise RoundError(f"round {round_id} vanished while closing")
        row.metrics = metrics
    transition(store, round_id, CLOSED)
    log.info("round_event=closed round=%s labels_spent=%s kappa=%s cv_accuracy=%s",
             round_id, metrics["labels_spent"], metrics.get("kappa"), metrics["cv_accuracy"])
    return metrics


def lead_time_matrix(ratings: Any, votes: list[tuple[int, str, str, float | None]]) -> np.ndarray:
    """Seconds per (item, annotator) cell, NaN where unknown; shape of the ratings."""
    rows = {item: r for r, item in enumerate(ratings.items)}
    cols = {who: c for c, who in enumerate(ratings.annotators)}
    out = np.full(ratings.matrix.shape, np.nan)
    for item, who, _label, seconds in votes:
        if seconds is not None:
            out[rows[item], cols[who]] = seconds
    return out


def gold_labels(project: Project, items: list[int]) -> dict[int, int]:
    index = {c: i for i, c in enumerate(project.config.classes)}
    with project.store.session() as s:
        rows = s.execute(select(Label.item_id, Label.label).where(
            Label.is_gold.is_(True), Label.item_id.in_(items))).all()
    return {int(i): index[lab] for i, lab in rows if lab in index}


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
            if old is not None and old.origin in ("manifest", "adjudicated"):
                continue
            if status != "agreed" or code < 0:
                adjudicate.append(item)
                continue
            label = old or Label(item_id=item, origin="consensus")
            label.label, label.confidence = classes[code], float(cons.confidence[row])
            label.method, label.round_id = cons.method, round_id
            s.add(label)
    return adjudicate


def _mean_pairwise(kappa: Any) -> float | None:
    m = np.asarray(kappa.matrix(), dtype=float)
    vals = m[np.triu_indices_from(m, k=1)]
    vals = vals[np.isfinite(vals)]
    return float(vals.mean()) if vals.size else None


def _cv_accuracy(project: Project) -> float | None:
    """Cross-validated accuracy of the head on all trusted labels (None if too few)."""
    from alearn import training

    try:
        ids, X = training.pool_features(project)
    except AlearnError as exc:  # no features yet does not stop a close
        log.warning("cv accuracy skipped: %s", exc)
        return None
    _, X, y = training.training_set(project, ids, X)
    return training.cv_accuracy(training.make_head(project), X, y) if len(y) else None
