"""Adjudication: settling the items whose consensus is a tie or low-confidence.

Round close lists those items in ``RoundMetrics.adjudication_items`` and gives them
no trusted label. ``agreement.adjudication`` says what happens next:

``'review'``
    They go to a separate Label Studio adjudication project (see
    :mod:`labelstudio.adjudication`), which shows each image with the earlier votes
    (:func:`votes_text`). A reviewer's decision, read back as a :class:`Decision`,
    becomes the item's trusted label here (:func:`apply_decisions`): ``origin
    'adjudicated'``, confidence 1.0, method ``'adjudication'``. Decisions by someone not
    listed in ``agreement.reviewers`` (when that list is not empty), skipped ones, and
    ones without exactly one known class are set aside with their reason, in
    the round's ``RoundMetrics.adjudication.set_aside``, where ``alearn status`` shows them.
    The adjudication project mirrors like the main one: a decision changed there
    changes the label, and a decision deleted there withdraws it. Suspect consensus
    labels go there too (label review, :mod:`alearn.rounds.label_review`): their
    decisions keep a history (:mod:`alearn.rounds.label_history`).

``'more_votes'``
    Before the round closes, :func:`more_votes_targets` lists them, each with the number
    of annotations it should reach (the round's overlap plus :data:`EXTRA_VOTES`); Label
    Studio is asked for that many annotators on their tasks, the targets are recorded in
    ``RoundMetrics.more_votes`` (:func:`record_more_votes`), and the round keeps
    collecting until they are reached (:func:`alearn.rounds.lifecycle.round_progress` counts
    them). The close then recomputes the consensus over all the votes; items still
    unsettled stay in ``adjudication_items``, without a label. Votes are only asked for
    once per round, and only people who have not labeled a task yet can add to it, so
    the team must be larger than the overlap.

Nothing here talks to Label Studio; :mod:`labelstudio.adjudication` does.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from sqlalchemy import select

from alearn.exceptions import RoundError
from alearn.project import Project
from alearn.rounds import metrics as round_metrics
from alearn.rounds.label_history import note_review, withdraw
from alearn.store import Annotation, Item, Label, Round, Store

log = logging.getLogger(__name__)

#: Annotations an unsettled item gets beyond the round's overlap in 'more_votes' mode.
EXTRA_VOTES = 2
METHOD = "adjudication"


@dataclass(frozen=True)
class Decision:
    """One reviewer annotation in the adjudication project, as plain data."""

    ls_annotation_id: int
    ls_task_id: int
    item_id: int
    round_id: int | None
    reviewer: str
    labels: tuple[str, ...]
    cancelled: bool = False
    updated_at: dt.datetime | None = None


@dataclass(frozen=True)
class AdjudicationSummary:
    """What applying the decisions did. ``withdrawn``: labels removed because their
    decision is gone; ``pending``: adjudication items still without a decision."""

    tasks: int = 0
    decided: int = 0
    set_aside: int = 0
    withdrawn: int = 0
    pending: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def votes_text(votes: Iterable[tuple[str, str]], classes: Sequence[str]) -> str:
    """The earlier votes as a reviewer reads them: ``"cat: 2 (ann-a, ann-b), dog: 1
    (ann-c)"``, most votes first, then in class order; ``votes`` is (annotator, label)."""
    by_label: dict[str, list[str]] = defaultdict(list)
    for who, label in votes:
        by_label[label].append(who)
    order = {c: i for i, c in enumerate(classes)}
    ranked = sorted(by_label, key=lambda c: (-len(by_label[c]), order.get(c, len(order)), c))
    text = ", ".join(f"{c}: {len(by_label[c])} ({', '.join(sorted(by_label[c]))})"
                     for c in ranked)
    return text or "no votes"


def adjudication_queue(store: Store, round_id: int, classes: Sequence[str]) -> list[dict[str, Any]]:
    """The round's adjudication items still without a trusted label, each as
    ``{item_id, path, votes_text}``, in the order close listed them."""
    with store.session() as s:
        rnd = s.get(Round, round_id)
        if rnd is None:
            raise RoundError(f"round id {round_id} does not exist in the store.")
        wanted = round_metrics.of(rnd).adjudication_items
        if not wanted:
            return []
        labeled = set(s.scalars(select(Label.item_id).where(Label.item_id.in_(wanted))))
        paths = dict(s.execute(select(Item.id, Item.path).where(Item.id.in_(wanted))).all())
        votes: dict[int, list[tuple[str, str]]] = defaultdict(list)
        for item, who, label in s.execute(
            select(Annotation.item_id, Annotation.annotator, Annotation.label).where(
                Annotation.round_id == round_id, Annotation.item_id.in_(wanted),
                Annotation.status == "ok", Annotation.label.is_not(None))
        ):
            votes[int(item)].append((str(who), str(label)))
    return [{"item_id": i, "path": paths[i], "votes_text": votes_text(votes[i], classes)}
            for i in wanted if i in paths and i not in labeled]


