"""A round's outcome as one typed record, kept in the ``Round.metrics`` JSON column.

This is the only module that reads or writes that column, or knows its keys: everything
else goes through :class:`RoundMetrics` and the accessors below. The JSON keeps the
layout earlier versions wrote (no migration), and a row that lacks a key reads as the
field's default. Keys this record does not know are kept as they are.

Fields are written in groups, and :meth:`RoundMetrics.to_json` writes a group only once
it was computed, so an open round's JSON holds no close figures:

* selection (``alearn.rounds.plan_record.record_plan``): ``pool_size``, ``n_train``,
  ``gold_items``; more votes asked for ('more_votes' adjudication): ``more_votes``;
* adaptive votes (:mod:`alearn.rounds.adaptive_round`): ``adaptive_votes``, written at
  round start (the limits), push (the audit slice) and after each pull (the votes asked);
  close adds the items the agreement figures rest on;
* close: ``labels_spent``, ``labels_spent_total``, ``tasks``, ``consensus``,
  ``consensus_items``, ``adjudication_items``, ``adjudication``, ``cv_accuracy``,
  ``convergence``, ``converged``, ``annotator_counts``;
* agreement, at a close with votes: ``agreement``, ``kappa``, ``alpha``,
  ``consensus_method``, ``annotators`` (read back as a close writes them), ``flagged``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from alearn.exceptions import RoundError
from alearn.store import Round, Store

_SELECTION = ("pool_size", "n_train", "gold_items")
_CLOSE = ("labels_spent", "labels_spent_total", "tasks")
_FIGURES = ("model_accuracy", "loo_accuracy", "peer_kappa", "gold_accuracy", "median_seconds")
_AGREEMENT = ("agreement", "kappa", "alpha", "consensus_method", "annotators", "flagged")
_CLOSE_END = ("consensus", "consensus_items", "adjudication_items", "adjudication",
              "cv_accuracy", "convergence", "converged", "annotator_counts")


@dataclass
class AdjudicationTally:
    """Where a closed round's unsettled items stand. ``set_aside``: decisions that do
    not count, each with its reason (see :mod:`alearn.rounds.adjudication`)."""

    mode: str | None = None
    items: int = 0
    pushed: int = 0
    decided: int = 0
    pending: int = 0
    set_aside: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> AdjudicationTally:
        d = data or {}
        return cls(mode=d.get("mode"), items=int(d.get("items") or 0),
                   pushed=int(d.get("pushed") or 0), decided=int(d.get("decided") or 0),
                   pending=int(d.get("pending") or 0), set_aside=list(d.get("set_aside") or []))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MoreVotes:
    """More votes asked for: ``targets`` maps item id -> annotations it should reach."""

    extra: int
    targets: dict[int, int] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> MoreVotes | None:
        if not data:
            return None
        return cls(extra=int(data.get("extra") or 0),
                   targets={int(i): int(n) for i, n in (data.get("targets") or {}).items()})

    def to_json(self) -> dict[str, Any]:
        return {"extra": self.extra, "targets": {str(i): int(n) for i, n in self.targets.items()}}


@dataclass
class AdaptiveVotes:
    """A round's adaptive votes: every item starts with ``min_votes``; ``targets`` maps
    the items asked for more (gold and ``audit_items`` at push, unsettled items after a
    pull) to the votes asked of Label Studio. ``agreement_items``: the gold and audit
    items with ``max_votes`` votes that kappa, alpha and AC1 rest on, and
    ``agreement_rounds`` the numbers of the rounds they come from (this round's, and
    earlier ones' while this round's are fewer than ``audit_min_items``; set at close)."""

    min_votes: int
    max_votes: int
    target: float
    audit_rate: float
    audit_items: list[int] = field(default_factory=list)
    audit_min_items: int = 0
    targets: dict[int, int] = field(default_factory=dict)
    agreement_items: list[int] | None = None
    agreement_rounds: list[int] | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> AdaptiveVotes | None:
        if not data:
            return None
        agreed, window = data.get("agreement_items"), data.get("agreement_rounds")
        return cls(min_votes=int(data["min_votes"]), max_votes=int(data["max_votes"]),
                   target=float(data["target"]), audit_rate=float(data.get("audit_rate") or 0),
                   audit_min_items=int(data.get("audit_min_items") or 0),
                   audit_items=[int(i) for i in data.get("audit_items") or []],
                   targets={int(i): int(n) for i, n in (data.get("targets") or {}).items()},
                   agreement_items=None if agreed is None else [int(i) for i in agreed],
                   agreement_rounds=None if window is None else [int(n) for n in window])

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "targets": {str(i): int(n) for i, n in self.targets.items()}}


@dataclass
class RoundMetrics:
    """A round's outcome. ``agreement`` is an :class:`~alearn.stats.agreement.AgreementReport`
    as a dict, ``annotators`` the close's per-annotator figures (see
    :func:`alearn.rounds.close.annotator_report`), ``convergence`` the dict
    :func:`alearn.rounds.convergence.assess_round` returns."""

    # selection
    pool_size: int | None = None
    n_train: int | None = None
    gold_items: int | None = None
    more_votes: MoreVotes | None = None
    adaptive_votes: AdaptiveVotes | None = None
    # close
    labels_spent: int | None = None
    labels_spent_total: int | None = None
    tasks: int | None = None
    agreement: dict[str, Any] | None = None
    kappa: float | None = None
    alpha: float | None = None
    consensus_method: str | None = None
    annotators: list[dict[str, Any]] = field(default_factory=list)
    flagged: bool | None = None
    consensus: dict[str, int] = field(default_factory=dict)
    consensus_items: int | None = None
    adjudication_items: list[int] = field(default_factory=list)
    adjudication: AdjudicationTally | None = None
    cv_accuracy: float | None = None
    convergence: dict[str, Any] | None = None
    converged: bool | None = None
    #: annotator -> k x k soft confusion counts of this round's consensus (row: true
    #: class), the track record later rounds carry (alearn.rounds.annotator_record)
    annotator_counts: dict[str, list[list[float]]] = field(default_factory=dict)
    #: keys this record does not know, kept as they were
    other: dict[str, Any] = field(default_factory=dict)

    @property
    def is_closed(self) -> bool:
        """Whether a close computed this record's figures."""
        return self.labels_spent is not None

    @property
    def stop_predictions(self) -> str | None:
        """The head's stop-set predictions kept by the convergence check."""
        return (self.convergence or {}).get("stop_predictions")

    @property
    def stop_kappa(self) -> float | None:
        return (self.convergence or {}).get("stop_kappa")

    def set_convergence(self, check: dict[str, Any]) -> None:
        """Keep a convergence check (its verdict also goes to ``converged``)."""
        self.convergence, self.converged = check, bool(check["converged"])

    @property
    def vote_targets(self) -> dict[int, int]:
        """item id -> annotations wanted, for items asked for more votes."""
        return dict(self.more_votes.targets) if self.more_votes else {}

    @property
    def votes_asked(self) -> dict[int, int]:
        """item id -> annotations asked of Label Studio beyond the round's overlap
        (adaptive votes and 'more_votes' together, the larger where both ask)."""
        asked = dict(self.adaptive_votes.targets) if self.adaptive_votes else {}
        for item, n in self.vote_targets.items():
            asked[item] = max(n, asked.get(item, 0))
        return asked

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> RoundMetrics:
        d = dict(data or {})
        known = {f.name for f in fields(cls)} - {"other"}
        out = cls(other={k: v for k, v in d.items() if k not in known})
        for name in known & set(d):
            setattr(out, name, d[name])
        out.more_votes = MoreVotes.from_json(d.get("more_votes"))
        out.adaptive_votes = AdaptiveVotes.from_json(d.get("adaptive_votes"))
        out.adjudication = (AdjudicationTally.from_json(d["adjudication"])
                            if d.get("adjudication") is not None else None)
        rows: list[Any] = d["annotators"] if isinstance(d.get("annotators"), list) else []
        out.annotators = [_annotator(a) for a in rows if isinstance(a, dict) and "annotator" in a]
        out.consensus = dict(d.get("consensus") or {})
        out.adjudication_items = [int(i) for i in d.get("adjudication_items") or []]
        counts = d.get("annotator_counts")
        out.annotator_counts = dict(counts) if isinstance(counts, dict) else {}
        return out

    def to_json(self) -> dict[str, Any]:
        """The JSON the column holds (each group only once computed)."""
        out: dict[str, Any] = {}
        if self.pool_size is not None:
            out.update({k: getattr(self, k) for k in _SELECTION})
        if self.more_votes is not None:
            out["more_votes"] = self.more_votes.to_json()
        if self.adaptive_votes is not None:
            out["adaptive_votes"] = self.adaptive_votes.to_json()
        if self.is_closed:
            out.update({k: getattr(self, k) for k in _CLOSE})
            if self.agreement is not None or self.consensus_method is not None:
                out.update({k: getattr(self, k) for k in _AGREEMENT})
            out.update({k: getattr(self, k) for k in _CLOSE_END})
            out["adjudication"] = (self.adjudication or AdjudicationTally()).to_json()
        return {**out, **self.other}


