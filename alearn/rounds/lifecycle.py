"""The round state machine, kept in the store.

    planned --push--> pushed --first annotation--> collecting --close--> closed
       |                 |                            |
       +-----------------+----------------------------+--> failed --retry--> (resume)
       +-----------------+----------------------------+--> aborted

One active (planned, pushed or collecting) round per project. Every transition is
checked here, so a worker that retries a step, or two workers racing, cannot move a
round backwards or skip a step.

A round ends ``closed``, ``failed`` (with the step and the reason, once the step's
retries are spent) or ``aborted`` (by the operator; the votes already given are kept).
``alearn round retry`` resumes a failed round from its first unfinished step, which
:func:`resume_point` reads from the store's facts (selections, pushed tasks, votes),
never from Redis. What happened off the happy path is kept as :class:`RoundEvent` rows:
failed, retried, aborted, stale (an annotation changed after the round closed) and
recomputed.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import func, select

from alearn.exceptions import RoundError
from alearn.rounds import metrics as round_metrics
from alearn.store import Annotation, Round, RoundEvent, Selection, Store, utcnow

log = logging.getLogger(__name__)

PLANNED, PUSHED, COLLECTING = "planned", "pushed", "collecting"
CLOSED, FAILED, ABORTED = "closed", "failed", "aborted"
ACTIVE = (PLANNED, PUSHED, COLLECTING)
_NEXT = {
    PLANNED: {PUSHED, FAILED, ABORTED},
    PUSHED: {COLLECTING, CLOSED, FAILED, ABORTED},
    COLLECTING: {CLOSED, FAILED, ABORTED},
    FAILED: {PLANNED, PUSHED, COLLECTING, ABORTED},  # retry resumes where it stopped
    CLOSED: set(),
    ABORTED: set(),
}


def active_round(store: Store) -> Round | None:
    with store.session() as s:
        return s.scalars(
            select(Round).where(Round.status.in_(ACTIVE)).order_by(Round.number.desc())
        ).first()


def get_round(store: Store, round_id: int | None = None) -> Round:
    """A round by id; with None, the active round, else the latest one."""
    with store.session() as s:
        if round_id is not None:
            rnd = s.get(Round, round_id)
        else:
            rnd = s.scalars(
                select(Round).where(Round.status.in_(ACTIVE)).order_by(Round.number.desc())
            ).first() or s.scalars(select(Round).order_by(Round.number.desc())).first()
        if rnd is None:
            raise RoundError(
                f"no round {round_id}" if round_id is not None
                else "no rounds yet. Start one with 'alearn round start'."
            )
        return rnd


def create_round(store: Store, *, strategy: str, batch_size: int, overlap: int,
                 adaptive: round_metrics.AdaptiveVotes | None = None) -> Round:
    """Open a new round in state 'planned'; refuse if another round is active.

    ``adaptive``: the round's adaptive votes (its ``overlap`` is then ``min_votes``)."""
    with store.session() as s:
        current = s.scalars(select(Round).where(Round.status.in_(ACTIVE))).first()
        if current is not None:
            raise RoundError(
                f"round {current.number} is still {current.status}; only one round may be "
                "active. Wait for it to close, close it with 'alearn round close', or end "
                "it with 'alearn round abort'."
            )
        number = (s.scalar(select(func.max(Round.number))) or 0) + 1
        rnd = Round(number=number, status=PLANNED, strategy=strategy,
                    batch_size=batch_size, overlap=overlap)
        round_metrics.put(rnd, round_metrics.RoundMetrics(adaptive_votes=adaptive))
        s.add(rnd)
        s.flush()
    log.info("round_event=created round=%s number=%s strategy=%s", rnd.id, number, strategy)
    return rnd


def transition(store: Store, round_id: int, to: str, *, error: str | None = None,
               expect: tuple[str, ...] | None = None) -> bool:
    """Move a round to ``to``. Returns False (and changes nothing) if it is already there.

    Raises RoundError for a move the state machine does not allow.
    """
    with store.session() as s:
        rnd = s.get(Round, round_id, with_for_update=True)
        if rnd is None:
            raise RoundError(f"no round {round_id}")
        if rnd.status == to:
            return False
        if expect is not None and rnd.status not in expect:
            raise RoundError(f"round {rnd.number} is {rnd.status}, expected one of {expect}")
        if to not in _NEXT[rnd.status]:
            raise RoundError(f"round {rnd.number} cannot go from {rnd.status} to {to}")
        rnd.status = to
        rnd.error = error
        if to == CLOSED:
            rnd.closed_at = utcnow()
    log.info("round_event=status round=%s status=%s", round_id, to)
    return True


def record_event(store: Store, round_id: int, kind: str, **detail: Any) -> None:
    """Keep one event of a round's life (failed, retried, aborted, stale, recomputed)."""
    with store.session() as s:
        s.add(RoundEvent(round_id=round_id, kind=kind, detail=detail))
    log.info("round_event=%s round=%s detail=%s", kind, round_id, detail)


def round_events(store: Store, round_id: int) -> list[dict[str, Any]]:
    with store.session() as s:
        rows = s.scalars(select(RoundEvent).where(RoundEvent.round_id == round_id)
                         .order_by(RoundEvent.id)).all()
    return [{"kind": e.kind, "at": e.at.isoformat(timespec="seconds"), **(e.detail or {})}
            for e in rows]


