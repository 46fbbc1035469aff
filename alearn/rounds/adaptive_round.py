"""Adaptive votes in the live round: how many votes each of a round's items is asked for.

A round with adaptive votes (``rounds.overlap`` unset and ``rounds.min_votes <
rounds.max_votes``) asks Label Studio for ``min_votes`` annotations per task. At push,
gold items and a seeded random audit slice of the batch (``agreement.audit_rate``) are
asked for ``max_votes`` (:func:`push_targets`), so that kappa, alpha and AC1 rest on an
unbiased sample (:func:`agreement_sample`). After every pull, :func:`decide` recomputes
from the store, for every item, the votes :func:`alearn.stats.adaptive.votes_wanted`
wants: one more while the consensus posterior of its label is below
``agreement.confidence_target``, up to ``max_votes``. The items whose target rose are
asked of Label Studio (:mod:`labelstudio.overlap`, by the machinery 'more_votes' uses) and
the targets are recorded (:func:`record_targets`) in ``RoundMetrics.adaptive_votes``,
which :func:`alearn.rounds.lifecycle.round_progress` reads: the round is full when every
task has the votes it was asked for.

The decision is a pure function of the store's votes, so it is idempotent: a pull
repeated after a crash asks for the same votes again, and targets only ever rise.

The posterior is the project's consensus method (:func:`alearn.rounds.votes.consensus`);
with ``majority``, whose vote share is no posterior (one vote is always 100%), Dawid-Skene
gives it. An item the close's consensus would leave without a label (a tie, low
confidence) is unsettled whatever its posterior. ``max_votes`` is capped by the roster's
size: Label Studio serves a task once per person and only the roster's votes count, so
nothing waits for a vote nobody can give.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select

from alearn.config import ProjectConfig
from alearn.project import Project
from alearn.rounds import metrics as round_metrics
from alearn.rounds.clicks import clicks_per_trusted_label  # noqa: F401  (its former home)
from alearn.rounds.lifecycle import COLLECTING, PUSHED
from alearn.rounds.votes import Tally, consensus, tally, with_posteriors
from alearn.stats.adaptive import check_vote_limits, votes_wanted
from alearn.stats.ratings import Ratings
from alearn.store import Annotation, Round, Selection, Store
from alearn.team import roster

log = logging.getLogger(__name__)

#: Mixed into the round number to seed the audit slice.
AUDIT_SEED = 0xA0D17


def round_votes_plan(cfg: ProjectConfig, overlap: int | None = None
                     ) -> tuple[int, round_metrics.AdaptiveVotes | None]:
    """The overlap a new round asks of every task, and its adaptive votes (None: a fixed
    overlap, from ``overlap`` (``round start --overlap``), ``rounds.overlap``, or
    ``min_votes == max_votes``). Raises ConfigError for bad limits."""
    if overlap is not None:
        return overlap, None
    low, high = cfg.rounds.vote_limits()
    check_vote_limits(low, high, cfg.agreement.confidence_target)
    if low == high:
        return low, None
    return low, round_metrics.AdaptiveVotes(
        min_votes=low, max_votes=high, target=cfg.agreement.confidence_target,
        audit_rate=cfg.agreement.audit_rate, audit_min_items=cfg.agreement.audit_min_items)


def audit_slice(items: Iterable[int], gold: Iterable[int], rate: float, seed: int
                ) -> list[int]:
    """The seeded random audit slice: ``ceil(rate * batch)`` of the batch's non-gold
    items (all of them at most; none when ``rate`` is 0), the same for the same
    arguments. A small slice costs no steadiness: the agreement figures reach back to
    earlier rounds' slices (:mod:`alearn.rounds.agreement_window`)."""
    batch = sorted(set(items))
    candidates = sorted(set(batch) - set(gold))
    want = math.ceil(rate * len(batch) - 1e-9)
    n = min(len(candidates), want) if rate > 0 else 0
    if n <= 0:
        return []
    rng = np.random.default_rng([AUDIT_SEED, int(seed)])
    return sorted(candidates[i] for i in rng.choice(len(candidates), size=n, replace=False))


