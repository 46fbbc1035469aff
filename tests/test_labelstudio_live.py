"""The Label Studio boundary against a real Label Studio 1.23.2 (one server per session).

Each test builds its own store (so its own Label Studio project): items, a round and
its selection are written directly, without ingest or selection code.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from factories import write_image
from sqlalchemy import select
from werkzeug.serving import make_server

from alearn.config import ProjectConfig
from alearn.exceptions import ConfigError, LabelStudioError
from alearn.query.selection import Plan, PlannedItem
from alearn.rounds.plan_record import record_plan
from alearn.store import Annotation, Item, Round, Selection, Store
from alearn.team import add_member
from labelstudio.annotators import invite_annotator, label_stream, signup_annotator
from labelstudio.client import LSClient
from labelstudio.label_config import choice_result
from labelstudio.projects import ensure_project, project_fields
from labelstudio.pull import pull_annotations
from labelstudio.push import push_round
from labelstudio.server import free_port, server_status, start_server
from labelstudio.webhook import EVENTS, create_app, register_webhook

pytestmark = pytest.mark.integration

CLASSES = ["cat", "dog", "bird"]


def make_store(
    tmp_path: Path, n: int = 6, *, overlap: int = 2, url: str | None = None
) -> tuple[Store, Path]:
    """A store with ``n`` items (real image files) and round 1 selecting all of them."""
    images = tmp_path / "images"
    store = Store(url or f"sqlite:///{tmp_path / 'alearn.db'}")
    with store.session() as s:
        for i in range(n):
            write_image(images / "pool" / f"img {i}.png", seed=i, size=(8, 8))
            s.add(Item(id=i + 1, sha256=f"{i:064x}", path=f"pool/img {i}.png", width=8,
                       height=8))
        s.add(Round(id=1, number=1, status="planned", strategy="margin", batch_size=n,
                    overlap=overlap, model_version="head-v1"))
        for i in range(n):
            s.add(Selection(round_id=1, item_id=i + 1, rank=i, score=round(0.9 - i / 10, 2),
                            predicted=CLASSES[i % 3] if i % 2 == 0 else None))
    return store, images


def config(*, overlap: int = 2, classes: list[str] = CLASSES) -> ProjectConfig:
    return ProjectConfig(
        name=f"test {uuid.uuid4().hex[:6]}", classes=classes, rounds={"overlap": overlap}
    )


@pytest.fixture
def setup(live_ls, tmp_path: Path) -> Iterator[tuple[Store, LSClient, ProjectConfig, int]]:
    store, images = make_store(tmp_path)
    client, cfg = live_ls.client(), config()
    pid = ensure_project(store, client, cfg, images, document_root=live_ls.document_root)
    yield store, client, cfg, pid
    store.dispose()


def selections(store: Store) -> list[Selection]:
    with store.session() as s:
        return list(s.scalars(select(Selection).order_by(Selection.item_id)))


def annotations(store: Store) -> dict[int, Annotation]:
    with store.session() as s:
        return {a.ls_annotation_id: a for a in s.scalars(select(Annotation))}


# -- server and client ----------------------------------------------------------------
def test_server_is_recorded_and_a_second_start_reuses_it(live_ls) -> None:
    data_dir = live_ls.data_dir
    info = server_status(data_dir)
    assert info is not None and info.url == live_ls.url
    again = start_server(data_dir, image_root=None, document_root=live_ls.document_root,
                         port=info.port, username="x@y.z", password="p" * 8, token="t" * 40)
    assert again.pid == info.pid


def test_start_refuses_a_busy_port(live_ls, tmp_path: Path) -> None:
    port = int(live_ls.url.rsplit(":", 1)[1])
    with pytest.raises(LabelStudioError, match=f"port {port} .* in use"):
        start_server(tmp_path / "other", image_root=tmp_path / "img", port=port,
                     username="x@y.z", password="p" * 8, token="t" * 40)


def test_client_errors_say_what_to_do(live_ls) -> None:
    dead = LSClient(f"http://127.0.0.1:{free_port()}", "some-token")
    with pytest.raises(LabelStudioError, match=r"cannot reach .*alearn ls up"):
        dead.whoami()
    with pytest.raises(LabelStudioError, match="refused the API token"):
        LSClient(live_ls.url, "wrong-token-123").whoami()
    me = live_ls.client().whoami()
    assert me["email"] == live_ls.admin_email


# -- project --------------------------------------------------------------------------
def test_ensure_project_is_idempotent_and_refuses_class_changes(live_ls, tmp_path) -> None:
    store, images = make_store(tmp_path)
    client, cfg = live_ls.client(), config(overlap=3)
    doc = {"document_root": live_ls.document_root}
    pid = ensure_project(store, client, cfg, images, **doc)
    client.update_project(pid, maximum_annotations=5)  # as a round's push would
    assert ensure_project(store, client, cfg, images, **doc) == pid
    project = client.get_project(pid)
    assert project["maximum_annotations"] == 5  # set-up leaves the overlap to the round
    assert project["show_collab_predictions"] is False
    assert 'value="bird" hotkey="3"' in project["label_config"]
    assert [s["path"] for s in client.local_storages(pid)] == [str(images.resolve())]
    assert store.get_meta("ls_project_id") == pid

    reordered = cfg.model_copy(update={"classes": ["dog", "cat", "bird"]})
    assert ensure_project(store, client, reordered, images, **doc) == pid
    assert '<Choice value="dog" hotkey="1"/>' in client.get_project(pid)["label_config"]

    changed = cfg.model_copy(update={"classes": ["cat", "dog", "fish"]})
    with pytest.raises(ConfigError, match=r"added \['fish'\], removed \['bird'\]"):
        ensure_project(store, client, changed, images, **doc)
    assert client.get_project(pid)["label_config"].count("<Choice ") == 3


def test_class_tables_become_the_annotators_instructions_with_examples(
        live_ls, tmp_path) -> None:
    store, images = make_store(tmp_path)
    client = live_ls.client()
    cfg = ProjectConfig(name=f"test {uuid.uuid4().hex[:6]}", classes={
        "cat": {"description": 'A cat & "friends" <i>', "guidance": "Not a drawing.",
                "examples": ["pool/img 0.png"]},
        "dog": {"examples": ["https://example.org/dog.jpg"]}, "bird": {}})
    pid = ensure_project(store, client, cfg, images, document_root=live_ls.document_root)
    project = client.get_project(pid)
    assert project["show_instruction"] is True
    html = project["expert_instruction"]  # stored as sent: Label Studio's cleaning keeps it
    assert html == project_fields(cfg, store.get_meta("ls_image_url_base"))["expert_instruction"]
    assert "A cat &amp; \"friends\" &lt;i&gt;" in html and "Not a drawing." in html
    src = html.split('<img src="', 1)[1].split('"', 1)[0]
    assert src.startswith("/data/local-files/?d=")  # served like a task image
    served = httpx.get(live_ls.url + src, headers={"Authorization": f"Token {live_ls.token}"})
    assert served.status_code == 200
    assert served.content == (images / "pool" / "img 0.png").read_bytes()
    assert ensure_project(store, client, cfg, images, document_root=live_ls.document_root) == pid
    assert client.get_project(pid)["expert_instruction"] == html


# -- push -----------------------------------------------------------------------------
def test_push_creates_tasks_with_predictions(live_ls, setup) -> None:
    store, client, _cfg, pid = setup  # the config says overlap 2; this round wants 3
    with store.session() as s:
        s.get(Round, 1).overlap = 3
    summary = push_round(store, client, 1, chunk_size=4)
    assert (summary.created, summary.already_present) == (6, 0)
    sels = {s.item_id: s for s in selections(store)}
    tasks = list(live_ls.client()._sdk.tasks.list(project=pid, fields="all"))
    assert len(tasks) == 6
    for t in tasks:
        sel = sels[t.data["item_id"]]
        assert sel.ls_task_id == t.id and t.data["round"] == 1
        assert t.data["sha256"] == f"{sel.item_id - 1:064x}"
        assert t.overlap == 3
        (pred,) = t.predictions
        assert pred.model_version == "head-v1" and pred.score == pytest.approx(sel.score)
        assert pred.result == (choice_result(sel.predicted) if sel.predicted else [])
    project = client.get_project(pid)
    assert (project["sampling"], project["model_version"]) == ("Uncertainty sampling", "head-v1")
    assert project["maximum_annotations"] == 3
    # the image is served to a signed-in user through the registered local storage
    first = min(tasks, key=lambda t: t.id)
    r = httpx.get(live_ls.url + first.data["image"],
                  headers={"Authorization": f"Token {live_ls.token}"})
    assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
    assert push_round(store, client, 1).to_dict() == {"created": 0, "already_present": 6}


def test_tasks_are_listed_page_by_page_without_asking_past_the_end(live_ls, setup) -> None:
    store, client, _cfg, pid = setup
    push_round(store, client, 1)
    asked: list[str] = []
    client._http.event_hooks["request"].append(lambda request: asked.append(str(request.url)))
    for page_size, pages in ((2, 3), (4, 2), (6, 1), (7, 1)):
        asked.clear()
        ids = [t["id"] for t in client.iter_tasks(pid, page_size=page_size)]
        assert sorted(ids) == sorted(s.ls_task_id for s in selections(store))
        assert len(asked) == pages, asked  # the 6 tasks' pages, and no empty one after them


class CrashingClient(LSClient):
    """A real client whose second import dies, as if the worker were killed."""

    calls = 0

    def import_tasks(self, project_id: int, tasks: list[dict]) -> list[int]:
        type(self).calls += 1
        if type(self).calls == 2:
            raise LabelStudioError("simulated crash")
        return super().import_tasks(project_id, tasks)


class DiesAfterImport(LSClient):
    """A real client whose import reaches Label Studio, then the worker dies before the
    store records the new tasks."""

    def import_tasks(self, project_id: int, tasks: list[dict]) -> list[int]:
        super().import_tasks(project_id, tasks)
        raise LabelStudioError("killed after the import")


def test_a_first_push_lists_no_tasks_and_a_retried_one_adopts_them(live_ls, tmp_path) -> None:
    store, images = make_store(tmp_path, n=4)
    with store.session() as s:  # the select step records the selections, with its mark
        for sel in s.scalars(select(Selection)):
            s.delete(sel)
    plan = Plan("margin", "head-v1", [PlannedItem(i, f"pool/img {i - 1}.png", 0.5, None, i)
                                      for i in range(1, 5)])
    assert record_plan(store, 1, plan) == 4
    pid = ensure_project(store, live_ls.client(), config(), images,
                         document_root=live_ls.document_root)
    dying = DiesAfterImport(live_ls.url, live_ls.token)
    asked: list[str] = []
    dying._http.event_hooks["request"].append(lambda r: asked.append(f"{r.method} {r.url.path}"))
    with pytest.raises(LabelStudioError, match="killed after the import"):
        push_round(store, dying, 1)
    assert "GET /api/tasks/" not in asked  # nothing of the round could be there yet
    assert all(sel.ls_task_id is None for sel in selections(store))  # 4 tasks unrecorded
    summary = push_round(store, live_ls.client(), 1)  # the mark is gone: it looks first
    assert (summary.created, summary.already_present) == (0, 4)
    tasks = list(live_ls.client().iter_tasks(pid))
    assert len(tasks) == 4
    assert {s.item_id: s.ls_task_id for s in selections(store)} == {
        t["data"]["item_id"]: t["id"] for t in tasks}
    store.dispose()


def test_push_retried_after_interruption_creates_no_duplicates(live_ls, setup) -> None:
    store, _client, _cfg, pid = setup
    crashing = CrashingClient(live_ls.url, live_ls.token)
    with pytest.raises(LabelStudioError, match="simulated crash"):
        push_round(store, crashing, 1, chunk_size=2)
    assert sum(s.ls_task_id is not None for s in selections(store)) == 2
    # also lose the store's record of one created task (crash between import and commit)
    with store.session() as s:
        pushed = select(Selection).where(Selection.ls_task_id.is_not(None))
        s.scalars(pushed).first().ls_task_id = None
    summary = push_round(store, live_ls.client(), 1, chunk_size=2)
    assert (summary.created, summary.already_present) == (4, 2)
    tasks = list(live_ls.client().iter_tasks(pid))
    assert len(tasks) == 6
    by_item = {t["data"]["item_id"]: t["id"] for t in tasks}
    assert {s.item_id: s.ls_task_id for s in selections(store)} == by_item


# -- annotate and pull ----------------------------------------------------------------
def _truth(item_id: int) -> str:
    return CLASSES[item_id % 3]


def test_annotators_label_through_the_stream_and_pull_mirrors(live_ls, setup) -> None:
    store, client, _cfg, pid = setup
    push_round(store, client, 1)
    team = [live_ls.new_annotator(store=store) for _ in range(3)]
    given: dict[tuple[str, int], str] = {}

    def chooser(email: str, wrong_on: int):
        def choose(data: dict) -> str:
            item = int(data["item_id"])
            label = CLASSES[(item + 1) % 3] if item == wrong_on else _truth(item)
            given[(email, item)] = label
            return label
        return choose

    done = [label_stream(live_ls.url, a.token, pid, chooser(a.email, k + 1), lead_time=2.5)
            for k, a in enumerate(team)]
    assert sum(done) == 6 * 2  # overlap 2: twelve annotations in all
    assert label_stream(live_ls.url, team[0].token, pid, lambda d: "cat") == 0

    first = pull_annotations(store, client)
    assert (first.new, first.updated, first.deleted, first.set_aside) == (12, 0, 0, 0)
    rows = annotations(store)
    per_item: dict[int, set[str]] = {}
    for a in rows.values():
        per_item.setdefault(a.item_id, set()).add(a.annotator)
        assert a.label == given[(a.annotator, a.item_id)]
        assert (a.status, a.round_id, a.lead_time) == ("ok", 1, 2.5)
        assert a.created_at is not None and a.updated_at is not None
    assert {i: len(w) for i, w in per_item.items()} == {i: 2 for i in range(1, 7)}

    second = pull_annotations(store, client)
    assert second.to_dict() == {"new": 0, "updated": 0, "deleted": 0, "unchanged": 12,
                                "set_aside": 0, "tasks": 6, "quarantined": 0,
                                "superseded": 0, "stale_rounds": 0}
    assert {k: (a.label, a.updated_at) for k, a in annotations(store).items()} == {
        k: (a.label, a.updated_at) for k, a in rows.items()
    }


def test_pull_sets_aside_unknown_labels_and_follows_updates_and_deletes(live_ls, setup) -> None:
    store, client, _cfg, pid = setup
    push_round(store, client, 1)
    task_of = {s.item_id: s.ls_task_id for s in selections(store)}
    ann = live_ls.new_annotator(store=store)
    add_member(store, live_ls.admin_email)  # the admin labels too, on the roster
    label_stream(live_ls.url, ann.token, pid, lambda d: "cat", max_tasks=2)
    # an admin posts a label that is not a class, and several choices at once
    zebra = client.create_annotation(task_of[5], choice_result("zebra"), project=pid)
    both = [{**choice_result("cat")[0], "value": {"choices": ["cat", "dog"]}}]
    several = client.create_annotation(task_of[6], both, project=pid)
    first = pull_annotations(store, client)
    assert (first.new, first.set_aside) == (4, 2)
    rows = annotations(store)
    assert rows[zebra].status == "set_aside" and "'zebra'" in rows[zebra].reason
    assert rows[zebra].annotator == live_ls.admin_email
    assert "several choices" in rows[several].reason

    mine = sorted(k for k, a in rows.items() if a.annotator == ann.email)
    client.update_annotation(mine[0], result=choice_result("bird"))
    client.delete_annotation(mine[1])
    client.update_annotation(zebra, result=choice_result("dog"))
    second = pull_annotations(store, client)
    assert (second.new, second.updated, second.deleted, second.unchanged) == (0, 2, 1, 1)
    rows = annotations(store)
    assert rows[mine[0]].label == "bird" and mine[1] not in rows
    assert (rows[zebra].status, rows[zebra].label, rows[zebra].reason) == ("ok", "dog", None)
    assert pull_annotations(store, client).unchanged == 3


def test_stream_serves_lowest_score_first_and_round_pull_is_scoped(live_ls, setup) -> None:
    store, client, _cfg, pid = setup
    push_round(store, client, 1)
    ann = live_ls.new_annotator(store=store)
    served: list[int] = []

    def choose(data: dict) -> str:
        served.append(int(data["item_id"]))
        return "dog"

    label_stream(live_ls.url, ann.token, pid, choose, max_tasks=3)
    assert served == [6, 5, 4]  # uncertainty sampling: lowest score first
    assert pull_annotations(store, client, round_id=2).to_dict()["tasks"] == 0
    assert pull_annotations(store, client, round_id=1).new == 3


def test_push_and_pull_on_sqlite_and_postgresql(live_ls, db_url: str, tmp_path) -> None:
    store, images = make_store(tmp_path, n=4, url=db_url)
    client = live_ls.client()
    pid = ensure_project(store, client, config(), images, document_root=live_ls.document_root)
    assert push_round(store, client, 1).created == 4
    for ann in (live_ls.new_annotator(store=store), live_ls.new_annotator(store=store)):
        label_stream(live_ls.url, ann.token, pid, lambda d: _truth(int(d["item_id"])))
    assert pull_annotations(store, client).new == 8
    assert pull_annotations(store, client).unchanged == 8
    assert {(a.item_id, a.label) for a in annotations(store).values()} == {
        (i, _truth(i)) for i in range(1, 5)
    }
    store.dispose()


def test_a_push_puts_back_predictions_label_studio_lost(live_ls, setup) -> None:
    """An import that failed inside Label Studio can leave tasks without predictions
    (seen under load on its SQLite: 'database is locked'); Label Studio then refuses the
    round's model version, and a push could never finish. Push puts them back."""
    store, client, _cfg, pid = setup
    push_round(store, client, 1)
    tasks = list(client.iter_tasks(pid, annotations=True))
    (version,) = {v for t in tasks for v in t["prediction_versions"]}
    for t in tasks:  # what the failed import left: every task of the round, bare
        for p in client._sdk.predictions.list(task=t["id"]):
            client._sdk.predictions.delete(id=int(p.id))
    assert all(not t["prediction_versions"] for t in client.iter_tasks(pid, annotations=True))
    client.update_project(pid, model_version="")  # as before the push set this round's
    with pytest.raises(LabelStudioError, match="[Mm]odel version"):
        client.update_project(pid, model_version=version)  # what a push met, every retry
    assert push_round(store, client, 1).created == 0  # the retry: nothing imported again
    after = {t["id"]: t["prediction_versions"] for t in client.iter_tasks(pid, annotations=True)}
    assert set(after) == {t["id"] for t in tasks} and all(v == [version] for v in after.values())
    with store.session() as s:
        scores = {sel.ls_task_id: sel.score for sel in s.scalars(select(Selection))}
    for t in after:
        (p,) = client._sdk.predictions.list(task=t)
        assert p.score == pytest.approx(scores[t]) and p.model_version == version
    assert client.get_project(pid)["model_version"] == version