def fail_round(store: Store, round_id: int, step: str, reason: str) -> bool:
    """Mark an active round failed at ``step``; False if it was not active (a late
    failure of a duplicate job never fails a closed round)."""
    with store.session() as s:
        rnd = s.get(Round, round_id, with_for_update=True)
        if rnd is None or rnd.status not in ACTIVE:
            return False
        rnd.status, rnd.error = FAILED, f"{step}: {reason}"
        s.add(RoundEvent(round_id=round_id, kind="failed", detail={"step": step,
                                                                    "reason": reason}))
    log.warning("round_event=failed round=%s step=%s reason=%s", round_id, step, reason)
    return True


@dataclass(frozen=True)
class ResumePoint:
    """Where a round stands by the store's facts: the status it belongs in and the
    first step that is not done."""

    status: str
    step: str


def resume_point(store: Store, round_id: int) -> ResumePoint:
    with store.session() as s:
        selected = s.scalar(select(func.count()).where(Selection.round_id == round_id)) or 0
        unpushed = s.scalar(select(func.count()).where(
            Selection.round_id == round_id, Selection.ls_task_id.is_(None))) or 0
        votes = s.scalar(select(func.count()).where(Annotation.round_id == round_id)) or 0
    if not selected:
        return ResumePoint(PLANNED, "embed")
    if unpushed:
        return ResumePoint(PLANNED, "push")
    return ResumePoint(COLLECTING if votes else PUSHED, "pull")


def reopen(store: Store, round_id: int) -> ResumePoint:
    """Put a failed round back where its facts say it stands (for ``round retry``)."""
    rnd = get_round(store, round_id)
    point = resume_point(store, round_id)
    if rnd.status == FAILED:
        transition(store, round_id, point.status)
        record_event(store, round_id, "retried", step=point.step, was=rnd.error)
    elif rnd.status not in ACTIVE:
        raise RoundError(f"round {rnd.number} is {rnd.status}; only a failed or stuck "
                         "round can be retried.")
    return point


def is_stale(store: Store, round_id: int) -> list[dict[str, Any]]:
    """The changes since a closed round was last computed (empty: not stale)."""
    return stale_rounds(store, [round_id]).get(round_id, [])


def stale_rounds(store: Store, round_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """round id -> its stale events since it was last computed, for the stale ones
    among ``round_ids`` (one query)."""
    with store.session() as s:
        rows = s.scalars(select(RoundEvent).where(
            RoundEvent.round_id.in_(round_ids),
            RoundEvent.kind.in_(("stale", "recomputed"))).order_by(RoundEvent.id)).all()
    out: dict[int, list[dict[str, Any]]] = {}
    for e in rows:
        if e.kind == "recomputed":
            out.pop(e.round_id, None)
        else:
            out.setdefault(e.round_id, []).append(
                {"kind": e.kind, "at": e.at.isoformat(timespec="seconds"), **(e.detail or {})})
    return out


def set_round_fields(store: Store, round_id: int, **values: Any) -> None:
    with store.session() as s:
        rnd = s.get(Round, round_id)
        if rnd is None:
            raise RoundError(f"no round {round_id}")
        for key, value in values.items():
            setattr(rnd, key, value)


@dataclass
class RoundProgress:
    round_id: int
    number: int
    status: str
    tasks: int
    tasks_done: int
    annotations: int
    set_aside: int
    by_annotator: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.tasks > 0 and self.tasks_done == self.tasks

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "complete": self.complete}


def round_progress(store: Store, round_id: int) -> RoundProgress:
    """How far a round is: tasks that reached their overlap (or the larger target of an
    item asked for more votes: adaptive votes, 'more_votes'), annotations per annotator.

    Every mirrored annotation counts toward a task's overlap (Label Studio counts set-aside
    and skipped ones too), so a task is done when Label Studio stops serving it.
    """
    with store.session() as s:
        rnd = s.get(Round, round_id)
        if rnd is None:
            raise RoundError(f"no round {round_id}")
        tasks = s.scalar(select(func.count()).where(Selection.round_id == round_id)) or 0
        per_item = dict(
            s.execute(
                select(Annotation.item_id, func.count())
                .where(Annotation.round_id == round_id)
                .group_by(Annotation.item_id)
            ).all()
        )
        by_annotator = dict(
            s.execute(
                select(Annotation.annotator, func.count())
                .where(Annotation.round_id == round_id)
                .group_by(Annotation.annotator)
                .order_by(Annotation.annotator)
            ).all()
        )
        set_aside = s.scalar(
            select(func.count()).where(
                Annotation.round_id == round_id, Annotation.status != "ok"
            )
        ) or 0
    # items asked for more votes (adaptive votes, 'more_votes') need more than the overlap
    wanted = round_metrics.of(rnd).votes_asked
    done = sum(1 for item, n in per_item.items() if n >= wanted.get(int(item), rnd.overlap))
    return RoundProgress(
        round_id=rnd.id, number=rnd.number, status=rnd.status, tasks=tasks, tasks_done=done,
        annotations=sum(per_item.values()), set_aside=set_aside, by_annotator=by_annotator,
    )
