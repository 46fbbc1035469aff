"""Adaptive votes in the live round (alearn.rounds.adaptive_round, labelstudio.overlap).

Unit tests stub Label Studio's task updates; the integration tests at the end run a real
Label Studio, Redis and RQ workers, every annotator a Label Studio user labeling through
the label stream.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from factories import ANNOTATORS, FIRST_TASK_ID, add_items, ingested_project
from ls_server import work
from redis import Redis
from sklearn.metrics import cohen_kappa_score
from sqlalchemy import func, select

from alearn.config import ProjectConfig
from alearn.exceptions import ConfigError
from alearn.project import Project
from alearn.report.agreement_view import agreement_summary
from alearn.report.status import project_status
from alearn.rounds import metrics as round_metrics
from alearn.rounds.adaptive_round import (
    audit_slice,
    clicks_per_trusted_label,
    decide,
    round_votes_plan,
)
from alearn.rounds.close import close_round
from alearn.rounds.lifecycle import CLOSED, PUSHED, create_round, get_round, round_progress
from alearn.rounds.votes import round_votes
from alearn.stats.adaptive import votes_wanted
from alearn.stats.consensus import dawid_skene
from alearn.stats.ratings import ratings_matrix
from alearn.store import Annotation, Item, Label, Selection
from alearn.team import add_member
from labelstudio.annotators import label_stream
from labelstudio.overlap import adapt_votes, push_overlaps
from workers.commands import open_tasks

CLASSES3 = ["cat", "dog", "bird"]


class TaskLog:
    """Stands in for Label Studio's task updates: task id -> its latest overlap."""

    def __init__(self) -> None:
        self.overlap: dict[int, int] = {}
        self.calls = 0

    def update_task(self, task_id: int, **fields: Any) -> None:
        self.calls += 1
        self.overlap[int(task_id)] = int(fields["overlap"])
        assert fields.get("is_labeled") is False  # served again


# -- the round's plan ------------------------------------------------------------------
def test_a_round_takes_adaptive_votes_unless_an_overlap_is_fixed() -> None:
    cfg = ProjectConfig(classes=CLASSES3)
    base, plan = round_votes_plan(cfg)
    assert base == 1 and plan is not None
    assert (plan.min_votes, plan.max_votes, plan.target, plan.audit_rate,
            plan.audit_min_items) == (1, 3, 0.95, 0.1, 8)
    assert round_votes_plan(cfg, overlap=2) == (2, None)  # round start --overlap 2
    cfg.rounds.overlap = 3  # an alearn.toml from before adaptive votes
    assert round_votes_plan(cfg) == (3, None)
    cfg.rounds.overlap, cfg.rounds.min_votes, cfg.rounds.max_votes = None, 2, 2
    assert round_votes_plan(cfg) == (2, None)


def test_vote_limits_are_checked_when_a_round_is_planned() -> None:
    cfg = ProjectConfig(classes=CLASSES3)
    cfg.rounds.max_votes = 5
    object.__setattr__(cfg.rounds, "min_votes", 6)  # as if the file skipped validation
    with pytest.raises(ConfigError, match="min_votes"):
        round_votes_plan(cfg)


def test_audit_slice_is_seeded_random_and_never_gold() -> None:
    items, gold = list(range(100, 120)), [100, 101]
    first = audit_slice(items, gold, 0.1, seed=3)
    assert first == audit_slice(reversed(items), gold, 0.1, seed=3)  # same round, same slice
    assert len(first) == math.ceil(0.1 * 20) and not set(first) & set(gold)
    assert set(first) <= set(items)
    others = {tuple(audit_slice(items, gold, 0.1, seed=s)) for s in range(20)}
    assert len(others) > 10  # it is random across rounds
    assert audit_slice(items, gold, 0.0, seed=3) == []
    assert len(audit_slice(range(5), [], 0.1, seed=0)) == 1  # a positive rate audits one
    assert audit_slice([1, 2], [1, 2], 0.5, seed=0) == []