def of(rnd: Round) -> RoundMetrics:
    """The metrics of a round row."""
    return RoundMetrics.from_json(rnd.metrics)


def put(rnd: Round, metrics: RoundMetrics) -> None:
    """Set a round row's metrics (a new value: JSON columns save only reassignments)."""
    rnd.metrics = metrics.to_json()


@contextmanager
def editing(store: Store, round_id: int) -> Iterator[RoundMetrics]:
    """Change a round's metrics in one transaction: ``with editing(store, rid) as m:``."""
    with store.session() as s:
        rnd = s.get(Round, round_id)
        if rnd is None:
            raise RoundError(f"round id {round_id} does not exist in the store.")
        metrics = of(rnd)
        yield metrics
        put(rnd, metrics)


def by_round(store: Store, *, status: str | None = None) -> list[tuple[Round, RoundMetrics]]:
    """Every round (of ``status``, if given) with its metrics, by number."""
    query = select(Round).order_by(Round.number)
    if status is not None:
        query = query.where(Round.status == status)
    with store.session() as s:
        return [(r, of(r)) for r in s.scalars(query)]


def finite_number(v: Any) -> float | None:  # None: not a number, or an int past 2**53
    ok = isinstance(v, float) or (type(v) is int and abs(v) < 2**53)
    return float(v) if ok and math.isfinite(v) else None