def judge_decision(
    decision: Decision, classes: Sequence[str], reviewers: Sequence[str]
) -> str | None:
    """Why a decision is set aside, or None if it counts."""
    allowed = {r.strip().lower() for r in reviewers if r.strip()}
    if decision.reviewer.strip().lower() not in allowed:  # no reviewers: nobody decides
        return (f"{decision.reviewer} is not a reviewer (reviewers: "
                f"{', '.join(sorted(allowed)) or 'none'}; add one with 'alearn ls users "
                "add NAME --role reviewer')")
    if decision.cancelled:
        return "skipped by the reviewer"
    distinct = list(dict.fromkeys(decision.labels))
    if not distinct:
        return "no choice made"
    if len(distinct) > 1:
        return f"several choices {distinct}; a single class is expected"
    if distinct[0] not in classes:
        return f"label {distinct[0]!r} is not one of the classes {list(classes)}"
    return None


def apply_decisions(
    store: Store,
    decisions: Sequence[Decision],
    *,
    tasks: Iterable[tuple[int, int | None]],
    classes: Sequence[str],
    reviewers: Sequence[str] = (),
) -> AdjudicationSummary:
    """Mirror the adjudication project's decisions into trusted labels.

    Parameters
    ----------
    decisions
        Every annotation of the adjudication project.
    tasks
        ``(item id, round id)`` of every task of the adjudication project: an item whose
        task holds no valid decision any more loses its adjudicated label.
    classes, reviewers
        The project's classes, and who may decide (empty: nobody's decision counts).

    Among an item's valid decisions the latest (``updated_at``, then annotation id) wins.
    Running it twice with the same decisions changes nothing the second time.
    """
    tasks = set(tasks)
    winners: dict[int, tuple[Decision, int | None]] = {}
    aside: dict[int | None, list[dict[str, Any]]] = defaultdict(list)
    items = {item for item, _rnd in tasks} | {d.item_id for d in decisions}
    for d in sorted(decisions, key=lambda d: (d.updated_at or dt.datetime.min,
                                              d.ls_annotation_id)):
        reason = judge_decision(d, classes, reviewers)
        if reason is None:
            winners[d.item_id] = (d, d.round_id)
        else:
            aside[d.round_id].append({
                "ls_annotation_id": d.ls_annotation_id, "item_id": d.item_id,
                "reviewer": d.reviewer, "label": ", ".join(d.labels) or None, "reason": reason})
    decided = withdrawn = 0
    with store.session() as s:
        existing = {lab.item_id: lab for lab in s.scalars(
            select(Label).where(Label.item_id.in_(items)))} if items else {}
        for item, (d, rnd) in winners.items():
            label = existing.get(item)
            if label is not None and (label.is_gold or label.origin == "manifest"):
                aside[rnd].append({
                    "ls_annotation_id": d.ls_annotation_id, "item_id": item,
                    "reviewer": d.reviewer, "label": d.labels[0],
                    "reason": f"the item already has a {label.origin} label {label.label!r}"})
                continue
            note_review(s, label, d.labels[0], d.reviewer, d.updated_at, rnd)  # label review
            label = label or Label(item_id=item)
            if (label.origin, label.label, label.round_id, label.method) != (
                    "adjudicated", d.labels[0], rnd, METHOD):
                label.origin, label.label, label.confidence = "adjudicated", d.labels[0], 1.0
                label.method, label.round_id = METHOD, rnd
                s.add(label)
            decided += 1
        withdrawn = withdraw(s, [lab for item, lab in existing.items() if item not in winners
                                 and lab.origin == "adjudicated" and lab.method == METHOD])
    pending = _update_rounds(store, tasks, aside)
    summary = AdjudicationSummary(tasks=len(tasks), decided=decided,
                                  set_aside=sum(len(v) for v in aside.values()),
                                  withdrawn=withdrawn, pending=pending)
    log.info("adjudication applied tasks=%s decided=%s set_aside=%s withdrawn=%s pending=%s",
             summary.tasks, decided, summary.set_aside, withdrawn, pending)
    return summary