def test_audit_slice_is_the_rate_of_the_batch_with_no_floor() -> None:
    # the floor (agreement.audit_min_items) is met by earlier rounds' items, not votes
    batch, gold = list(range(40)), [0, 1]
    assert len(audit_slice(batch, gold, 0.1, seed=1)) == 4
    assert len(audit_slice(range(20), [], 0.1, seed=1)) == 2
    assert len(audit_slice(range(3), [], 0.5, seed=1)) == 2  # ceil(1.5)


# -- push: min_votes for every task, max_votes for gold and audit ----------------------
def adaptive_round(project: Project, votes: dict[int, list[str | None]], *,
                   gold: dict[int, str] | None = None, max_votes: int = 3, audit_rate: float = 0.0,
                   target: float = 0.95, audit_min_items: int = 0
                   ) -> tuple[int, dict[int, int]]:
    """A pushed adaptive round over new items (one per key of ``votes``), each voted on by
    the first ``len(labels)`` of ANNOTATORS (one whose label is None does not vote); item
    ``k`` is task ``FIRST_TASK_ID + k`` (annotation ids go on from those already stored,
    so keys may span several rounds)."""
    gold = gold or {}
    store = project.store
    ids = add_items(store, list(votes))
    plan = round_metrics.AdaptiveVotes(min_votes=1, max_votes=max_votes, target=target,
                                       audit_rate=audit_rate, audit_min_items=audit_min_items)
    rnd = create_round(store, strategy="random", batch_size=len(votes), overlap=1,
                       adaptive=plan)
    with store.session() as s:
        n = int(s.scalar(select(func.count()).select_from(Annotation)) or 0)
        for rank, (k, labels) in enumerate(votes.items()):
            s.add(Selection(round_id=rnd.id, item_id=ids[k], rank=rank, score=0.0,
                            ls_task_id=FIRST_TASK_ID + k, is_gold=k in gold))
            for who, label in zip(ANNOTATORS, labels, strict=False):
                if label is None:
                    continue
                n += 1
                s.add(Annotation(ls_annotation_id=n, ls_task_id=FIRST_TASK_ID + k,
                                 item_id=ids[k], round_id=rnd.id, annotator=who, label=label))
        for k, label in gold.items():
            s.add(Label(item_id=ids[k], label=label, origin="manifest", is_gold=True))
    for who in ANNOTATORS:  # the roster's size caps max_votes
        add_member(store, f"{who}@alearn.local")
    from alearn.rounds.lifecycle import transition

    transition(store, rnd.id, PUSHED)
    return rnd.id, ids


def test_push_asks_max_votes_of_gold_and_audit_tasks_only(proj: Project) -> None:
    votes: dict[int, list[str]] = {k: [] for k in range(20)}
    rid, ids = adaptive_round(proj, votes, gold={0: "cat", 1: "dog"}, audit_rate=0.1)
    ls = TaskLog()
    assert push_overlaps(proj.store, ls, rid) == 4  # type: ignore[arg-type]
    plan = round_metrics.of(get_round(proj.store, rid)).adaptive_votes
    assert plan is not None and len(plan.audit_items) == 2
    assert not set(plan.audit_items) & {ids[0], ids[1]}
    task = {ids[k]: FIRST_TASK_ID + k for k in votes}
    expected = {task[i]: 3 for i in (ids[0], ids[1], *plan.audit_items)}
    assert ls.overlap == expected and plan.targets == {i: 3 for i in
                                                      (ids[0], ids[1], *plan.audit_items)}
    push_overlaps(proj.store, ls, rid)  # a retried push asks the same again
    assert ls.overlap == expected
    # nothing voted yet: every task waits for its first vote, gold and audit for three
    assert open_tasks(proj, rid) == 20


class FailingTaskLog(TaskLog):
    """Label Studio going away after ``ok`` task updates."""

    def __init__(self, ok: int) -> None:
        super().__init__()
        self.ok = ok

    def update_task(self, task_id: int, **fields: Any) -> None:
        if self.calls >= self.ok:
            raise ConnectionError("Label Studio went away")
        super().update_task(task_id, **fields)