def most_votes(store: Store, plan: round_metrics.AdaptiveVotes) -> int:
    """``max_votes``, capped by the number of annotators on the roster (never under
    ``min_votes``). Reviewers' votes count too, but a reviewer may never label in the main
    project, and a task must not wait for a vote nobody will give."""
    members = roster(store)
    team = sum(role == "annotator" for role in members.values()) or len(members)
    return max(plan.min_votes, min(plan.max_votes, team)) if team else plan.max_votes


def push_targets(store: Store, round_id: int) -> tuple[list[int], dict[int, int]]:
    """At push: the audit slice, and the votes to ask of gold and audit items
    (``max_votes``): ``(audit items, item id -> annotations)``; both empty for a round
    without adaptive votes. Records nothing: :func:`record_push_targets` does, once Label
    Studio has been asked, so a push that fails in between leaves no target that Label
    Studio never heard of (a round waiting for it would never fill). Idempotent: the slice
    is seeded by the round number, and one already recorded is kept."""
    with store.session() as s:
        rnd = s.get(Round, round_id)
        plan = round_metrics.of(rnd).adaptive_votes if rnd is not None else None
        if rnd is None or plan is None:
            return [], {}
        rows = s.execute(select(Selection.item_id, Selection.is_gold)
                         .where(Selection.round_id == round_id)).all()
        number = rnd.number
    gold = [int(i) for i, g in rows if g]
    # a slice recorded by an earlier push is kept (the same, unless the rule changed)
    audit = list(plan.audit_items) or audit_slice((int(i) for i, _g in rows), gold,
                                                  plan.audit_rate, number)
    high = most_votes(store, plan)
    targets = {item: max(high, plan.targets.get(item, 0)) for item in (*gold, *audit)}
    log.info("round_event=audit_slice round=%s gold=%s audit=%s max_votes=%s", round_id,
             len(gold), len(audit), high)
    return audit, targets


def record_push_targets(store: Store, round_id: int, audit: list[int],
                        targets: dict[int, int]) -> None:
    """Remember the audit slice and the votes asked of Label Studio at push."""
    with round_metrics.editing(store, round_id) as metrics:
        plan = metrics.adaptive_votes
        if plan is None:
            return
        plan.audit_items = list(audit)
    record_targets(store, round_id, targets)


@dataclass(frozen=True)
class VoteDecision:
    """What the votes in the store want now. ``wanted``: every item's votes wanted;
    ``targets``: the targets to record (items asked for more than ``min_votes``);
    ``raised``: those of them Label Studio has not been asked for yet; ``waiting``: items
    that want more votes than they have."""

    wanted: dict[int, int]
    targets: dict[int, int]
    raised: dict[int, int]
    waiting: int


def posterior(project: Project, ratings: Ratings, round_id: int | None = None
              ) -> np.ndarray:
    """Each rated item's label posterior, 0 where the close's consensus would give it no
    label (a tie, low confidence): an item is settled only if both agree. With
    ``majority``, whose vote share is no posterior (one vote is always 100%), the
    posterior is Dawid-Skene's. With ``round_id``, both start from the annotators'
    track record in the rounds before it, as the close's consensus does."""
    # what the close will do
    cons = consensus(project, ratings, tie_policy="adjudicate", round_id=round_id)
    conf = np.asarray(with_posteriors(project, ratings, cons, round_id).confidence,
                      dtype=float)
    return np.where(np.asarray(cons.status).astype(str) == "agreed", conf, 0.0)


