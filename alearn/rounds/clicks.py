"""What a team paid per trusted label, from counts in the store (no numpy: ``alearn
status`` reads it).

:func:`clicks_per_trusted_label` counts for itself; :func:`clicks_summary` turns counts
a caller already has (``alearn status`` counts the annotations and the labels by origin
once for all its figures) into the same answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select

from alearn.store import Annotation, Label, Store

#: The origins of the trusted labels people made (gold and manifest labels are not).
HUMAN_ORIGINS = ("consensus", "adjudicated")


def clicks_per_trusted_label(store: Store) -> dict[str, Any]:
    """What a team paid per trusted label: annotations given in Label Studio (every one
    mirrored, set aside or not) plus adjudication decisions, over the trusted labels
    people made (consensus and adjudicated; gold and manifest labels are not counted)."""
    with store.session() as s:
        annotations = s.scalar(select(func.count()).select_from(Annotation)) or 0
        by_origin = dict(s.execute(select(Label.origin, func.count()).where(
            Label.origin.in_(HUMAN_ORIGINS)).group_by(Label.origin)).all())
    return clicks_summary(annotations, by_origin)


def clicks_summary(annotations: int, labels_by_origin: Mapping[str, int]) -> dict[str, Any]:
    """:func:`clicks_per_trusted_label` from the number of annotations and the trusted
    labels counted by origin (origins other than :data:`HUMAN_ORIGINS` are left out)."""
    trusted = sum(labels_by_origin.get(o, 0) for o in HUMAN_ORIGINS)
    clicks = annotations + labels_by_origin.get("adjudicated", 0)
    return {"clicks": clicks, "trusted_labels": trusted,
            "clicks_per_trusted_label": round(clicks / trusted, 2) if trusted else None}