def test_a_push_that_fails_while_asking_records_no_target_and_the_next_pull_asks(
        proj: Project) -> None:
    votes: dict[int, list[str]] = {k: [] for k in range(20)}
    rid, ids = adaptive_round(proj, votes, gold={0: "cat", 1: "dog"}, audit_rate=0.1)
    with pytest.raises(ConnectionError):
        push_overlaps(proj.store, FailingTaskLog(ok=1), rid)  # type: ignore[arg-type]
    plan = round_metrics.of(get_round(proj.store, rid)).adaptive_votes
    # nothing recorded that Label Studio was not asked for: no task waits for a vote
    # nobody will be served
    assert plan is not None and plan.targets == {} and plan.audit_items == []
    assert open_tasks(proj, rid) == 20  # each still waits for its first vote only
    decision = decide(proj, rid)  # the next pull asks the gold items again
    assert decision is not None
    assert {ids[0], ids[1]} <= set(decision.raised)


def test_max_votes_is_capped_by_the_roster(proj: Project) -> None:
    rid, ids = adaptive_round(proj, {0: [], 1: []}, gold={0: "cat"}, max_votes=5)
    ls = TaskLog()
    push_overlaps(proj.store, ls, rid)  # type: ignore[arg-type]
    assert ls.overlap == {FIRST_TASK_ID: len(ANNOTATORS)}  # nobody else could vote


def test_a_reviewer_does_not_raise_the_cap(proj: Project) -> None:
    # a reviewer decides in the adjudication project and may never label here: a gold
    # task must not wait for a vote only the reviewer could give
    rid, _ids = adaptive_round(proj, {0: [], 1: []}, gold={0: "cat"}, max_votes=5)
    add_member(proj.store, "rev@alearn.local", role="reviewer")
    ls = TaskLog()
    push_overlaps(proj.store, ls, rid)  # type: ignore[arg-type]
    assert ls.overlap == {FIRST_TASK_ID: len(ANNOTATORS)}


def test_a_fixed_overlap_round_pushes_no_extra_votes(proj: Project) -> None:
    ids = add_items(proj.store, [1])
    rnd = create_round(proj.store, strategy="random", batch_size=1, overlap=3)
    with proj.store.session() as s:
        s.add(Selection(round_id=rnd.id, item_id=ids[1], rank=0, score=0.0, ls_task_id=9))
    ls = TaskLog()
    assert push_overlaps(proj.store, ls, rnd.id) == 0 and ls.calls == 0  # type: ignore[arg-type]


# -- after a pull: one more vote while the posterior is below the target --------------
def reference_wanted(project: Project, rid: int, ids: dict[int, int], forced: set[int],
                     *, target: float) -> dict[int, int]:
    """votes_wanted over Dawid-Skene posteriors computed here from the raw votes."""
    votes = round_votes(project, [rid])
    ratings = ratings_matrix([v[:3] for v in votes], project.config.classes)
    cons = dawid_skene(ratings.matrix, n_classes=len(project.config.classes),
                       tie_policy="adjudicate")
    row = {int(str(i)): r for r, i in enumerate(ratings.items)}
    items = sorted(ids.values())
    conf = [0.0 if i not in row or str(cons.status[row[i]]) == "tie"
            else float(cons.confidence[row[i]]) for i in items]
    n = [sum(1 for v in votes if v[0] == i) for i in items]
    wanted = votes_wanted(conf, n, min_votes=1, max_votes=3, target=target,
                          always_max=[i in forced for i in items])
    return dict(zip(items, wanted.tolist(), strict=True))


