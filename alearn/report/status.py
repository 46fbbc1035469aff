"""What an operator asks first: how big is the pool, how many trusted labels, where
is the current round. Read from the store only (queues are added by the CLI).

It reads counts, never whole tables: the pool, the labels and the annotations set aside
are counted in the database (only the latest :data:`SET_ASIDE_SHOWN` set-aside votes are
listed), each table at most once (the labels by class and origin in one pass, the
annotations by status in one), and nothing here imports numpy or scikit-learn or reads
the feature cache, so it answers in well under a second at a million items.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import func, select

from alearn.project import Project
from alearn.rounds import metrics as round_metrics
from alearn.rounds.adjudication import adjudication_status
from alearn.rounds.clicks import clicks_summary
from alearn.rounds.label_history import review_status
from alearn.rounds.lifecycle import (
    ACTIVE,
    CLOSED,
    FAILED,
    active_round,
    round_progress,
    stale_rounds,
)
from alearn.store import Annotation, FileRecord, Item, Label, QuarantinedAnnotation, Round

#: The set-aside votes ``status`` lists, newest first (all are counted).
SET_ASIDE_SHOWN = 20


def project_status(project: Project) -> dict[str, Any]:
    """A JSON-able summary of the project's state."""
    store = project.store
    with store.session() as s:
        pool = s.scalar(select(func.count()).select_from(Item)) or 0
        rejected = s.scalar(
            select(func.count()).where(FileRecord.status == "rejected")
        ) or 0
        by_class: Counter[str] = Counter()
        by_origin: Counter[str] = Counter()
        for label, origin, n in s.execute(select(Label.label, Label.origin, func.count())
                                          .group_by(Label.label, Label.origin)):
            by_class[label] += n
            by_origin[origin] += n
        by_status = dict(s.execute(select(Annotation.status, func.count())
                                   .group_by(Annotation.status)).all())
        round_rows = list(s.scalars(select(Round).order_by(Round.number)))
        rounds = [
            {"number": r.number, "status": r.status, "strategy": r.strategy,
             "batch_size": r.batch_size, "overlap": r.overlap,
             "model_version": r.model_version, **_headline(round_metrics.of(r)),
             "error": r.error}
            for r in round_rows
        ]
        aside = [
            {"ls_annotation_id": a.ls_annotation_id, "item_id": a.item_id,
             "annotator": a.annotator, "label": a.label, "reason": a.reason}
            for a in s.scalars(select(Annotation).where(Annotation.status != "ok")
                               .order_by(Annotation.id.desc()).limit(SET_ASIDE_SHOWN))
        ][::-1]
        aside_total = sum(n for st, n in by_status.items() if st != "ok")
        quarantined = dict(s.execute(select(QuarantinedAnnotation.kind, func.count())
                                     .group_by(QuarantinedAnnotation.kind)).all())
    current = active_round(store)
    return {
        "attention": _attention(project, round_rows, rounds),
        "quarantined_annotations": quarantined,
        "project": project.config.name,
        "classes": project.config.classes,
        "pool_size": pool,
        "rejected_files": rejected,
        "trusted_labels": sum(by_class.values()),
        "trusted_by_class": {c: by_class.get(c, 0) for c in project.config.classes},
        "trusted_by_origin": dict(sorted(by_origin.items())),
        "unlabeled": pool - sum(by_class.values()),
        "rounds": rounds,
        "current_round": round_progress(store, current.id).to_dict() if current else None,
        "set_aside_annotations": aside,
        "set_aside_total": aside_total,
        "convergence": _convergence(project),
        "adjudication": adjudication_status(project),
        "label_review": review_status(store),
        "votes": _votes(project, clicks_summary(sum(by_status.values()), by_origin)),
        "ls_project_id": store.get_meta("ls_project_id"),
    }


def _attention(project: Project, rows: list[Round], rounds: list[dict[str, Any]]
               ) -> list[str]:
    """Rounds that need a person, each with the command that fixes it; marks the
    ``rounds`` entries of stale rounds."""
    from alearn.team import reviewers, roster

    out = []
    closed = [r for r in rows if r.status == CLOSED]
    stale = stale_rounds(project.store, [r.id for r in closed])
    for row, entry in zip(rows, rounds, strict=True):
        number = row.number
        if row.status == FAILED:
            out.append(f"round {number} failed at {row.error}. Fix the cause, then run "
                       f"'alearn round retry --round {number}' to resume it, or 'alearn "
                       f"round abort --round {number}' to end it.")
        elif row.status == CLOSED:
            entry["stale"] = row.id in stale
            if row.id in stale:
                n = sum(len(c.get("changes") or []) for c in stale[row.id])
                out.append(f"round {number} is stale: {n} vote(s) changed in Label Studio "
                           f"after it closed. Run 'alearn round close --round {number}' to "
                           "recompute it.")
        elif row.status in ACTIVE and row.error:
            out.append(f"round {number}: {row.error}")
    if not roster(project.store):
        out.append("the roster is empty, so no vote counts. Add annotators with 'alearn ls "
                   "users add NAME'.")
    agreement = project.config.agreement
    if agreement.adjudication == "review" and not reviewers(project.store, agreement.reviewers):
        waiting = sum(len(round_metrics.of(r).adjudication_items) for r in closed)
        if waiting:
            out.append(f"{waiting} item(s) wait for adjudication but the project has no "
                       "reviewer. Add one with 'alearn ls users add NAME --role reviewer'.")
    return out


def _headline(m: round_metrics.RoundMetrics) -> dict[str, Any]:
    return {"labels_spent": m.labels_spent, "cv_accuracy": m.cv_accuracy, "kappa": m.kappa,
            "consensus_items": m.consensus_items, "flagged": m.flagged}


def _votes(project: Project, clicks: dict[str, Any]) -> dict[str, Any]:
    """Clicks per trusted label (``clicks``, from :func:`alearn.rounds.clicks.clicks_summary`)
    and each adaptive-votes round's votes: the limits, the items asked for more than
    min_votes, and the items its agreement figures rest on."""
    rounds = []
    for rnd, m in round_metrics.by_round(project.store):
        plan = m.adaptive_votes
        if plan is not None:
            rounds.append({"number": rnd.number, "min_votes": plan.min_votes,
                           "max_votes": plan.max_votes, "asked_more": len(plan.targets),
                           "audit_items": plan.audit_items, "kappa": m.kappa,
                           "agreement_items": plan.agreement_items,
                           "agreement_rounds": plan.agreement_rounds})
    return {**clicks, "adaptive_rounds": rounds}


def _convergence(project: Project) -> dict[str, Any]:
    """The latest verdict: its summary ("converged because ..." or "not converged: ...")
    and signals."""
    from alearn.rounds.convergence import convergence_status

    status = convergence_status(project).to_dict()
    return {k: status[k] for k in ("converged", "summary", "reasons", "signals")}
