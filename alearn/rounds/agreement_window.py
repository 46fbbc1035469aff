"""The items a round's agreement figures rest on, with adaptive votes.

With adaptive votes only gold items and the audit slice get ``max_votes``
(:func:`alearn.rounds.adaptive_round.agreement_sample`): at a batch of 20 and
``agreement.audit_rate`` 0.1 that is 2 items a round, too few for a steady kappa. Rather
than ask for more votes (each audit item costs ``max_votes - min_votes`` clicks more),
the figures of a round rest on a window: the round's own gold and audit items and, while
they are fewer than ``agreement.audit_min_items`` (as the round started with it), those
of the closed rounds just before it, whole rounds, newest first, at most
:data:`MAX_ROUNDS_BACK` of them. The window's
items and round numbers are recorded with the round (``agreement_items``,
``agreement_rounds``), so a reader can tell what a kappa rests on.

Rounds with a fixed overlap keep resting on their own items.
"""

from __future__ import annotations

from sqlalchemy import select

from alearn.project import Project
from alearn.rounds import metrics as round_metrics
from alearn.rounds.adaptive_round import agreement_sample
from alearn.rounds.lifecycle import CLOSED
from alearn.rounds.votes import Tally, tally
from alearn.stats.ratings import Ratings
from alearn.store import Round

#: The most earlier rounds a window reaches back over, so that a close stays O(batch).
MAX_ROUNDS_BACK = 10


def round_agreement_sample(project: Project, round_id: int, votes: Tally
                           ) -> tuple[Ratings | None, list[int] | None, list[int]]:
    """``(ratings, items, round numbers)`` the agreement figures of round ``round_id``
    rest on; ``votes`` is the round's own tally. ``items`` is None (and the round
    numbers only this round's) for a round without adaptive votes, whose figures rest
    on all its items, as :func:`agreement_sample` gives."""
    with project.store.session() as s:
        rnd = s.get(Round, round_id)
        if rnd is None:
            return None, [], []
        number = int(rnd.number)
        plan = round_metrics.of(rnd).adaptive_votes
        floor = 0 if plan is None else plan.audit_min_items  # as the round started
        earlier = [] if floor <= 0 else s.execute(
            select(Round.id, Round.number)
            .where(Round.number < number, Round.status == CLOSED)
            .order_by(Round.number.desc()).limit(MAX_ROUNDS_BACK)).all()
    window, numbers = [round_id], [number]
    ratings, items = agreement_sample(project, window, votes)
    for rid, num in earlier:
        if items is not None and len(items) >= floor:
            break
        window.append(int(rid))
        numbers.append(int(num))
        ratings, items = agreement_sample(project, window, tally(project, window))
    return ratings, items, sorted(numbers)


__all__ = ["MAX_ROUNDS_BACK", "round_agreement_sample"]