def test_unsettled_items_get_one_more_vote_and_settled_ones_none(proj: Project) -> None:
    proj.config.agreement.consensus = "dawid_skene"
    votes = {0: ["cat", "dog"],          # a tie: unsettled
             1: ["cat", "cat", "dog"],   # at max_votes: stays
             2: [],                      # no vote yet: waits for its first
             3: ["bird", "bird"],
             **{k: ["cat", "cat"] if k % 2 else ["dog", "dog"] for k in range(4, 14)},
             14: ["cat"], 15: ["dog"]}
    rid, ids = adaptive_round(proj, votes, gold={13: "cat"})
    decision = decide(proj, rid)
    assert decision is not None
    ref = reference_wanted(proj, rid, ids, {ids[13]}, target=0.95)
    assert decision.wanted == ref
    assert decision.wanted[ids[0]] == 3 and decision.wanted[ids[1]] == 3
    assert decision.wanted[ids[2]] == 1 and decision.wanted[ids[13]] == 3
    has = {ids[k]: len(v) for k, v in votes.items()}
    assert decision.raised == {i: w for i, w in ref.items() if w > 1 and w > has[i]}
    ls = TaskLog()
    got = adapt_votes(proj, rid, client=ls)  # type: ignore[arg-type]
    task = {ids[k]: FIRST_TASK_ID + k for k in votes}
    assert ls.overlap == {task[i]: w for i, w in decision.raised.items()}
    assert got.asked == len(decision.raised)
    # idempotent: the same votes ask for nothing more; targets never fall
    again = TaskLog()
    assert adapt_votes(proj, rid, client=again).asked == 0 and again.calls == 0  # type: ignore[arg-type]
    # the round is full only when every task has the votes it was asked for
    progress = round_progress(proj.store, rid)
    short = sum(1 for k, v in votes.items() if len(v) < ref[ids[k]])
    assert progress.tasks_done == len(votes) - short and not progress.complete
    assert open_tasks(proj, rid) == short


def test_with_majority_a_tie_always_wants_another_vote(proj: Project) -> None:
    """Majority's vote share is no posterior: Dawid-Skene's is used, but an item that
    majority would leave tied (no trusted label at close) is never settled."""
    proj.config.agreement.consensus = "majority"
    # ann-a always agrees with ann-c, ann-b is wrong half the time: Dawid-Skene is sure
    # (posterior > 0.99) that ann-a is right where ann-a and ann-b alone disagree
    votes = {k: [CLASSES3[k % 3], CLASSES3[(k % 3 + k % 2) % 3], CLASSES3[k % 3]]
             for k in range(12)}
    votes.update({k: ["cat", "dog"] for k in range(12, 16)})
    rid, ids = adaptive_round(proj, votes)
    ds = reference_wanted(proj, rid, ids, set(), target=0.95)
    assert all(ds[ids[k]] == 2 for k in range(12, 16))  # settled by the posterior alone
    decision = decide(proj, rid)
    assert decision is not None
    assert all(decision.wanted[ids[k]] == 3 for k in range(12, 16))  # a tie for majority


def test_a_settled_round_is_full_without_max_votes(proj: Project) -> None:
    proj.config.agreement.consensus = "dawid_skene"
    votes = {k: [CLASSES3[k % 3]] * 2 for k in range(12)}
    rid, ids = adaptive_round(proj, votes, target=0.9)
    decision = decide(proj, rid)
    assert decision is not None and decision.raised == {} and decision.waiting == 0
    assert round_progress(proj.store, rid).complete and open_tasks(proj, rid) == 0


def test_abort_locks_a_task_short_of_the_votes_asked_for_it(proj: Project) -> None:
    from labelstudio.push import withdraw_round

    rid, ids = adaptive_round(proj, {0: ["cat"], 1: ["dog"], 2: []})
    with round_metrics.editing(proj.store, rid) as m:
        assert m.adaptive_votes is not None
        m.adaptive_votes.targets = {ids[0]: 2}  # asked for a second vote
    proj.store.set_meta("ls_project_id", 1)
    proj.store.set_meta("ls_image_url_base", "/data/local-files/?d=")

    class Tasks(TaskLog):
        deleted: list[int] = []

        def iter_tasks(self, project_id: int, *, annotations: bool = False, **_kw: Any) -> Any:
            for k, n in ((0, 1), (1, 1), (2, 0)):
                yield {"id": FIRST_TASK_ID + k, "data": {}, "annotations": [{}] * n}

        def update_task(self, task_id: int, **fields: Any) -> None:
            self.overlap[int(task_id)] = int(fields["overlap"])

        def delete_task(self, task_id: int) -> bool:
            self.deleted.append(task_id)
            return True

    ls = Tasks()
    got = withdraw_round(proj.store, ls, rid)  # type: ignore[arg-type]
    assert (got.locked, got.deleted, got.complete) == (1, 1, 1)
    assert ls.overlap == {FIRST_TASK_ID: 1} and ls.deleted == [FIRST_TASK_ID + 2]


