"""Pure parts of the Label Studio boundary: label config, conversion, URLs, webhook app."""

from __future__ import annotations

import datetime as dt
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from alearn.config import ProjectConfig
from alearn.exceptions import ConfigError
from labelstudio.annotators import annotator_email
from labelstudio.convert import annotation_to_record, parse_time
from labelstudio.label_config import (
    choice_result,
    config_hash,
    hotkeys,
    instructions_html,
    label_config,
)
from labelstudio.projects import project_fields
from labelstudio.server_security import admin_credentials
from labelstudio.urls import image_url, image_url_base
from labelstudio.webhook import create_app

CLASSES = ["cat", "dog", "bird"]


# -- label config ---------------------------------------------------------------------
def test_label_config_is_image_plus_single_choice_with_hotkeys() -> None:
    root = ET.fromstring(label_config(CLASSES))
    image = root.find("Image")
    choices = root.find("Choices")
    assert image is not None and image.get("value") == "$image"
    assert choices is not None and choices.get("toName") == image.get("name")
    assert choices.get("choice") == "single-radio"
    got = [(c.get("value"), c.get("hotkey")) for c in choices.findall("Choice")]
    assert got == [("cat", "1"), ("dog", "2"), ("bird", "3")]


def test_hotkeys_go_digits_then_zero_then_letters_without_u() -> None:
    keys = hotkeys(40)
    assert keys[:11] == ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0", "a"]
    assert "u" not in keys
    real = [k for k in keys if k]
    assert len(real) == len(set(real)) == 35
    assert keys[35:] == [None] * 5


def test_label_config_escapes_class_names() -> None:
    names = ['a "quoted" one', "fish & chips", "<tag>"]
    root = ET.fromstring(label_config(names))
    assert [c.get("value") for c in root.iter("Choice")] == names


def test_label_config_refuses_bad_classes() -> None:
    with pytest.raises(ConfigError, match="distinct"):
        label_config(["cat", "cat"])
    with pytest.raises(ConfigError):
        label_config(["only"])


def test_instructions_escape_all_text_and_serve_examples_like_task_images() -> None:
    cfg = ProjectConfig(classes={
        "cat <b>": {"description": 'Says "meow" & <script>alert(1)</script>',
                    "guidance": "line one\nline two", "examples": ["c/a b&c.png"]},
        "dog": {"examples": ["https://example.org/d.jpg?x=1&y=2"], "target": 3},
    })
    fields = project_fields(cfg, "/data/local-files/?d=images/")
    html = fields["expert_instruction"]
    assert fields["show_instruction"] is True
    assert "<script>" not in html and html.count("<b>") == 1  # the "Guidance:" one
    assert "<h3>cat &lt;b&gt; <kbd>1</kbd></h3>" in html
    assert "<p>Says \"meow\" &amp; &lt;script&gt;alert(1)&lt;/script&gt;</p>" in html
    assert "<p><b>Guidance:</b> line one<br>line two</p>" in html
    assert '<img src="/data/local-files/?d=images/c/a%20b%26c.png" alt="cat &lt;b&gt; ' \
           'example 1" height="120">' in html
    assert '<img src="https://example.org/d.jpg?x=1&amp;y=2"' in html
    # a class with only a target, or no tables at all: Label Studio's instructions stay
    assert instructions_html(["a", "b"], {}, str) == ""
    plain = project_fields(ProjectConfig(classes={"a": {"target": 5}, "b": {}}))
    assert "expert_instruction" not in plain and "show_instruction" not in plain


def test_config_hash_is_stable_and_order_sensitive() -> None:
    assert config_hash(CLASSES) == config_hash(list(CLASSES))
    assert config_hash(CLASSES) != config_hash(["dog", "cat", "bird"])
    assert config_hash(CLASSES) != config_hash(["cat", "dog"])


# -- conversion -----------------------------------------------------------------------
def _ann(result: list | None = None, **kw) -> dict:
    base = {
        "id": 7,
        "result": result if result is not None else choice_result("dog"),
        "completed_by": 3,
        "created_username": " ann3@x.org, 3",
        "was_cancelled": False,
        "lead_time": 4.25,
        "created_at": "2026-01-02T03:04:05.123456Z",
        "updated_at": "2026-01-02T03:05:00+01:00",
    }
    return {**base, **kw}


TASK = {"id": 11, "data": {"item_id": 5, "round": 2, "image": "/x.png"}}


def test_convert_ok_annotation() -> None:
    rec = annotation_to_record(_ann(), TASK, CLASSES)
    assert rec == {
        "ls_annotation_id": 7,
        "ls_task_id": 11,
        "item_id": 5,
        "round_id": 2,
        "annotator": "ann3@x.org",
        "label": "dog",
        "lead_time": 4.25,
        "was_cancelled": False,
        "status": "ok",
        "reason": None,
        "created_at": dt.datetime(2026, 1, 2, 3, 4, 5, 123456),
        "updated_at": dt.datetime(2026, 1, 2, 2, 5, 0),  # converted to naive UTC
    }


