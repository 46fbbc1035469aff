"""The history of trusted labels a reviewer decided on in a label review.

A label review (:mod:`alearn.rounds.label_review`) sends a suspect consensus label to the
adjudication project. When a reviewer's decision there is applied
(:func:`alearn.rounds.adjudication.apply_decisions`), :func:`note_review` keeps a
:class:`~alearn.tables.LabelChange` row: what the label was (label, origin, method,
confidence, round), what it became, who decided, when, and why (``'label review'``). The
decision then replaces the label (origin ``'adjudicated'``).

If the decision is deleted in Label Studio, :func:`withdraw` puts the old label back
instead of leaving the item without a label, and marks the change ``withdrawn_at``.
A label counts as *corrected by review* while its change is not withdrawn and the
reviewer chose another class (:func:`corrected_by_review`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from alearn.store import Label, Store, utcnow
from alearn.tables import LabelChange

REASON = "label review"
#: Meta key: item id -> round id of every item sent for label review.
META_SENT = "label_review_items"


def note_review(s: Session, label: Label | None, new_label: str, reviewer: str,
                at: dt.datetime | None, round_id: int | None) -> None:
    """Record a reviewer's decision on a consensus label (anything else: nothing to do)."""
    if label is None or label.origin != "consensus" or label.is_gold:
        return
    s.add(LabelChange(
        item_id=label.item_id, old_label=label.label, old_origin=label.origin,
        old_method=label.method, old_confidence=label.confidence,
        old_round_id=label.round_id, new_label=new_label, changed_by=reviewer,
        changed_at=at or utcnow(), reason=REASON, round_id=round_id))


def withdraw(s: Session, labels: Sequence[Label]) -> int:
    """Remove labels whose adjudication decision is gone; a reviewed label gets its old
    value back. Returns how many labels were withdrawn."""
    if not labels:
        return 0
    latest: dict[int, LabelChange] = {}
    for change in s.scalars(select(LabelChange).where(
            LabelChange.item_id.in_([lab.item_id for lab in labels]),
            LabelChange.reason == REASON, LabelChange.withdrawn_at.is_(None))
            .order_by(LabelChange.id)):
        latest[change.item_id] = change
    drop: list[int] = []
    for lab in labels:
        if lab.item_id not in latest:
            drop.append(lab.id)
            continue
        change = latest[lab.item_id]
        lab.label, lab.origin, lab.method = change.old_label, change.old_origin, change.old_method
        lab.confidence = change.old_confidence if change.old_confidence is not None else 1.0
        lab.round_id = change.old_round_id
        change.withdrawn_at = utcnow()
        s.add(lab)
    if drop:
        s.execute(delete(Label).where(Label.id.in_(drop)))
    return len(labels)


def reviewed_items(store: Store) -> set[int]:
    """Items whose label a reviewer has decided on (withdrawn decisions included)."""
    with store.session() as s:
        return set(s.scalars(select(LabelChange.item_id).where(LabelChange.reason == REASON)))


def corrected_by_review(store: Store) -> int:
    """Trusted labels a reviewer changed to another class (decisions still standing)."""
    with store.session() as s:
        return int(s.scalar(select(func.count(func.distinct(LabelChange.item_id))).where(
            LabelChange.reason == REASON, LabelChange.withdrawn_at.is_(None),
            LabelChange.old_label != LabelChange.new_label)) or 0)


def review_status(store: Store) -> dict[str, int]:
    """Label review totals, for ``alearn status`` and the report: items sent to a
    reviewer, decisions standing, and labels those decisions changed."""
    with store.session() as s:
        decided = int(s.scalar(select(func.count(func.distinct(LabelChange.item_id))).where(
            LabelChange.reason == REASON, LabelChange.withdrawn_at.is_(None))) or 0)
    return {"sent": len(store.get_meta(META_SENT) or {}), "decided": decided,
            "corrected": corrected_by_review(store)}


def review_history(store: Store) -> list[dict[str, object]]:
    """Every label-review decision, oldest first, as plain dicts."""
    with store.session() as s:
        rows = s.scalars(select(LabelChange).order_by(LabelChange.id)).all()
    return [{"item_id": c.item_id, "was": c.old_label, "became": c.new_label,
             "by": c.changed_by, "at": c.changed_at.isoformat(), "reason": c.reason,
             "withdrawn": c.withdrawn_at is not None} for c in rows]