# -- close: agreement on gold and audit items only -------------------------------------
def test_agreement_rests_on_the_gold_and_audit_items_with_max_votes(proj: Project) -> None:
    rng = np.random.default_rng(4)
    votes: dict[int, list[str]] = {}
    for k in range(16):
        n = 3 if k < 8 else 1 + k % 2
        votes[k] = [CLASSES3[int(rng.integers(0, 3))] for _ in range(n)]
    votes[7] = votes[7][:2]  # an audit item short of its votes does not count
    rid, ids = adaptive_round(proj, votes, gold={0: "cat", 1: "dog"})
    with round_metrics.editing(proj.store, rid) as m:
        assert m.adaptive_votes is not None
        m.adaptive_votes.audit_items = [ids[k] for k in range(2, 8)]
        m.adaptive_votes.targets = {ids[k]: 3 for k in range(8)}
    metrics = close_round(proj, rid)
    on = sorted(ids[k] for k in range(7))
    assert metrics.adaptive_votes is not None and metrics.adaptive_votes.agreement_items == on
    kappas = [cohen_kappa_score([votes[k][a] for k in range(7)], [votes[k][b] for k in range(7)],
                                labels=CLASSES3) for a, b in ((0, 1), (0, 2), (1, 2))]
    assert metrics.kappa == pytest.approx(float(np.mean(kappas)))
    assert metrics.agreement is not None and metrics.agreement["n_items"] == 7
    status = project_status(proj)["votes"]
    assert status["adaptive_rounds"][0]["agreement_items"] == on
    for number in (get_round(proj.store, rid).number, None):  # alearn agreement [--round]
        view = agreement_summary(proj, round_number=number)
        assert view["agreement_items"] == on and view["report"]["n_items"] == 7