def decide(project: Project, round_id: int) -> VoteDecision | None:
    """The votes every item of an open round with adaptive votes wants now, from the
    store's votes; None for other rounds. Pure reading: nothing is changed."""
    store = project.store
    with store.session() as s:
        rnd = s.get(Round, round_id)
        if rnd is None or rnd.status not in (PUSHED, COLLECTING):
            return None
        plan = round_metrics.of(rnd).adaptive_votes
        if plan is None:
            return None
        selected = dict(s.execute(select(Selection.item_id, Selection.is_gold).where(
            Selection.round_id == round_id, Selection.ls_task_id.is_not(None))).all())
        # every mirrored annotation counts, as Label Studio counts them toward the overlap
        given = dict(s.execute(select(Annotation.item_id, func.count()).where(
            Annotation.round_id == round_id).group_by(Annotation.item_id)).all())
    items = sorted(int(i) for i in selected)
    if not items:
        return None
    conf = _confidence(project, tally(project, [round_id]), items, round_id)
    n = np.array([int(given.get(i, 0)) for i in items])
    forced = {int(i) for i, g in selected.items() if g} | set(plan.audit_items)
    wanted = votes_wanted(conf, n, min_votes=plan.min_votes, max_votes=most_votes(store, plan),
                          target=plan.target, always_max=[i in forced for i in items])
    targets = dict(plan.targets)
    for item, w, has in zip(items, wanted.tolist(), n.tolist(), strict=True):
        # asked only for votes the item lacks, and never less than asked before
        if w > has and w > max(plan.min_votes, targets.get(item, 0)):
            targets[item] = int(w)
    raised = {i: t for i, t in targets.items() if plan.targets.get(i) != t}
    return VoteDecision(wanted=dict(zip(items, wanted.tolist(), strict=True)),
                        targets=targets, raised=raised, waiting=int(np.sum(wanted > n)))


def _confidence(project: Project, votes: Tally, items: list[int], round_id: int
                ) -> np.ndarray:
    """The posterior of each item's consensus label (0: no votes, a tie, not agreed)."""
    out = np.zeros(len(items))
    if not votes.items:
        return out
    conf = posterior(project, votes.ratings, round_id)
    row = {item: r for r, item in enumerate(votes.items)}
    for k, item in enumerate(items):
        r = row.get(item)
        if r is not None:
            out[k] = float(conf[r])
    return out


def record_targets(store: Store, round_id: int, targets: dict[int, int]) -> None:
    """Remember the votes asked of Label Studio (after asking: a crash in between asks
    again, which changes nothing)."""
    with round_metrics.editing(store, round_id) as metrics:
        plan = metrics.adaptive_votes
        if plan is None:
            return
        for item, n in targets.items():
            plan.targets[int(item)] = max(int(n), plan.targets.get(int(item), 0))


def agreement_sample(project: Project, round_ids: list[int] | None, votes: Tally
                     ) -> tuple[Ratings | None, list[int] | None]:
    """The ratings that agreement figures are computed on, and the items they rest on,
    for the votes of some rounds (None: all). Items of rounds with adaptive votes count
    only if they are gold or audit items with the round's most votes (their extra votes
    went to the hard items); other rounds' items all count. ``(votes.ratings, None)``
    when no round has adaptive votes; ``(None, [])`` when no item is left."""
    query = select(Round)
    if round_ids is not None:
        query = query.where(Round.id.in_(round_ids))
    with project.store.session() as s:
        plans = {r.id: p for r in s.scalars(query)
                 if (p := round_metrics.of(r).adaptive_votes) is not None}
        chosen = s.execute(select(Selection.round_id, Selection.item_id, Selection.is_gold)
                           .where(Selection.round_id.in_(list(plans)))).all() if plans else []
    if not plans:
        return votes.ratings, None
    need: dict[int, int] = {}  # gold and audit items: the votes they must have
    others: set[int] = set()
    for rid, item, gold in chosen:
        plan = plans[rid]
        if gold or item in plan.audit_items:
            # the round's most votes: max_votes, or less where the roster was smaller
            full = min(plan.max_votes, max(plan.targets.get(item, 0), 2))
            need[int(item)] = max(need.get(int(item), 0), full)
        else:
            others.add(int(item))
    matrix = votes.ratings.matrix
    rows = [r for r, item in enumerate(votes.items)
            if (item in need and int((matrix[r] >= 0).sum()) >= need[item])
            or (item not in need and item not in others)]
    if not rows:
        return None, []
    sub = matrix[rows]
    cols = np.flatnonzero((sub >= 0).any(axis=0))
    ratings = Ratings([votes.ratings.items[r] for r in rows],
                      [votes.ratings.annotators[c] for c in cols], sub[:, cols],
                      votes.ratings.classes)
    return ratings, sorted(votes.items[r] for r in rows)

