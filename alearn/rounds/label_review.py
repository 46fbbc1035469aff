"""Label review: after each close, the trusted labels most likely wrong go to a reviewer.

:func:`alearn.rounds.label_errors.project_label_errors` ranks every consensus label by
how likely it is wrong. After a round closes, the top ``review.max_per_round`` of the
doubtful ones (consensus posterior below ``agreement.confidence_target``) that were never
sent for review before (:func:`select_for_review`) join the round's adjudication push
(:func:`review_queue`, pushed by :func:`labelstudio.adjudication.push_adjudication`):
each task shows the image, the votes, the trusted label and the model's view (its most
probable class and that probability). Only the adjudication project shows this;
annotators never see it.

The reviewer's decision is applied like any adjudication decision (only configured
reviewers count); it replaces the label and its history is kept
(:mod:`alearn.rounds.label_history`). The store's meta ``label_review_items`` maps each
item sent for review to its round, so that a round's push, run again, sends the same
items and never new ones, and that no item is sent twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select

from alearn.exceptions import AlearnError
from alearn.project import Project
from alearn.rounds.adjudication import votes_text
from alearn.rounds.label_errors import SuspectLabel, project_label_errors
from alearn.rounds.label_history import META_SENT, reviewed_items
from alearn.store import Item, Label, Store

log = logging.getLogger(__name__)


def select_for_review(suspects: Iterable[SuspectLabel], reviewed: set[int],
                      max_per_round: int) -> list[SuspectLabel]:
    """The first ``max_per_round`` doubtful suspects (most likely wrong first) not in
    ``reviewed``; none when ``max_per_round`` is 0. A label its votes and the model
    settle (not ``doubtful``) is not worth a reviewer's click, however high it ranks."""
    if max_per_round <= 0:
        return []
    out: list[SuspectLabel] = []
    for s in suspects:
        if s.item_id in reviewed or not s.doubtful:
            continue
        out.append(s)
        if len(out) >= max_per_round:
            break
    return out


def sent_for_review(store: Store) -> dict[int, int]:
    """Item id -> round id of every item ever sent for label review."""
    return {int(k): int(v) for k, v in (store.get_meta(META_SENT) or {}).items()}


def review_text(suspect: SuspectLabel, classes: Sequence[str]) -> str:
    """What the reviewer reads: the votes, the trusted label and the model's view."""
    p = suspect.suggested_proba
    model = (f"{suspect.suggested} ({p:.0%})" if p == p else suspect.suggested)
    return (f"Label review. Votes: {votes_text(suspect.votes.items(), classes)}. "
            f"Trusted label: {suspect.label}. Model: {model}.")


def review_queue(project: Project, round_id: int) -> list[dict[str, Any]]:
    """The round's label-review items, each ``{item_id, path, votes_text}``.

    The first call for a round chooses them and records them (meta ``label_review_items``);
    later calls return the round's recorded items that still have a consensus label, so
    a push run again is idempotent.
    """
    store, limit = project.store, project.config.review.max_per_round
    sent = sent_for_review(store)
    mine = [i for i, r in sent.items() if r == round_id]
    if mine:
        texts = dict(store.get_meta(f"{META_SENT}:{round_id}") or {})
        return _entries(store, {i: texts.get(str(i), "Label review.") for i in mine})
    if limit <= 0:
        return []
    try:
        suspects = project_label_errors(project)
    except AlearnError as exc:  # a failed ranking never stops the adjudication push
        log.warning("label review skipped round_id=%s reason=%s", round_id, exc)
        return []
    chosen = select_for_review(suspects, set(sent) | reviewed_items(store), limit)
    if not chosen:
        return []
    classes = project.config.classes
    texts = {s.item_id: review_text(s, classes) for s in chosen}
    store.set_meta(f"{META_SENT}:{round_id}", {str(i): t for i, t in texts.items()})
    store.set_meta(META_SENT, {**{str(i): r for i, r in sent.items()},
                               **{str(i): round_id for i in texts}})
    log.info("label review round_id=%s items=%s", round_id, len(texts))
    return _entries(store, texts)


def _entries(store: Store, texts: dict[int, str]) -> list[dict[str, Any]]:
    """Queue entries for the items that still hold a consensus label, in ``texts`` order."""
    with store.session() as s:
        paths = dict(s.execute(select(Item.id, Item.path).where(Item.id.in_(list(texts)))).all())
        consensus = set(s.scalars(select(Label.item_id).where(
            Label.item_id.in_(list(texts)), Label.origin == "consensus")))
    return [{"item_id": i, "path": paths[i], "votes_text": t}
            for i, t in texts.items() if i in paths and i in consensus]


__all__ = ["META_SENT", "review_queue", "review_text", "select_for_review", "sent_for_review"]