def test_the_agreement_view_shows_the_annotators_accuracy_the_close_estimates(
        proj: Project, tmp_path: Path) -> None:
    # annotator 2 answers at random; the second round's close starts from the track
    # record of the first, so plain Dawid-Skene over its votes alone reads differently
    proj.config.agreement.consensus = "dawid_skene"
    rng = np.random.default_rng(6)

    def one_round(first: int) -> int:
        votes: dict[int, list[str | None]] = {}
        for k in range(first, first + 24):
            truth = CLASSES3[k % 3]
            votes[k] = [truth, truth if rng.random() < 0.8 else CLASSES3[(k + 1) % 3],
                        CLASSES3[int(rng.integers(0, 3))]]
        rid, ids = adaptive_round(proj, votes)
        with round_metrics.editing(proj.store, rid) as m:
            assert m.adaptive_votes is not None
            m.adaptive_votes.audit_items = list(ids.values())
            m.adaptive_votes.targets = dict.fromkeys(ids.values(), 3)
        return rid

    close_round(proj, one_round(0))
    rid = one_round(24)
    number = get_round(proj.store, rid).number
    running = agreement_summary(proj, round_number=number)  # before the close
    metrics = close_round(proj, rid)
    stored = {a["annotator"]: a["model_accuracy"] for a in metrics.annotators}
    assert len(stored) == 3 and all(v is not None for v in stored.values())
    assert stored[ANNOTATORS[0]] > stored[ANNOTATORS[1]] > stored[ANNOTATORS[2]]
    # a running round: Dawid-Skene from the track record, as its close starts from
    shown = {a["annotator"]: a["model_accuracy"] for a in running["quality"]}
    assert shown == pytest.approx(stored)
    rows = {a["annotator"]: a["accuracy (consensus)"] for a in running["annotators"]}
    assert rows == {who: f"{acc:.3f}" for who, acc in stored.items()}
    # a closed round: what its close stored (the report and the convergence check read
    # it), however the figures would come out if fitted again
    with round_metrics.editing(proj.store, rid) as m:
        m.annotators = [{**m.annotators[0], "model_accuracy": 0.123}, *m.annotators[1:]]
    first = metrics.annotators[0]["annotator"]
    closed = agreement_summary(proj, round_number=number)
    assert running["annotator_accuracy"].startswith("Dawid-Skene over the round's votes so far")
    assert closed["annotator_accuracy"] == "as the round's close estimated it"
    assert agreement_summary(proj)["annotator_accuracy"] == "Dawid-Skene over every vote"
    assert {a["annotator"]: a["accuracy (consensus)"] for a in closed["annotators"]}[first] \
        == "0.123"
    # stored values that are not what a close writes show as '-', never a traceback
    with round_metrics.editing(proj.store, rid) as m:
        m.annotators = [
            {**m.annotators[0], "model_accuracy": "abc", "reasons": "not a list",
             "flagged": True, "n_items": {"x": 1}, "loo_accuracy": "0.5", "n_gold": "2"},
            {**m.annotators[1], "model_accuracy": [1], "reasons": [None, "real reason"],
             "flagged": True},
            {**m.annotators[2], "model_accuracy": 10**400, "n_items": 10**400,
             "flagged": "yes", "reasons": ["a reason"]},
            *m.annotators[3:]]
    rows = {a["annotator"]: a for a in agreement_summary(proj, round_number=number)["annotators"]}
    assert rows[first]["accuracy (consensus)"] == "-" and rows[first]["flag"] == ""
    assert rows[first]["items"] == 0 and rows[first]["accuracy vs others"] == "-"
    assert rows[first]["gold accuracy"] == "-"
    second = metrics.annotators[1]["annotator"]
    assert rows[second]["accuracy (consensus)"] == "-"
    assert rows[second]["flag"] == "real reason"
    third = metrics.annotators[2]["annotator"]
    assert (rows[third]["accuracy (consensus)"], rows[third]["items"]) == ("-", 0)
    assert rows[third]["flag"] == ""  # flagged only when the close said True
    project_status(proj)  # and the status and the report read the same record
    from alearn.report.html import write_report
    assert "Annotator quality" in write_report(proj, tmp_path / "report.html").read_text()