def _update_rounds(store: Store, tasks: set[tuple[int, int | None]],
                   aside: dict[int | None, list[dict[str, Any]]]) -> int:
    """Refresh the adjudication tally of every closed round concerned; return the
    pending count over all rounds."""
    pushed: dict[int, set[int]] = defaultdict(set)  # label-review tasks do not count
    for _item, rid in tasks:
        if rid is not None:
            pushed[rid].add(_item)
    with store.session() as s:
        adjudicated = set(s.scalars(select(Label.item_id).where(Label.origin == "adjudicated")))
    pending = 0

    def refresh(rnd: Round, metrics: round_metrics.RoundMetrics) -> bool:
        nonlocal pending
        wanted = metrics.adjudication_items
        if not wanted and rnd.id not in pushed and rnd.id not in aside:
            return False
        old = metrics.adjudication or round_metrics.AdjudicationTally()
        done, sent = sum(i in adjudicated for i in wanted), len(pushed[rnd.id] & set(wanted))
        new = replace(old, items=len(wanted), pushed=sent, decided=done,
                      pending=len(wanted) - done, set_aside=aside.get(rnd.id, []))
        pending += new.pending
        metrics.adjudication = new
        return new != old

    round_metrics.refresh_all(store, refresh, status="closed")
    return pending


def set_pushed(store: Store, round_id: int, pushed: int) -> None:
    """Record how many of the round's items have a task in the adjudication project."""
    with round_metrics.editing(store, round_id) as metrics:
        metrics.adjudication = replace(metrics.adjudication or round_metrics.AdjudicationTally(),
                                       pushed=pushed)


def adjudication_status(project: Project) -> dict[str, Any]:
    """Totals over all rounds, for ``alearn status``. ``waiting_for_votes``: items of open
    rounds that were asked for more votes ('more_votes' mode)."""
    items = pushed = decided = waiting = 0
    aside: list[dict[str, Any]] = []
    for rnd, m in round_metrics.by_round(project.store):
        adj = m.adjudication or round_metrics.AdjudicationTally()
        items += len(m.adjudication_items)
        pushed += adj.pushed
        decided += adj.decided
        aside += adj.set_aside
        if rnd.status != "closed":
            waiting += len(m.vote_targets)
    return {
        "mode": project.config.agreement.adjudication,
        "items": items, "pushed": pushed, "decided": decided, "pending": items - decided,
        "set_aside": aside, "waiting_for_votes": waiting,
        "ls_project_id": project.store.get_meta("ls_adjudication_project_id"),
    }


# -- 'more_votes' ----------------------------------------------------------------------
def more_votes_targets(project: Project, round_id: int) -> dict[int, int]:
    """Unsettled items of an open round, each with the annotations it should reach.

    Empty when more votes were already asked for this round, when the round is not
    pushed or collecting, or when every item is settled. Gold items and items with a
    trusted label are never listed.
    """
    from alearn.rounds.votes import consensus, tally  # numpy on use, not in 'alearn status'
    store = project.store
    with store.session() as s:
        rnd = s.get(Round, round_id)
        if rnd is None:
            raise RoundError(f"round id {round_id} does not exist in the store.")
        overlap, metrics, status = rnd.overlap, round_metrics.of(rnd), rnd.status
    if metrics.more_votes or status not in ("pushed", "collecting"):
        return {}
    votes = tally(project, [round_id])
    if not votes.votes:
        return {}
    cons = consensus(project, votes.ratings, tie_policy="adjudicate", round_id=round_id)
    labeled = set(store.trusted_labels()) | votes.gold_items
    asked = metrics.votes_asked  # adaptive votes: an item's own target is its base
    return {item: asked.get(item, overlap) + EXTRA_VOTES for row, item in enumerate(votes.items)
            if str(cons.status[row]) in ("tie", "low_confidence") and item not in labeled}


def record_more_votes(store: Store, round_id: int, targets: dict[int, int]) -> None:
    """Remember that more votes were asked for (targets: item id -> annotations)."""
    with round_metrics.editing(store, round_id) as metrics:
        metrics.more_votes = round_metrics.MoreVotes(extra=EXTRA_VOTES, targets=dict(targets))
    log.info("round_event=more_votes round=%s items=%s extra=%s", round_id, len(targets),
             EXTRA_VOTES)
