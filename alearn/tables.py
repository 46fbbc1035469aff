"""The tables: the schema of the store (see :mod:`alearn.store`).

files (every path ingest has seen, with its outcome), items (one per distinct image),
labels (trusted: manifest gold, consensus or adjudication), rounds, selections,
annotations (mirrored from Label Studio, or set aside with the reason), models (trained
heads), meta (small facts), quarantine (annotations that could not be mirrored, kept raw
with the reason), team (the roster), round_events (a round's life off the happy path),
label_changes (trusted labels a reviewer changed, with what they were).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class FileRecord(Base):
    """A path seen by ingest. ``status`` is 'item', 'duplicate' or 'rejected'."""

    __tablename__ = "files"
    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    item_id: Mapped[int | None] = mapped_column(ForeignKey("items.id"), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(Integer)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    seen_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Item(Base):
    """One distinct image."""

    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(String(1024))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    source: Mapped[str | None] = mapped_column(String(256))
    captured_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    lat: Mapped[float | None] = mapped_column(Float)
    lon: Mapped[float | None] = mapped_column(Float)
    license: Mapped[str | None] = mapped_column(String(256))
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    added_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Label(Base):
    """A trusted label. ``origin``: 'manifest', 'consensus' or 'adjudicated'."""

    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), unique=True)
    label: Mapped[str] = mapped_column(String(256))
    origin: Mapped[str] = mapped_column(String(16))
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    confidence: Mapped[float] = mapped_column(Float, default=1.0)
    method: Mapped[str | None] = mapped_column(String(32))
    round_id: Mapped[int | None] = mapped_column(ForeignKey("rounds.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Round(Base):
    """A labeling round: planned -> pushed -> collecting -> closed (or failed)."""

    __tablename__ = "rounds"
    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[int] = mapped_column(Integer, unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    strategy: Mapped[str] = mapped_column(String(64))
    batch_size: Mapped[int] = mapped_column(Integer)
    overlap: Mapped[int] = mapped_column(Integer)
    model_version: Mapped[str | None] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    closed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class Selection(Base):
    """An item chosen by a round."""

    __tablename__ = "selections"
    __table_args__ = (UniqueConstraint("round_id", "item_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    rank: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    predicted: Mapped[str | None] = mapped_column(String(256))
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    ls_task_id: Mapped[int | None] = mapped_column(Integer, index=True)


class Annotation(Base):
    """A Label Studio annotation mirrored into the store.

    ``status`` is 'ok', or 'set_aside' with ``reason`` (unknown label, no choice,
    several choices). Keyed by Label Studio's annotation id; ``updated_at`` makes
    the mirror idempotent.
    """

    __tablename__ = "annotations"
    id: Mapped[int] = mapped_column(primary_key=True)
    ls_annotation_id: Mapped[int] = mapped_column(Integer, unique=True)
    ls_task_id: Mapped[int] = mapped_column(Integer, index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    round_id: Mapped[int | None] = mapped_column(ForeignKey("rounds.id"), index=True)
    annotator: Mapped[str] = mapped_column(String(256))
    label: Mapped[str | None] = mapped_column(String(256))
    lead_time: Mapped[float | None] = mapped_column(Float)
    was_cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default="ok")
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class ModelRecord(Base):
    """A trained head."""

    __tablename__ = "models"
    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    round_id: Mapped[int | None] = mapped_column(ForeignKey("rounds.id"))
    n_train: Mapped[int] = mapped_column(Integer)
    cv_accuracy: Mapped[float | None] = mapped_column(Float)
    path: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class QuarantinedAnnotation(Base):
    """An annotation Label Studio holds that alearn does not count, kept as it came.

    ``kind``: 'foreign' (a task alearn did not push, or whose item or round does not
    match what alearn recorded), 'unreadable' (no id, no author, a malformed record).
    Re-seen on every pull: ``updated_at`` moves, nothing is duplicated.
    """

    __tablename__ = "quarantine"
    id: Mapped[int] = mapped_column(primary_key=True)
    ls_project_id: Mapped[int | None] = mapped_column(Integer)
    ls_task_id: Mapped[int | None] = mapped_column(Integer, index=True)
    ls_annotation_id: Mapped[int | None] = mapped_column(Integer, index=True)
    key: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    raw: Mapped[Any] = mapped_column(JSON)
    first_seen: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class TeamMember(Base):
    """Someone on the project's roster. ``role``: 'annotator' or 'reviewer'."""

    __tablename__ = "team"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(256), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    added_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class RoundEvent(Base):
    """One event off a round's happy path (see :mod:`alearn.rounds.lifecycle`)."""

    __tablename__ = "round_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class LabelChange(Base):
    """A trusted label a reviewer changed or confirmed (``reason`` 'label review'): what it
    was (``old_*``), what it became, who, when. ``withdrawn_at``: the decision was deleted
    in Label Studio and the old label restored (see :mod:`alearn.rounds.label_history`)."""

    __tablename__ = "label_changes"
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    old_label: Mapped[str] = mapped_column(String(256))
    old_origin: Mapped[str] = mapped_column(String(16))
    old_method: Mapped[str | None] = mapped_column(String(32))
    old_confidence: Mapped[float | None] = mapped_column(Float)
    old_round_id: Mapped[int | None] = mapped_column(Integer)
    new_label: Mapped[str] = mapped_column(String(256))
    changed_by: Mapped[str] = mapped_column(String(256))
    changed_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    reason: Mapped[str] = mapped_column(String(32))
    round_id: Mapped[int | None] = mapped_column(Integer)
    withdrawn_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