def test_the_agreement_view_of_a_running_round_fits_no_head(
        proj: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    assert proj.config.agreement.consensus == "model_aware"  # the default reads the head
    votes = {k: [CLASSES3[k % 3], CLASSES3[k % 3], CLASSES3[(k + 1) % 3]] for k in range(12)}
    rid, ids = adaptive_round(proj, dict(votes))
    with round_metrics.editing(proj.store, rid) as m:
        assert m.adaptive_votes is not None
        m.adaptive_votes.audit_items = list(ids.values())
        m.adaptive_votes.targets = dict.fromkeys(ids.values(), 3)

    def no_head(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("the agreement view asked for the head's probabilities")

    import alearn.rounds.votes as votes_mod
    monkeypatch.setattr(votes_mod, "model_inputs", no_head)
    view = agreement_summary(proj, round_number=get_round(proj.store, rid).number)
    assert [a["annotator"] for a in view["annotators"]] == list(ANNOTATORS[:3])


def test_a_round_with_few_audit_items_reaches_back_to_the_rounds_before(proj: Project) -> None:
    rng = np.random.default_rng(5)
    votes: dict[int, list[str]] = {}
    seen = []  # per round: (its number, the agreement items, the rounds they come from)
    for r in range(3):  # each round: 3 audit items with 3 votes, 7 items with 1
        mine = {k: [CLASSES3[int(rng.integers(0, 3))] for _ in range(3 if k % 10 < 3 else 1)]
                for k in range(10 * r, 10 * r + 10)}
        votes.update(mine)
        rid, ids = adaptive_round(proj, mine, audit_min_items=7)
        audit = [ids[k] for k in list(mine)[:3]]
        with round_metrics.editing(proj.store, rid) as m:
            assert m.adaptive_votes is not None
            m.adaptive_votes.audit_items, m.adaptive_votes.targets = audit, dict.fromkeys(audit, 3)
        metrics = close_round(proj, rid)
        plan = metrics.adaptive_votes
        assert plan is not None and plan.agreement_items is not None
        seen.append((get_round(proj.store, rid).number, len(plan.agreement_items),
                     plan.agreement_rounds))
        if r == 2:
            last, last_plan = metrics, plan
    first = seen[0][0]
    # 3 items alone; 3 + 3 is still under 7, so the third round reaches back two rounds
    assert seen == [(first, 3, [first]), (first + 1, 6, [first, first + 1]),
                    (first + 2, 9, [first, first + 1, first + 2])]
    on = [k for k in votes if k % 10 < 3]
    kappas = [cohen_kappa_score([votes[k][a] for k in on], [votes[k][b] for k in on],
                                labels=CLASSES3) for a, b in ((0, 1), (0, 2), (1, 2))]
    assert last.kappa == pytest.approx(float(np.mean(kappas)))
    assert last.agreement is not None and last.agreement["n_items"] == 9
    # what status shows of the last round
    shown = project_status(proj)["votes"]["adaptive_rounds"][-1]
    assert shown["agreement_rounds"] == [first, first + 1, first + 2]
    assert sorted(shown["agreement_items"]) == sorted(last_plan.agreement_items)


def test_clicks_per_trusted_label_counts_every_vote_and_human_labels(proj: Project) -> None:
    rid, ids = adaptive_round(proj, {0: ["cat"], 1: ["dog", "dog"], 2: ["cat", "bird", "cat"]},
                              gold={2: "cat"})
    assert clicks_per_trusted_label(proj.store)["clicks_per_trusted_label"] is None
    with proj.store.session() as s:
        s.add(Label(item_id=ids[0], label="cat", origin="consensus"))
        s.add(Label(item_id=ids[1], label="dog", origin="adjudicated"))
    # 6 annotations + 1 adjudication decision over 2 labels people made (gold not counted)
    assert clicks_per_trusted_label(proj.store) == {
        "clicks": 7, "trusted_labels": 2, "clicks_per_trusted_label": 3.5}


# -- a real Label Studio ---------------------------------------------------------------
CLASSES = ["cat", "dog", "bird", "fish"]


def truth_of(path: str) -> str:
    return CLASSES[int(Path(path).stem) % len(CLASSES)]


def answer(who: int, path: str) -> str:
    """Annotator ``who``'s answer: right with probability 0.75, else another class."""
    k, true = len(CLASSES), CLASSES.index(truth_of(path))
    rng = np.random.default_rng([11, who, int(Path(path).stem)])
    right = rng.random() < 0.75
    return CLASSES[true if right else (true + int(rng.integers(1, k))) % k]


def live_project(tmp_path: Path, n: int, **agreement: Any) -> Project:
    project = ingested_project(tmp_path, n, seed=1300, classes=CLASSES,
                               embed={"batch_size": 16}, batch_size=n, min_labels_per_class=2)
    for key, value in {"consensus": "dawid_skene", **agreement}.items():
        setattr(project.config.agreement, key, value)
    project.save_config()
    return project


def paths_of(project: Project) -> dict[int, str]:
    with project.store.session() as s:
        return dict(s.execute(select(Item.id, Item.path)).all())


def test_a_raised_task_is_served_again_to_a_second_annotator(
    live_ls, env: Redis, tmp_path: Path
) -> None:
    from labelstudio.adjudication import request_more_votes
    from workers.orchestrate import start_round

    project = live_project(tmp_path, 6, audit_rate=0.0)
    team = [live_ls.new_annotator(f"ad{j}", store=project.store) for j in range(3)]
    rnd = start_round(project, env)
    work(env)
    assert get_round(project.store, rnd.id).status == PUSHED
    pid = int(project.store.get_meta("ls_project_id"))
    paths = paths_of(project)
    first: list[int] = []
    assert label_stream(live_ls.url, team[0].token, pid,
                        lambda d: first.append(int(d["item_id"])) or "cat") == 6
    assert label_stream(live_ls.url, team[1].token, pid, lambda d: "cat") == 0  # min_votes 1
    raised = sorted(first)[2]
    with live_ls.client() as client:
        assert request_more_votes(project.store, client, {raised: 2}, rnd.id) == 1
    served: list[int] = []
    assert label_stream(live_ls.url, team[1].token, pid,
                        lambda d: served.append(int(d["item_id"]))
                        or truth_of(paths[int(d["item_id"])])) == 1
    assert served == [raised]
    assert label_stream(live_ls.url, team[2].token, pid, lambda d: "cat") == 0  # 2 reached


def simulate(items: list[int], forced: set[int], emails: list[str], paths: dict[int, str],
             *, target: float) -> tuple[int, int]:
    """The same round replayed without alearn's round code: annotators label in turn
    every task Label Studio would serve them; after each pass the rule (Dawid-Skene
    posterior, votes_wanted) raises targets. Returns (clicks, passes that raised)."""
    asked = {i: 3 if i in forced else 1 for i in items}
    given: dict[int, list[int]] = {i: [] for i in items}
    raised_passes = 0
    while True:
        for j in range(len(emails)):
            for i in items:
                if len(given[i]) < asked[i] and j not in given[i]:
                    given[i].append(j)
        votes = sorted((i, emails[j], answer(j, paths[i])) for i in items for j in given[i])
        ratings = ratings_matrix(votes, CLASSES)
        cons = dawid_skene(ratings.matrix, n_classes=len(CLASSES), tie_policy="adjudicate",
                           min_confidence=0.6)
        row = {int(str(i)): r for r, i in enumerate(ratings.items)}
        conf = [0.0 if str(cons.status[row[i]]) == "tie" else float(cons.confidence[row[i]])
                for i in items]
        wanted = votes_wanted(conf, [len(given[i]) for i in items], min_votes=1,
                              max_votes=3, target=target,
                              always_max=[i in forced for i in items])
        new = {i: max(asked[i], int(w)) for i, w in zip(items, wanted.tolist(), strict=True)}
        if new == asked:
            return sum(len(v) for v in given.values()), raised_passes
        asked, raised_passes = new, raised_passes + 1


def test_a_min_votes_round_closes_by_itself_after_the_clicks_the_rule_wants(
    live_ls, env: Redis, tmp_path: Path
) -> None:
    from workers.enqueue import enqueue_pull
    from workers.orchestrate import start_round

    project = live_project(tmp_path, 16, audit_rate=0.25, confidence_target=0.95)
    team = [live_ls.new_annotator(f"mv{j}", store=project.store) for j in range(3)]
    rnd = start_round(project, env)
    work(env)
    plan = round_metrics.of(get_round(project.store, rnd.id)).adaptive_votes
    # a quarter of 16 is 4: the slice asks no more votes to meet audit_min_items (8)
    assert plan is not None and len(plan.audit_items) == 4
    pid = int(project.store.get_meta("ls_project_id"))
    paths = paths_of(project)
    with project.store.session() as s:
        items = sorted(s.scalars(select(Selection.item_id).where(Selection.round_id == rnd.id)))
    clicks, raised_passes = simulate(items, set(plan.audit_items), [a.email for a in team],
                                     paths, target=0.95)
    assert raised_passes >= 1 and clicks < 3 * len(items)  # the scenario raises and saves
    for _ in range(6):
        for j, who in enumerate(team):
            label_stream(live_ls.url, who.token, pid,
                         lambda d, j=j: answer(j, paths[int(d["item_id"])]), lead_time=1.0)
        assert enqueue_pull(project, env, delay=0)
        work(env)  # pull -> more votes asked, or the round full -> close
        if get_round(project.store, rnd.id).status == CLOSED:
            break
    done = get_round(project.store, rnd.id)
    assert done.status == CLOSED
    metrics = round_metrics.of(done)
    assert metrics.labels_spent == clicks
    assert metrics.adaptive_votes is not None
    assert metrics.adaptive_votes.agreement_items == sorted(plan.audit_items)
    assert metrics.adaptive_votes.agreement_rounds == [done.number]  # no round before it
    assert metrics.agreement is not None and metrics.agreement["n_items"] == 4
    assert project_status(project)["votes"]["clicks"] == clicks
