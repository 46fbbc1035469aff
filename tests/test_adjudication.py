"""Adjudication on the store (no Label Studio): the reviewer's decisions become trusted
labels, others are set aside with their reason; 'more_votes' targets; the settings."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

import pytest
from factories import CLASSES, FIRST_TASK_ID, voted_round
from pydantic import ValidationError
from redis import Redis
from sqlalchemy import select

from alearn.config import AgreementConfig, ProjectConfig, Settings, render_config
from alearn.project import Project
from alearn.report.status import project_status
from alearn.rounds import metrics as round_metrics
from alearn.rounds.adjudication import (
    EXTRA_VOTES,
    Decision,
    adjudication_queue,
    apply_decisions,
    judge_decision,
    more_votes_targets,
    record_more_votes,
    votes_text,
)
from alearn.rounds.close import close_round
from alearn.rounds.lifecycle import get_round, round_progress
from alearn.store import Annotation, Label, Round
from alearn.team import add_member
from labelstudio.adjudication import adjudication_label_config, decision_of

VOTES = {
    0: ["cat", "cat", "cat"],
    1: ["cat", "dog", "bird"],    # tie
    2: ["dog", "bird", "cat"],    # tie
    3: ["bird", "cat", "dog"],    # tie
    4: ["dog", "dog", "bird"],
}


def _decision(n: int, item: int, rnd: int, who: str, *labels: str, minute: int = 0,
              cancelled: bool = False) -> Decision:
    return Decision(ls_annotation_id=n, ls_task_id=900 + item, item_id=item, round_id=rnd,
                    reviewer=who, labels=labels, cancelled=cancelled,
                    updated_at=dt.datetime(2025, 1, 1, 12, minute))


def test_votes_text() -> None:
    text = votes_text([("ann-c", "dog"), ("ann-b", "cat"), ("ann-a", "cat")], CLASSES)
    assert text == "cat: 2 (ann-a, ann-b), dog: 1 (ann-c)"
    assert votes_text([("x", "bird"), ("y", "cat")], CLASSES) == "cat: 1 (y), bird: 1 (x)"
    assert votes_text([], CLASSES) == "no votes"


def test_judge_decision_reviewer_filter_and_labels() -> None:
    ok = _decision(1, 5, 1, "Rev@Team.org", "dog")
    nobody = judge_decision(ok, CLASSES, [])                              # no reviewers:
    assert "is not a reviewer (reviewers: none" in nobody                 # nobody decides
    assert judge_decision(ok, CLASSES, ["rev@team.org"]) is None         # case-insensitive
    why = judge_decision(ok, CLASSES, ["boss@team.org"])
    assert "Rev@Team.org is not a reviewer" in why and "boss@team.org" in why
    r = ["r"]
    assert "not one of the classes" in judge_decision(_decision(2, 5, 1, "r", "fish"), CLASSES, r)
    assert "several choices" in judge_decision(_decision(3, 5, 1, "r", "cat", "dog"), CLASSES, r)
    assert judge_decision(_decision(4, 5, 1, "r"), CLASSES, r) == "no choice made"
    skipped = _decision(5, 5, 1, "r", cancelled=True)
    assert judge_decision(skipped, CLASSES, r) == "skipped by the reviewer"


def test_queue_lists_unsettled_items_with_their_votes(proj: Project) -> None:
    proj.config.agreement.consensus = "majority"  # these ties are majority vote's
    rid, ids = voted_round(proj, VOTES)
    m = close_round(proj, rid)
    assert m.adjudication_items == [ids[1], ids[2], ids[3]]
    assert m.adjudication.to_json() == {"mode": "review", "items": 3, "pushed": 0, "decided": 0,
                                 "pending": 3, "set_aside": []}
    queue = adjudication_queue(proj.store, rid, CLASSES)
    assert [q["item_id"] for q in queue] == [ids[1], ids[2], ids[3]]
    assert queue[0] == {"item_id": ids[1], "path": "1.png",
                        "votes_text": "cat: 1 (ann-a), dog: 1 (ann-b), bird: 1 (ann-c)"}


def test_decisions_become_adjudicated_labels_others_set_aside(proj: Project) -> None:
    proj.config.agreement.consensus = "majority"  # these ties are majority vote's
    proj.config.agreement.reviewers = ["rev@team.org"]
    rid, ids = voted_round(proj, VOTES)
    close_round(proj, rid)
    tasks = {(ids[k], rid) for k in (1, 2, 3)}
    decisions = [
        _decision(11, ids[1], rid, "rev@team.org", "dog"),
        _decision(12, ids[2], rid, "ann-a@team.org", "cat"),        # not a reviewer
        _decision(13, ids[3], rid, "rev@team.org", "fish"),         # unknown label
        _decision(14, ids[1], rid, "rev@team.org", "bird", minute=5),  # later: wins
    ]
    summary = apply_decisions(proj.store, decisions, tasks=tasks, classes=CLASSES,
                              reviewers=proj.config.agreement.reviewers)
    assert summary.to_dict() == {"tasks": 3, "decided": 1, "set_aside": 2, "withdrawn": 0,
                                 "pending": 2}
    with proj.store.session() as s:
        labels = {lab.item_id: lab for lab in s.scalars(select(Label))}
    lab = labels[ids[1]]
    assert (lab.label, lab.origin, lab.confidence, lab.method, lab.round_id) == (
        "bird", "adjudicated", 1.0, "adjudication", rid)
    assert ids[2] not in labels and ids[3] not in labels
    adj = get_round(proj.store, rid).metrics["adjudication"]
    assert (adj["items"], adj["pushed"], adj["decided"], adj["pending"]) == (3, 3, 1, 2)
    reasons = {a["ls_annotation_id"]: a["reason"] for a in adj["set_aside"]}
    assert set(reasons) == {12, 13}
    assert "not a reviewer" in reasons[12] and "not one of the classes" in reasons[13]
    status = project_status(proj)["adjudication"]
    assert (status["pending"], status["decided"], len(status["set_aside"])) == (2, 1, 2)
    assert status["mode"] == "review"
    # idempotent: the same decisions again change nothing
    again = apply_decisions(proj.store, decisions, tasks=tasks, classes=CLASSES,
                            reviewers=proj.config.agreement.reviewers)
    assert again.decided == 1 and get_round(proj.store, rid).metrics["adjudication"] == adj
    # the decision deleted in Label Studio: the label is withdrawn, the item pending again
    gone = apply_decisions(proj.store, decisions[1:3], tasks=tasks, classes=CLASSES,
                           reviewers=proj.config.agreement.reviewers)
    assert gone.withdrawn == 1 and gone.pending == 3
    assert ids[1] not in proj.store.trusted_labels()
    # a consensus label is never withdrawn, a gold label never overwritten
    assert proj.store.trusted_labels()[ids[0]] == "cat"


def test_decision_on_a_gold_item_is_set_aside(proj: Project) -> None:
    rid, ids = voted_round(proj, VOTES, gold={1: "cat"})
    close_round(proj, rid)
    s = apply_decisions(proj.store, [_decision(1, ids[1], rid, "r", "dog")],
                        tasks={(ids[1], rid)}, classes=CLASSES, reviewers=["r"])
    assert s.decided == 0 and s.set_aside == 1
    assert proj.store.trusted_labels()[ids[1]] == "cat"


def test_decision_of_reads_label_studio_annotations() -> None:
    task = {"id": 31, "data": {"item_id": 7, "round": 2, "votes_text": "x"}}
    ann = {"id": 5, "completed_by": 3, "was_cancelled": False,
           "updated_at": "2025-01-01T12:00:00.5Z",
           "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                       "value": {"choices": ["dog"]}}]}
    d = decision_of(ann, task, {3: "rev@team.org"})
    assert d == Decision(ls_annotation_id=5, ls_task_id=31, item_id=7, round_id=2,
                         reviewer="rev@team.org", labels=("dog",), cancelled=False,
                         updated_at=dt.datetime(2025, 1, 1, 12, 0, 0, 500000))
    skipped = decision_of({**ann, "result": [], "was_cancelled": True}, task, {})
    assert skipped.labels == () and skipped.cancelled and skipped.reviewer == "user:3"
    with pytest.raises(ValueError, match="item id missing"):
        decision_of(ann, {"id": 31, "data": {}}, {})


def test_adjudication_label_config_shows_image_votes_and_choices() -> None:
    root = ET.fromstring(adjudication_label_config(CLASSES))
    assert root.find("Image").get("value") == "$image"
    assert root.find("Text").get("value") == "$votes_text"
    choices = root.find("Choices")
    assert (choices.get("name"), choices.get("toName")) == ("label", "image")
    assert [c.get("value") for c in choices] == CLASSES
    assert [c.get("hotkey") for c in choices] == ["1", "2", "3"]


def test_more_votes_targets_progress_and_close(proj: Project) -> None:
    proj.config.agreement.consensus = "majority"  # these ties are majority vote's
    proj.config.agreement.adjudication = "more_votes"
    rid, ids = voted_round(proj, VOTES, gold={2: "dog"})
    assert round_progress(proj.store, rid).complete
    targets = more_votes_targets(proj, rid)
    assert targets == {ids[1]: 3 + EXTRA_VOTES, ids[3]: 3 + EXTRA_VOTES}  # not the gold tie
    record_more_votes(proj.store, rid, targets)
    assert round_metrics.of(get_round(proj.store, rid)).vote_targets == targets
    assert more_votes_targets(proj, rid) == {}  # asked once per round
    progress = round_progress(proj.store, rid)
    assert not progress.complete and progress.tasks_done == 3
    assert project_status(proj)["adjudication"]["waiting_for_votes"] == 2
    with proj.store.session() as s:  # two more annotators vote on item 1 only
        for n, who in enumerate(("ann-d", "ann-e")):
            s.add(Annotation(ls_annotation_id=100 + n, ls_task_id=FIRST_TASK_ID + 1, item_id=ids[1],
                             round_id=rid, annotator=who, label="dog"))
    assert round_progress(proj.store, rid).tasks_done == 4
    m = close_round(proj, rid)  # over all votes: item 1 is settled now, item 3 is not
    assert proj.store.trusted_labels()[ids[1]] == "dog"
    assert m.adjudication_items == [ids[3]] and m.adjudication.mode == "more_votes"


def test_settings_fields() -> None:
    cfg = AgreementConfig()
    assert cfg.adjudication == "review" and cfg.reviewers == []
    with pytest.raises(ValidationError):
        AgreementConfig(adjudication="vote_again")
    text = render_config(ProjectConfig(classes=CLASSES))
    assert 'adjudication = "review"' in text and "reviewers = []" in text
    assert "decision becomes the trusted label" in text


def test_round_metrics_are_reassigned_not_mutated(proj: Project) -> None:
    """JSON columns only save a new value: check that the stored metrics changed."""
    proj.config.agreement.consensus = "majority"  # these ties are majority vote's
    rid, ids = voted_round(proj, VOTES)
    close_round(proj, rid)
    apply_decisions(proj.store, [_decision(1, ids[2], rid, "r", "cat")],
                    tasks={(ids[2], rid)}, classes=CLASSES, reviewers=["r"])
    proj.store.dispose()
    with proj.store.session() as s:
        assert s.get(Round, rid).metrics["adjudication"]["decided"] == 1


def test_reconcile_enqueues_a_missing_adjudication_push_and_status_shows_it(
    proj: Project, redis_conn: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real Redis: a closed round whose unsettled items never reached Label Studio gets
    its push enqueued (once a minute at most); ``alearn status`` prints the counts."""
    proj.config.agreement.consensus = "majority"  # these ties are majority vote's
    from click.testing import CliRunner

    from alearn.cli import cli
    from workers import queues
    from workers.reconcile import reconcile

    monkeypatch.setenv("ALEARN_DATABASE_URL", proj.settings.database_url or "")
    proj.settings = Settings()  # the test Redis (redis_conn) and the project's database
    rid, _ids = voted_round(proj, VOTES)
    close_round(proj, rid)
    assert reconcile(proj, redis_conn) == []  # no reviewer: nothing could decide them
    add_member(proj.store, "rev@team.org", "reviewer")
    assert reconcile(proj, redis_conn) == ["round 1: adjudication push enqueued"]
    assert reconcile(proj, redis_conn) == []  # debounced
    (job,) = queues.get_queue(redis_conn, proj.settings, "sync").get_jobs()
    assert job.func_name == "workers.jobs.adjudication_push_job"
    assert job.args == (str(proj.root), rid)
    out = CliRunner().invoke(cli, ["--project", str(proj.root), "status"])
    assert out.exit_code == 0, out.output
    assert "Adjudication (review): 3 pending, 0 decided, 0 decisions set aside" in out.output