def test_convert_unknown_label_is_set_aside() -> None:
    rec = annotation_to_record(_ann(choice_result("zebra")), TASK, CLASSES)
    assert rec["status"] == "set_aside" and rec["label"] == "zebra"
    assert "'zebra' is not one of the classes" in rec["reason"]


def test_convert_no_choice_is_set_aside() -> None:
    rec = annotation_to_record(_ann([]), TASK, CLASSES)
    assert (rec["status"], rec["label"], rec["reason"]) == ("set_aside", None, "no choice made")


def test_convert_several_choices_is_set_aside() -> None:
    result = [{"from_name": "label", "to_name": "image", "type": "choices",
               "value": {"choices": ["cat", "dog"]}}]
    rec = annotation_to_record(_ann(result), TASK, CLASSES)
    assert rec["status"] == "set_aside" and rec["label"] is None
    assert "several choices ['cat', 'dog']" in rec["reason"]


def test_convert_repeated_same_choice_counts_once() -> None:
    rec = annotation_to_record(_ann(choice_result("cat") * 2), TASK, CLASSES)
    assert (rec["status"], rec["label"]) == ("ok", "cat")


def test_convert_cancelled_is_flagged_and_set_aside() -> None:
    rec = annotation_to_record(_ann([], was_cancelled=True), TASK, CLASSES)
    assert rec["was_cancelled"] is True
    assert rec["status"] == "set_aside" and rec["reason"] == "skipped by the annotator"


def test_convert_unreadable_result_is_set_aside() -> None:
    rec = annotation_to_record(_ann(result="garbage"), TASK, CLASSES)  # type: ignore[arg-type]
    assert rec["status"] == "set_aside" and rec["reason"].startswith("unreadable result")


def test_convert_ignores_other_controls() -> None:
    other = [{"from_name": "comment", "to_name": "image", "type": "textarea",
              "value": {"text": ["hi"]}}]
    rec = annotation_to_record(_ann(other + choice_result("bird")), TASK, CLASSES)
    assert rec["label"] == "bird"


def test_convert_annotator_identity() -> None:
    assert annotation_to_record(_ann(), TASK, CLASSES, users={3: "x@y.z"})["annotator"] == "x@y.z"
    nameless = _ann(created_username="")
    assert annotation_to_record(nameless, TASK, CLASSES)["annotator"] == "user:3"
    as_dict = _ann(completed_by={"id": 9, "email": "nine@x.org"}, created_username="")
    assert annotation_to_record(as_dict, TASK, CLASSES)["annotator"] == "nine@x.org"
    with pytest.raises(ValueError, match="completed_by"):
        annotation_to_record(_ann(completed_by=None), TASK, CLASSES)


def test_convert_locates_item_from_arguments_or_task() -> None:
    rec = annotation_to_record(_ann(), TASK, CLASSES, item_id=99, round_id=4)
    assert (rec["item_id"], rec["round_id"]) == (99, 4)
    with pytest.raises(ValueError, match="item_id"):
        annotation_to_record(_ann(), {"id": 1, "data": {}}, CLASSES)


