"""Adaptive votes in Label Studio: raise single tasks' overlap while a round runs.

The decisions are :mod:`alearn.rounds.adaptive_round`'s; this module only carries them
to Label Studio, by the machinery 'more_votes' uses
(:func:`labelstudio.adjudication.request_more_votes`: a task's ``overlap`` raised and
``is_labeled`` cleared, so the label stream serves it to one more person). Annotators
never see why a task came back.

- :func:`push_overlaps`, at the end of a push: gold and audit tasks get ``max_votes``.
- :func:`adapt_votes`, after every pull (and before a close): the tasks whose label is
  still unsettled get one more vote. Label Studio is asked first and the targets are
  recorded after, so a crash in between only asks again for the same.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from alearn.project import Project
from alearn.rounds.adaptive_round import (
    decide,
    push_targets,
    record_push_targets,
    record_targets,
)
from alearn.rounds.lifecycle import active_round
from alearn.store import Store
from labelstudio.adjudication import request_more_votes
from labelstudio.client import LSClient, connect_label_studio

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdaptSummary:
    """One adaptive-votes pass: ``asked`` tasks got one more vote in Label Studio;
    ``waiting`` items want more votes than they have."""

    round_id: int | None = None
    asked: int = 0
    waiting: int = 0

    def to_dict(self) -> dict[str, int | None]:
        return asdict(self)


def push_overlaps(store: Store, client: LSClient, round_id: int) -> int:
    """Ask ``max_votes`` for the round's gold and audit tasks; return the tasks changed
    (0 for a round without adaptive votes). Idempotent."""
    audit, targets = push_targets(store, round_id)
    if not targets:
        return 0
    changed = request_more_votes(store, client, targets, round_id)
    record_push_targets(store, round_id, audit, targets)  # after asking, never before
    return changed


def adapt_votes(project: Project, round_id: int | None = None,
                client: LSClient | None = None) -> AdaptSummary:
    """Recompute what the round's votes want (by default the active round's) and ask
    Label Studio for the votes not asked yet. Connects to Label Studio only when there
    is something to ask and no ``client`` is given."""
    if round_id is None:
        rnd = active_round(project.store)
        if rnd is None:
            return AdaptSummary()
        round_id = rnd.id
    decision = decide(project, round_id)
    if decision is None:
        return AdaptSummary(round_id=round_id)
    if decision.raised:
        if client is None:
            with connect_label_studio(project.settings) as own:
                request_more_votes(project.store, own, decision.raised, round_id)
        else:
            request_more_votes(project.store, client, decision.raised, round_id)
        record_targets(project.store, round_id, decision.raised)
        logger.info("round_event=adaptive_votes round=%s asked=%s waiting=%s", round_id,
                    len(decision.raised), decision.waiting)
    return AdaptSummary(round_id=round_id, asked=len(decision.raised),
                        waiting=decision.waiting)