# -- accounts -------------------------------------------------------------------------
def test_signup_is_closed_and_an_invite_signs_up_once_then_is_rotated(live_ls) -> None:
    import httpx

    email = f"twice-{uuid.uuid4().hex[:6]}@alearn.local"
    with pytest.raises(LabelStudioError, match="could not sign up"):
        signup_annotator(live_ls.url, email, "password-one")  # no invite: refused
    admin = {"Authorization": f"Token {live_ls.token}"}
    old_token = httpx.get(f"{live_ls.url}/api/invite", headers=admin).json()["token"]
    first = invite_annotator(live_ls.url, live_ls.token, email, "password-one")
    new_token = httpx.get(f"{live_ls.url}/api/invite", headers=admin).json()["token"]
    assert new_token != old_token  # the link that was used opens nothing any more
    with pytest.raises(LabelStudioError, match="could not sign up"):
        signup_annotator(live_ls.url, f"late-{email}", "password-two", invite_token=old_token)
    again = signup_annotator(live_ls.url, email, "password-one")  # logs in
    assert (again.user_id, again.token) == (first.user_id, first.token)
    assert "token" not in repr(first)
    with pytest.raises(LabelStudioError, match="could not sign up"):
        signup_annotator(live_ls.url, email, "another-password")


# -- webhooks -------------------------------------------------------------------------
def test_webhook_is_registered_once_and_delivered_with_the_secret(live_ls, setup) -> None:
    store, client, _cfg, pid = setup
    push_round(store, client, 1)
    got: list[dict] = []
    delivered = threading.Event()

    def on_event(payload: dict) -> None:
        got.append(payload)
        delivered.set()

    port = free_port()
    server = make_server("127.0.0.1", port, create_app("hook-secret-123", on_event))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}/webhook"
        hook_id = register_webhook(client, pid, url, "hook-secret-123")
        assert register_webhook(client, pid, url, "hook-secret-123") == hook_id
        (hook,) = client.webhooks(pid)
        assert sorted(hook["actions"]) == sorted(EVENTS)
        ann = live_ls.new_annotator(store=store)
        label_stream(live_ls.url, ann.token, pid, lambda d: "cat", max_tasks=1)
        assert delivered.wait(10)
        assert got[0]["action"] == "ANNOTATION_CREATED"
        # a wrong secret registered in Label Studio is refused by the receiver
        register_webhook(client, pid, url, "not-the-secret")
        delivered.clear()
        label_stream(live_ls.url, ann.token, pid, lambda d: "cat", max_tasks=1)
        assert not delivered.wait(3)
        assert len(got) == 1
    finally:
        server.shutdown()
        thread.join(5)