def _annotator(a: dict[str, Any]) -> dict[str, Any]:
    """A stored annotator entry as a close writes it, whatever the column holds."""
    out = dict(a, annotator=str(a["annotator"]), flagged=a.get("flagged") is True)
    out.update({k: finite_number(a.get(k)) for k in _FIGURES})
    out.update({k: int(max(finite_number(a.get(k)) or 0, 0)) if type(a.get(k)) is int else 0
                for k in ("n_items", "n_gold")})
    out.update({k: [r for r in a[k] if isinstance(r, str)] if isinstance(a.get(k), list)
                else [] for k in ("reasons", "peer_notes")})
    return out


def annotator_counts_of(store: Store, *, status: str, below_number: int
                        ) -> list[dict[str, Any]]:
    """The ``annotator_counts`` of every round of ``status`` numbered below
    ``below_number``, read as that one key, not as each round's whole metrics."""
    where = (Round.status == status, Round.number < below_number)
    try:
        with store.session() as s:
            got = list(s.scalars(select(Round.metrics["annotator_counts"]).where(*where)))
    except DBAPIError:  # a row the database's JSON functions cannot read: each in Python
        with store.session() as s:
            got = [of(r).annotator_counts for r in s.scalars(select(Round).where(*where))]
    return [dict(v) for v in got if isinstance(v, dict) and v]


def refresh_all(store: Store, change: Callable[[Round, RoundMetrics], bool],
                *, status: str | None = None) -> None:
    """Apply ``change`` to every round's metrics in one transaction; a round is written
    when ``change`` returns True."""
    query = select(Round)
    if status is not None:
        query = query.where(Round.status == status)
    with store.session() as s:
        for rnd in s.scalars(query).all():
            metrics = of(rnd)
            if change(rnd, metrics):
                put(rnd, metrics)

