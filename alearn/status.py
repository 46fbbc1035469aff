"""What an operator asks first: how big is the pool, how many trusted labels, where
is the current round. Read from the store only (queues are added by the CLI)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from alearn.adjudication import adjudication_status
from alearn.project import Project
from alearn.rounds import ABORTED, ACTIVE, FAILED, active_round, is_stale, round_progress
from alearn.store import Annotation, FileRecord, Item, Label, QuarantinedAnnotation, Round


def project_status(project: Project) -> dict[str, Any]:
    """A JSON-able summary of the project's state."""
    store = project.store
    with store.session() as s:
        pool = s.scalar(select(func.count()).select_from(Item)) or 0
        rejected = s.scalar(
            select(func.count()).where(FileRecord.status == "rejected")
        ) or 0
        by_class = dict(s.execute(select(Label.label, func.count()).group_by(Label.label)).all())
        by_origin = dict(
            s.execute(select(Label.origin, func.count()).group_by(Label.origin)).all()
        )
        rounds = [
            {"number": r.number, "status": r.status, "strategy": r.strategy,
             "batch_size": r.batch_size, "overlap": r.overlap,
             "model_version": r.model_version, **_headline(r.metrics or {}),
             "error": r.error}
            for r in s.scalars(select(Round).order_by(Round.number))
        ]
        aside = [
            {"ls_annotation_id": a.ls_annotation_id, "item_id": a.item_id,
             "annotator": a.annotator, "label": a.label, "reason": a.reason}
            for a in s.scalars(
                select(Annotation).where(Annotation.status != "ok").order_by(Annotation.id)
            )
        ]
        quarantined = dict(s.execute(select(QuarantinedAnnotation.kind, func.count())
                                     .group_by(QuarantinedAnnotation.kind)).all())
    current = active_round(store)
    return {
        "attention": _attention(project, rounds),
        "quarantined_annotations": quarantined,
        "project": project.config.name,
        "classes": project.config.classes,
        "pool_size": pool,
        "rejected_files": rejected,
        "trusted_labels": sum(by_class.values()),
        "trusted_by_class": {c: by_class.get(c, 0) for c in project.config.classes},
        "trusted_by_origin": by_origin,
        "unlabeled": pool - sum(by_class.values()),
        "rounds": rounds,
        "current_round": round_progress(store, current.id).to_dict() if current else None,
        "set_aside_annotations": aside,
        "convergence": _convergence(project),
        "adjudication": adjudication_status(project),
        "ls_project_id": store.get_meta("ls_project_id"),
    }


def _attention(project: Project, rounds: list[dict[str, Any]]) -> list[str]:
    """Rounds that need a person, each with the command that fixes it."""
    out = []
    by_number = {r["number"]: r for r in rounds}
    with project.store.session() as s:
        ids = dict(s.execute(select(Round.number, Round.id)).all())
    for number, r in by_number.items():
        if r["status"] == FAILED:
            out.append(f"round {number} failed at {r['error']}. Fix the cause, then run "
                       f"'alearn round retry --round {number}' to resume it, or 'alearn "
                       f"round abort --round {number}' to end it.")
        elif r["status"] == "closed":
            changes = is_stale(project.store, ids[number])
            r["stale"] = bool(changes)
            if changes:
                n = sum(len(c.get("changes") or []) for c in changes)
                out.append(f"round {number} is stale: {n} vote(s) changed in Label Studio "
                           f"after it closed. Run 'alearn round close --round {number}' to "
                           "recompute it.")
        elif r["status"] in ACTIVE and r.get("error"):
            out.append(f"round {number}: {r['error']}")
        elif r["status"] == ABORTED:
            continue
    from alearn.team import reviewers, roster

    if not roster(project.store):
        out.append("the roster is empty, so no vote counts. Add annotators with 'alearn ls "
                   "users add NAME'.")
    agreement = project.config.agreement
    if agreement.adjudication == "review" and not reviewers(project.store, agreement.reviewers):
        waiting = sum(len((r.metrics or {}).get("adjudication_items") or [])
                      for r in _closed(project))
        if waiting:
            out.append(f"{waiting} item(s) wait for adjudication but the project has no "
                       "reviewer. Add one with 'alearn ls users add NAME --role reviewer'.")
    return out


def _closed(project: Project) -> list[Round]:
    with project.store.session() as s:
        return list(s.scalars(select(Round).where(Round.status == "closed")))


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("labels_spent", "cv_accuracy", "kappa", "consensus_items", "flagged")
    return {k: metrics.get(k) for k in keys}


def _convergence(project: Project) -> dict[str, Any]:
    """The latest verdict: its summary ("converged because ..." or "not converged: ...")
    and signals."""
    from alearn.convergence import convergence_status

    status = convergence_status(project).to_dict()
    return {k: status[k] for k in ("converged", "summary", "reasons", "signals")}