# -- CLI ------------------------------------------------------------------------------
def test_cli_ls_users_add_and_status(live_ls, project) -> None:
    import json

    from click.testing import CliRunner

    from alearn.cli import cli
    from alearn.team import roster

    runner = CliRunner()
    base = ["--project", str(project.root), "ls"]
    r = runner.invoke(cli, [*base, "users", "add", "Test Person", "--url", live_ls.url,
                            "--password", "pw-12345678", "--json"],
                      env={"ALEARN_LS_TOKEN": live_ls.token})
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["email"] == "test-person@alearn.local"
    assert out["login_url"] == f"{live_ls.url}/user/login/"
    again = signup_annotator(live_ls.url, out["email"], "pw-12345678")
    assert again.user_id == out["user_id"]
    assert roster(project.store) == {"test-person@alearn.local": "annotator"}
    r = runner.invoke(cli, [*base, "users", "list", "--json"])
    assert json.loads(r.output) == [{"email": "test-person@alearn.local", "role": "annotator"}]
    r = runner.invoke(cli, [*base, "users", "remove", "test-person@alearn.local"])
    assert r.exit_code == 0 and roster(project.store) == {}
    r = runner.invoke(cli, [*base, "users", "add", "x", "--password", "short"])
    assert r.exit_code == 2 and "--password" in r.output
    r = runner.invoke(cli, [*base, "status"])
    assert r.exit_code == 0 and "not running" in r.output