def test_parse_time() -> None:
    assert parse_time(None) is None
    assert parse_time("2026-01-02T00:00:00Z") == dt.datetime(2026, 1, 2)
    aware = dt.datetime(2026, 1, 2, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert parse_time(aware) == dt.datetime(2026, 1, 2, 3)


# -- image URLs -----------------------------------------------------------------------
def test_image_url_local_files(tmp_path: Path) -> None:
    root = tmp_path / "my images"
    base = image_url_base(root)
    assert base == "/data/local-files/?d=my%20images/"
    assert image_url(base, "a/b c.png") == "/data/local-files/?d=my%20images/a/b%20c.png"
    assert image_url_base(root / "x", document_root=tmp_path) == (
        "/data/local-files/?d=my%20images/x/"
    )


def test_image_url_prefix() -> None:
    base = image_url_base("/anything", prefix="https://cdn.example.org/imgs/")
    assert image_url(base, "a/1.png") == "https://cdn.example.org/imgs/a/1.png"


def test_image_url_refuses_roots_outside_or_equal_to_document_root(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not below"):
        image_url_base(tmp_path / "a", document_root=tmp_path / "b")
    with pytest.raises(ConfigError, match="document root itself"):
        image_url_base(tmp_path, document_root=tmp_path)


# -- accounts -------------------------------------------------------------------------
def test_annotator_email() -> None:
    assert annotator_email("Ada Lovelace") == "ada-lovelace@alearn.local"
    assert annotator_email("bob@lab.org") == "bob@lab.org"
    with pytest.raises(ConfigError):
        annotator_email("!!!")


def test_admin_credentials_are_generated_once_and_private(tmp_path: Path) -> None:
    first = admin_credentials(tmp_path / "ls")
    path = tmp_path / "ls" / "admin.json"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert admin_credentials(tmp_path / "ls") == first
    assert len(first["token"]) == 40 and len(first["password"]) >= 12
    os.chmod(path, 0o644)
    admin_credentials(tmp_path / "ls")
    assert oct(path.stat().st_mode & 0o777) == "0o600"


# -- webhook receiver -----------------------------------------------------------------
@pytest.fixture
def hook():
    events: list[dict] = []
    app = create_app("s3cret-value", events.append)
    return app.test_client(), events


def test_webhook_refuses_wrong_or_missing_secret(hook) -> None:
    client, events = hook
    body = {"action": "ANNOTATION_CREATED"}
    assert client.post("/webhook", json=body).status_code == 401
    r = client.post("/webhook", json=body, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    r = client.post("/webhook", json=body, headers={"X-Alearn-Secret": "s3cret-valu"})
    assert r.status_code == 401
    assert events == []


def test_webhook_accepts_right_secret_and_hands_over_the_payload(hook) -> None:
    client, events = hook
    body = {"action": "ANNOTATION_CREATED", "annotation": {"id": 1}}
    r = client.post("/webhook", json=body, headers={"Authorization": "Bearer s3cret-value"})
    assert r.status_code == 202
    r = client.post("/webhook", data=json.dumps(body), content_type="application/json",
                    headers={"X-Alearn-Secret": "s3cret-value"})
    assert r.status_code == 202
    assert events == [body, body]


def test_webhook_rejects_non_json_and_reports_handler_failure() -> None:
    def broken(_: dict) -> None:
        raise ConnectionError("redis down")

    client = create_app("k" * 8, broken).test_client()
    auth = {"Authorization": "Bearer " + "k" * 8}
    assert client.post("/webhook", data="x", headers=auth).status_code == 400
    assert client.post("/webhook", json={"action": "A"}, headers=auth).status_code == 503
    assert client.get("/health").get_json() == {"status": "ok"}


def test_webhook_needs_a_secret() -> None:
    with pytest.raises(ConfigError, match="ALEARN_WEBHOOK_SECRET"):
        create_app("", lambda e: None)


def test_start_server_reports_a_crash_with_the_log_tail(tmp_path: Path) -> None:
    from alearn.exceptions import LabelStudioError
    from labelstudio.server import free_port, server_status, start_server

    fake = tmp_path / "label-studio"
    fake.write_text("#!/bin/sh\necho 'boom: no database' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(LabelStudioError, match=r"exited with code 3(.|\n)*boom: no database"):
        start_server(tmp_path / "data", image_root=tmp_path / "images", port=free_port(),
                     username="a@b.c", password="p" * 8, token="t" * 40, ls_bin=fake)
    assert server_status(tmp_path / "data") is None


def test_start_server_checks_its_arguments(tmp_path: Path) -> None:
    from labelstudio.server import start_server

    common = {"username": "a@b.c", "password": "p" * 8, "port": 1}
    with pytest.raises(ConfigError, match="not strictly below"):
        start_server(tmp_path, image_root=tmp_path / "x", document_root=tmp_path / "y",
                     token="t" * 40, **common)
    with pytest.raises(ConfigError, match="at least 6"):
        start_server(tmp_path, image_root=tmp_path / "x", token="t", **common)


# -- overlap: one source of truth (the round) -----------------------------------------
class RecordingLS:
    """What project set-up and push ask of Label Studio, recorded."""

    url = "http://stub"

    def __init__(self) -> None:
        self.project: dict = {}
        self.sent: list[dict] = []
        self.imported: list[dict] = []

    def create_project(self, **fields) -> int:
        self.sent.append(fields)
        self.project = {"id": 7, "maximum_annotations": 1, **fields}
        return 7

    def get_project(self, project_id: int) -> dict:
        return dict(self.project)

    def update_project(self, project_id: int, **fields) -> None:
        self.sent.append(fields)
        self.project.update(fields)

    def iter_tasks(self, project_id: int, **_kw):
        return iter(())

    def import_tasks(self, project_id: int, tasks: list[dict]) -> list[int]:
        self.imported += [{**t, "overlap": self.project["maximum_annotations"]} for t in tasks]
        return list(range(100, 100 + len(tasks)))


def test_project_set_up_never_touches_the_overlap_push_sets_it(tmp_path: Path) -> None:
    from alearn.config import ProjectConfig
    from alearn.store import Item, Round, Selection, Store
    from labelstudio.projects import ensure_project
    from labelstudio.push import push_round

    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    with store.session() as s:
        s.add(Item(id=1, sha256="0" * 64, path="a.png", width=4, height=4))
        s.add(Round(id=1, number=1, status="planned", strategy="margin", batch_size=1,
                    overlap=3, model_version="head-v1"))
        s.add(Selection(round_id=1, item_id=1, rank=0, score=0.5))
    cfg = ProjectConfig(classes=CLASSES, rounds={"overlap": 2},
                        labelstudio={"image_url_prefix": "http://img/"})
    ls = RecordingLS()
    ensure_project(store, ls, cfg, tmp_path)  # type: ignore[arg-type]
    push_round(store, ls, 1)  # type: ignore[arg-type]
    assert ls.project["maximum_annotations"] == 3 and ls.imported[0]["overlap"] == 3
    ensure_project(store, ls, cfg, tmp_path)  # 'alearn ls up' mid-round
    assert ls.project["maximum_annotations"] == 3  # the round's overlap stands
    assert [f for f in ls.sent if "maximum_annotations" in f] == [{"maximum_annotations": 3}]
    store.dispose()
