"""Label review: after a close, the top suspect trusted labels (never reviewed before) go
to the adjudication project; a reviewer's decision replaces the label and keeps its
history; status, the report and the export count the labels corrected by review."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from factories import CLASSES, ingested_project, voted_round
from sqlalchemy import select

from alearn.export.dataset import export_dataset
from alearn.features.backbone import cache_key_for
from alearn.features.cache import FeatureCache
from alearn.project import Project
from alearn.report.sections import adjudication as adjudication_section
from alearn.report.status import project_status
from alearn.rounds.adjudication import Decision, apply_decisions
from alearn.rounds.label_errors import SuspectLabel
from alearn.rounds.label_history import corrected_by_review, review_history, review_status
from alearn.rounds.label_review import review_queue, select_for_review, sent_for_review
from alearn.store import Item, Label
from alearn.team import add_member

REVIEWER = "rev@example.com"


def _suspect(item: int, score: float, doubtful: bool = True) -> SuspectLabel:
    return SuspectLabel(item_id=item, label="cat", suggested="dog", score=score, flagged=True,
                        votes={"a@x": "cat"}, suggested_proba=0.9, doubtful=doubtful)


def test_select_for_review_takes_the_top_k_not_reviewed_and_is_off_at_zero() -> None:
    ranked = [_suspect(i, 2.0 - i / 10) for i in (7, 3, 9, 1, 5)]
    assert [s.item_id for s in select_for_review(ranked, set(), 3)] == [7, 3, 9]
    assert [s.item_id for s in select_for_review(ranked, {3, 9}, 3)] == [7, 1, 5]
    assert [s.item_id for s in select_for_review(ranked, {7, 3, 9, 1}, 3)] == [5]
    assert select_for_review(ranked, set(), 0) == []
    assert [s.item_id for s in select_for_review(ranked, set(), 10)] == [7, 3, 9, 1, 5]


def test_select_for_review_sends_only_labels_something_speaks_against() -> None:
    ranked = [_suspect(7, 2.0), _suspect(3, 1.5, doubtful=False), _suspect(9, 1.2),
              _suspect(1, 0.4, doubtful=False)]
    assert [s.item_id for s in select_for_review(ranked, set(), 3)] == [7, 9]


def _suspect_project(project: Project) -> tuple[int, dict[int, int], set[int], np.ndarray]:
    """60 items in 3 well-separated blobs; 40 earlier consensus labels without votes and a
    round of 20 voted ones: two agreeing votes each, except keys 40, 41, 42, where one
    annotator gave a wrong label alone (the posterior, with the model against it, stays
    below the settled mark)."""
    rng = np.random.default_rng(2)
    truth = np.arange(60) % 3
    X = rng.normal(size=(60, 10))
    X[:, :3] += 5.0 * np.eye(3)[truth]
    shas = [f"{2000 + i:064x}" for i in range(40)] + [f"{k:064x}" for k in range(40, 60)]
    with project.store.session() as s:
        for i in range(40):
            s.add(Item(id=2000 + i, sha256=shas[i], path=f"e/{i}.png", width=8, height=8))
            s.add(Label(item_id=2000 + i, label=CLASSES[truth[i]], origin="consensus"))
    FeatureCache(project.features_dir, cache_key_for(project.config.embed, root=project.root)
                 ).put(shas, X.astype(np.float32))
    bad = {40, 41, 42}
    said = {k: CLASSES[(truth[k] + (k in bad)) % 3] for k in range(40, 60)}
    rnd, ids = voted_round(project, {k: [said[k]] if k in bad else [said[k], said[k]]
                                     for k in said})
    with project.store.session() as s:
        for k, label in said.items():
            s.add(Label(item_id=ids[k], label=label, origin="consensus"))
    return rnd, ids, {ids[k] for k in bad}, truth


def test_review_queue_sends_the_top_suspects_once(project: Project) -> None:
    r1, ids, bad, truth = _suspect_project(project)
    project.config.review.max_per_round = 2
    first = review_queue(project, r1)
    assert len(first) == 2 and {q["item_id"] for q in first} <= bad
    key = {v: k for k, v in ids.items()}
    for q in first:  # the votes, the trusted label and the model's view, for the reviewer
        k = key[q["item_id"]]
        assert "Label review" in q["votes_text"] and "Votes: " in q["votes_text"]
        assert f"Model: {CLASSES[truth[k]]} (" in q["votes_text"]
        assert q["path"] == f"{k}.png"
    assert review_queue(project, r1) == first  # the round's push run again: same items
    r2 = r1 + 1  # later closes (the queue keys on the round id only)
    second = review_queue(project, r2)
    # the third bad one comes next, and no more: two votes and the model settle the
    # other labels, so no reviewer's click is spent on them
    assert {q["item_id"] for q in first + second} == bad and len(second) == 1
    assert set(sent_for_review(project.store)) == bad
    assert review_queue(project, r1 + 2) == []
    project.config.review.max_per_round = 0
    assert review_queue(project, r1 + 3) == []


def _decide(n: int, item: int, who: str, label: str, rnd: int | None = None) -> Decision:
    return Decision(ls_annotation_id=n, ls_task_id=900 + n, item_id=item, round_id=rnd,
                    reviewer=who, labels=(label,),
                    updated_at=dt.datetime(2026, 1, 2, 3, 4, n))


def _labels(project: Project, items: list[int]) -> dict[int, tuple[str, str]]:
    with project.store.session() as s:
        return {i: (lab, origin) for i, lab, origin in s.execute(
            select(Label.item_id, Label.label, Label.origin).where(Label.item_id.in_(items)))}


def test_a_reviewer_decision_replaces_the_label_and_keeps_its_history(project: Project) -> None:
    _, ids = voted_round(project, {0: ["cat", "cat"], 1: ["dog", "dog"], 2: ["bird", "bird"]})
    a, b, c = ids[0], ids[1], ids[2]
    with project.store.session() as s:
        for item, lab in ((a, "cat"), (b, "dog"), (c, "bird")):
            s.add(Label(item_id=item, label=lab, origin="consensus", method="majority",
                        confidence=0.8))
    tasks = {(a, None), (b, None), (c, None)}
    decisions = [_decide(1, a, REVIEWER, "dog"), _decide(2, b, REVIEWER, "dog"),
                 _decide(3, c, "someone@else", "cat")]  # not a reviewer: set aside
    kw = {"tasks": tasks, "classes": CLASSES, "reviewers": [REVIEWER]}
    summary = apply_decisions(project.store, decisions, **kw)
    assert summary.decided == 2 and summary.set_aside == 1
    assert _labels(project, [a, b, c]) == {a: ("dog", "adjudicated"), b: ("dog", "adjudicated"),
                                           c: ("bird", "consensus")}
    history = review_history(project.store)
    assert [(h["item_id"], h["was"], h["became"], h["by"], h["reason"]) for h in history] == [
        (a, "cat", "dog", REVIEWER, "label review"), (b, "dog", "dog", REVIEWER, "label review")]
    assert history[0]["at"] == "2026-01-02T03:04:01" and not history[0]["withdrawn"]
    assert corrected_by_review(project.store) == 1  # b was confirmed, not corrected
    apply_decisions(project.store, decisions, **kw)  # applied again: nothing new
    assert len(review_history(project.store)) == 2 and corrected_by_review(project.store) == 1
    # the decision on a is deleted in Label Studio: a gets its old label back
    apply_decisions(project.store, decisions[1:], **kw)
    assert _labels(project, [a])[a] == ("cat", "consensus")
    with project.store.session() as s:
        old = s.scalars(select(Label).where(Label.item_id == a)).one()
        assert (old.method, old.confidence) == ("majority", 0.8)
    assert corrected_by_review(project.store) == 0
    assert [h["withdrawn"] for h in review_history(project.store)] == [True, False]


def test_status_report_and_export_count_corrected_labels(tmp_path: Path) -> None:
    project = ingested_project(tmp_path, 12, seed=5)
    add_member(project.store, REVIEWER, role="reviewer")
    with project.store.session() as s:
        items = list(s.scalars(select(Item.id).order_by(Item.id)))
        for n, item in enumerate(items):
            s.add(Label(item_id=item, label=CLASSES[n % 3], origin="consensus"))
    project.store.set_meta("label_review_items", {str(items[0]): 1, str(items[1]): 1})
    apply_decisions(project.store, [_decide(1, items[0], REVIEWER, "dog"),
                                    _decide(2, items[1], REVIEWER, "dog")],
                    tasks={(items[0], None), (items[1], None)}, classes=CLASSES,
                    reviewers=[REVIEWER])
    assert review_status(project.store) == {"sent": 2, "decided": 2, "corrected": 1}
    assert project_status(project)["label_review"] == {"sent": 2, "decided": 2, "corrected": 1}
    html = adjudication_section(project)
    assert "2 trusted labels likely wrong sent to a reviewer" in html
    assert "<b>1 corrected by review</b>" in html
    export_dataset(project, tmp_path / "out", format="csv")
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert "Labels corrected by review: 1 " in card


def test_a_suspect_label_reaches_label_studio_and_a_reviewer_replaces_it(
    live_ls, env, tmp_path: Path
) -> None:
    """Through Label Studio: two annotators agree on every image, and the settled mark
    (agreement.confidence_target) is 1.0, so that no posterior settles a label; the close
    sends the top 3 suspects to the adjudication project (with the label review text);
    the reviewer changes each; the pull replaces the labels and keeps their history."""
    from ls_server import work

    from alearn.rounds.lifecycle import CLOSED, get_round
    from labelstudio.annotators import label_stream
    from workers.enqueue import enqueue_pull
    from workers.orchestrate import start_round

    project = ingested_project(tmp_path, 30, seed=900, embed={"batch_size": 16})
    team = [live_ls.new_annotator(f"ann{j}", store=project.store) for j in range(2)]
    reviewer = live_ls.new_annotator("reviewer")
    cfg = project.config
    cfg.rounds.batch_size, cfg.rounds.overlap = 24, 2
    cfg.agreement.adjudication, cfg.agreement.reviewers = "review", [reviewer.email]
    cfg.review.max_per_round, cfg.agreement.confidence_target = 3, 1.0
    project.save_config()
    with project.store.session() as s:
        paths = dict(s.execute(select(Item.id, Item.path)).all())

    def truth(d: dict) -> str:
        return CLASSES[int(Path(paths[int(d["item_id"])]).stem) % 3]

    rnd = start_round(project, env)
    work(env)
    pid = int(project.store.get_meta("ls_project_id"))
    assert [label_stream(live_ls.url, a.token, pid, truth) for a in team] == [24, 24]
    assert enqueue_pull(project, env, delay=0)
    work(env)  # pull -> close -> adjudication push with the label review
    rnd = get_round(project.store, rnd.id)
    assert rnd.status == CLOSED and rnd.metrics["adjudication_items"] == []
    adj_pid = int(project.store.get_meta("ls_adjudication_project_id"))
    tasks = {t["data"]["item_id"]: t for t in live_ls.client().iter_tasks(adj_pid)}
    sent = sent_for_review(project.store)
    assert len(tasks) == 3 and set(tasks) == set(sent) and set(sent.values()) == {rnd.id}
    before = _labels(project, list(tasks))
    for item, task in tasks.items():
        text = task["data"]["votes_text"]
        assert text.startswith("Label review. Votes: ") and "Model: " in text
        assert f"Trusted label: {before[item][0]}." in text and before[item][1] == "consensus"
    assert rnd.metrics["adjudication"]["pushed"] == 0  # no adjudication item was pushed

    def other(d: dict) -> str:  # the reviewer moves each label to the next class
        return CLASSES[(CLASSES.index(before[int(d["item_id"])][0]) + 1) % 3]

    assert label_stream(live_ls.url, reviewer.token, adj_pid, other) == 3
    assert enqueue_pull(project, env, delay=0)
    work(env)
    after = _labels(project, list(tasks))
    assert after == {i: (CLASSES[(CLASSES.index(before[i][0]) + 1) % 3], "adjudicated")
                     for i in tasks}
    history = review_history(project.store)
    assert sorted((h["item_id"], h["was"], h["by"]) for h in history) == sorted(
        (i, before[i][0], reviewer.email) for i in tasks)
    assert project_status(project)["label_review"] == {"sent": 3, "decided": 3, "corrected": 3}
