"""Only the team labels, nothing leaks: against a real Label Studio started the way
``alearn ls up`` starts it (the real command, in a subprocess), in the demo's layout
(the images folder beside the project folder, which holds the store, the admin's token
file and Label Studio's own database).

The annotator's path through the real web interface, in Debian's Chromium driven by
Playwright, is here too. The same settings in docker-compose.yml are checked by
tests/test_compose.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from factories import write_image

from alearn.config import Settings
from alearn.exceptions import LabelStudioError
from alearn.project import Project

pytestmark = [pytest.mark.integration, pytest.mark.services]  # Label Studio and Redis

ALEARN = str(Path(sys.executable).parent / "alearn")
CHROMIUM = "/usr/bin/chromium"


@dataclass
class Served:
    project: Project
    url: str
    token: str
    password: str
    env: dict[str, str]
    secrets: list[str]

    def cli(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ALEARN, *argv], cwd=self.project.root, env=self.env,
                              capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from labelstudio.server import find_ls_bin, free_port

    try:
        find_ls_bin()
    except LabelStudioError as exc:
        pytest.skip(f"Label Studio is not installed: {exc}")
    base = tmp_path_factory.mktemp("secure")
    for i in range(4):
        write_image(base / "images" / f"{i}.png", seed=40 + i, size=(32, 32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALEARN_")}
    env["ALEARN_REDIS_URL"] = "redis://127.0.0.1:6379/13"
    old = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("ALEARN_")
           and not k.startswith("ALEARN_TEST_")}
    try:
        project = Project.init(base / "project", classes=["cat", "dog"],
                               images=base / "images", settings=Settings())
    finally:
        os.environ.update(old)
    (project.root / "secret.txt").write_text("TOP-SECRET-CONTENT")
    up = subprocess.run([ALEARN, "ls", "up", "--port", str(free_port()), "--json"],
                        cwd=project.root, env=env, capture_output=True, text=True, timeout=400)
    assert up.returncode == 0, up.stderr
    info = json.loads(up.stdout)
    creds = json.loads(Path(info["credentials_file"]).read_text())
    env.update(ALEARN_LS_URL=info["url"], ALEARN_LS_TOKEN=creds["token"])
    served = Served(project, info["url"], creds["token"], creds["password"], env,
                    [creds["token"], creds["password"]])
    try:
        yield served
    finally:
        subprocess.run([ALEARN, "ls", "down"], cwd=project.root, env=env, timeout=120)


def _annotator(served: Served, name: str) -> tuple[dict, httpx.Client]:
    """An annotator made by the real `alearn ls users add`, and their API client."""
    r = served.cli("ls", "users", "add", f"{name}-{uuid.uuid4().hex[:6]}", "--json")
    assert r.returncode == 0, r.stderr
    who = json.loads(r.stdout)
    served.secrets.append(who["password"])
    from labelstudio.annotators import signup_annotator

    me = signup_annotator(served.url, who["email"], who["password"])  # logs in
    return who, httpx.Client(base_url=served.url, timeout=30,
                             headers={"Authorization": f"Token {me.token}"})


def test_sign_up_without_an_invite_is_refused(served: Served) -> None:
    from labelstudio.annotators import signup_annotator

    with pytest.raises(LabelStudioError, match="could not sign up"):
        signup_annotator(served.url, f"intruder-{uuid.uuid4().hex[:6]}@x.y", "password-123")
    with httpx.Client(base_url=served.url) as http:
        http.get("/user/signup/")
        r = http.post("/user/signup/", data={"email": "x@y.z", "password": "password-123",
                                             "csrfmiddlewaretoken": http.cookies.get(
                                                 "csrftoken", "")},
                      headers={"Referer": served.url + "/user/signup/"})
        assert r.status_code in (302, 403) and "/projects" not in r.headers.get("location", "")


def test_a_label_studio_user_reads_nothing_outside_the_image_root(served: Served) -> None:
    _who, user = _annotator(served, "curious")
    project_id = served.project.store.get_meta("ls_project_id")
    root = served.project.root
    for path in (root, root / "data", root / "data" / "connection", root.parent, Path("/"),
                 Path("/etc")):
        r = user.post("/api/storages/localfiles", json={
            "project": project_id, "path": str(path), "use_blob_urls": False})
        assert r.status_code >= 400, (path, r.status_code)
    for d in ("../project/secret.txt", "../project/alearn.db", "images/../../project/secret.txt",
              "/etc/passwd", "../project/data/labelstudio/admin.json", "%2e%2e/project/secret.txt",
              "../../connection/labelstudio.token", "../project/data/connection/labelstudio.token"):
        r = user.get("/data/local-files/", params={"d": d})
        assert r.status_code != 200 or b"TOP-SECRET" not in r.content, d
        assert served.token.encode() not in r.content
    ok = user.get("/data/local-files/", params={"d": "images/0.png"})
    assert ok.status_code == 200 and ok.content.startswith(b"\x89PNG")  # the images are served


def test_ls_up_stores_the_connection_privately_outside_the_served_root(served: Served) -> None:
    """`alearn ls up` kept the URL and the token for the project (0600, not served), and a
    command with no ALEARN_LS_* in its environment uses them."""
    import stat

    where = served.project.data_dir / "connection"
    token_file = where / "labelstudio.token"
    assert token_file.read_text().strip() == served.token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert json.loads((where / "labelstudio.json").read_text()) == {"url": served.url}
    doc_root = served.project.data_dir / "labelstudio" / "served"
    assert [p.name for p in doc_root.iterdir()] == ["images"]
    env = {k: v for k, v in served.env.items() if not k.startswith("ALEARN_LS_")}
    r = subprocess.run([ALEARN, "ls", "status"], cwd=served.project.root, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and f"stored connection: {served.url}" in r.stdout, r.stderr
    assert served.token not in r.stdout + r.stderr


def test_ssrf_protection_is_on(served: Served) -> None:
    """Label Studio refuses to call a local address (here, its own /health) as a webhook."""
    project_id = served.project.store.get_meta("ls_project_id")
    r = httpx.post(f"{served.url}/api/webhooks/", timeout=30,
                   headers={"Authorization": f"Token {served.token}"},
                   json={"project": project_id, "url": f"{served.url}/health",
                         "send_payload": True, "actions": ["ANNOTATION_CREATED"]})
    if r.status_code < 400:  # accepted at creation: it must not be delivered
        pytest.fail(f"Label Studio accepted a webhook to a loopback address: {r.text[:200]}")


def test_the_label_studio_process_gets_none_of_alearns_secrets(served: Served) -> None:
    from labelstudio.server import server_status

    info = server_status(served.project.data_dir / "labelstudio")
    environ = Path(f"/proc/{info.pid}/environ").read_bytes().split(b"\0")
    names = {e.split(b"=", 1)[0].decode() for e in environ if e}
    assert not {n for n in names if n.startswith("ALEARN_")}
    assert "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK" in names


def test_votes_from_off_the_roster_do_not_count_and_nothing_leaks(served: Served) -> None:
    """A round pushed by the real workers' code, voted by a team member and an outsider
    with a Label Studio account; then status, export and every log are searched for
    the admin's token and every password."""
    from alearn.ingestion.driver import ingest
    from alearn.team import remove_member
    from labelstudio.annotators import label_stream, signup_annotator

    settings = Settings(ls_url=served.url, ls_token=served.token,
                        redis_url=served.env["ALEARN_REDIS_URL"])
    project = Project.open(served.project.root, settings)
    (project.root / "gold.csv").write_text("path,label\n0.png,cat\n1.png,dog\n")
    ingest(project)
    ingest(project, manifest=project.root / "gold.csv")
    member, _ = _annotator(served, "member")
    outsider, _ = _annotator(served, "outsider")
    remove_member(project.store, outsider["email"])  # had an account; is not on the team
    from alearn.query.selection import Plan, PlannedItem
    from alearn.rounds.lifecycle import create_round
    from alearn.rounds.plan_record import record_plan
    from labelstudio.client import LSClient
    from labelstudio.projects import ensure_project
    from labelstudio.pull import pull_annotations
    from labelstudio.push import push_round

    # overlap 3: the browser test's annotator is served these tasks after the other two
    rnd = create_round(project.store, strategy="random", batch_size=2, overlap=3)
    record_plan(project.store, rnd.id, Plan(
        items=[PlannedItem(item_id=i, path="", rank=k, score=0.5, predicted=None)
               for k, i in enumerate(project.store.item_ids()[2:4])],
        strategy="random", model_version=None, n_pool=4, n_train=2))
    client = LSClient(served.url, served.token)
    pid = ensure_project(project.store, client, project.config, project.image_root,
                         document_root=project.data_dir / "labelstudio" / "served")
    push_round(project.store, client, rnd.id)
    for who, label in ((member, "cat"), (outsider, "dog")):
        me = signup_annotator(served.url, who["email"], who["password"])
        assert label_stream(served.url, me.token, pid, lambda d, lab=label: lab) == 2
    pull_annotations(project.store, client, classes=project.config.classes)
    from sqlalchemy import select

    from alearn.store import Annotation

    with project.store.session() as s:
        votes = {(a.annotator, a.status) for a in s.scalars(select(Annotation))}
    assert votes == {(member["email"], "ok"), (outsider["email"], "set_aside")}
    # nothing leaks: status, an export, the logs
    status = served.cli("status", "--json")
    export = served.cli("export", "--out", str(project.root.parent / "export"),
                        "--format", "jsonl")
    assert export.returncode == 0, export.stderr
    texts = [status.stdout + status.stderr, export.stdout + export.stderr]
    for path in (project.root.parent / "export").rglob("*"):
        if path.is_file():
            texts.append(path.read_bytes().decode("utf-8", "replace"))
    log = project.data_dir / "labelstudio" / "label-studio.log"
    texts.append(log.read_text(errors="replace"))
    for secret in served.secrets:
        assert not any(secret in t for t in texts), "a secret leaked"
    exported = (project.root.parent / "export" / "dataset.jsonl").read_text()
    assert member["email"] not in exported  # pseudonymised


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_an_annotator_labels_in_a_real_browser(served: Served) -> None:
    """Added with `alearn ls users add`, the annotator logs in through the web form,
    opens the label stream, sees the image, presses the class's hotkey and submits;
    the vote reaches the store on the next pull. A sign-up attempt in the browser fails."""
    from playwright.sync_api import sync_playwright

    from labelstudio.client import LSClient
    from labelstudio.pull import pull_annotations

    settings = Settings(ls_url=served.url, ls_token=served.token,
                        redis_url=served.env["ALEARN_REDIS_URL"])
    project = Project.open(served.project.root, settings)
    pid = project.store.get_meta("ls_project_id")
    who, _ = _annotator(served, "browser")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{served.url}/user/signup/")
            page.fill("input[name=email]", f"walk-in-{uuid.uuid4().hex[:6]}@x.y")
            page.fill("input[name=password]", "password-123")
            page.locator("form button[type=submit], form input[type=submit]").first.click()
            page.wait_for_load_state("networkidle")
            assert "/projects" not in page.url  # no account for someone without an invite
            page.goto(f"{served.url}/user/login/")
            page.fill("input[name=email]", who["email"])
            page.fill("input[name=password]", who["password"])
            page.locator("form button[type=submit], form input[type=submit]").first.click()
            page.wait_for_url(lambda u: "/user/login" not in u, timeout=60000)
            page.goto(f"{served.url}/projects/{pid}/data?labeling=1")  # the label stream
            image = page.locator("img[src^='blob:'], img[src*='local-files']").first
            image.wait_for(state="visible", timeout=90000)
            page.wait_for_function("(el) => el.complete && el.naturalWidth > 0",
                                   arg=image.element_handle(), timeout=60000)
            natural = image.evaluate("el => el.naturalWidth")
            page.screenshot(path=str(project.root.parent / "label-stream.png"))
            page.keyboard.press("1")  # the first class's hotkey
            page.locator("button:has-text('Submit')").first.click()
            page.wait_for_function(  # Label Studio has the annotation
                "async ([url, pid]) => (await (await fetch(url + '/api/projects/' + pid))"
                ".json()).total_annotations_number > 4", arg=[served.url, pid],
                timeout=30000)
        finally:
            browser.close()
    assert natural > 0
    client = LSClient(served.url, served.token)
    pull_annotations(project.store, client, classes=project.config.classes)
    from sqlalchemy import select

    from alearn.store import Annotation

    with project.store.session() as s:
        mine = [(a.label, a.status) for a in s.scalars(
            select(Annotation).where(Annotation.annotator == who["email"]))]
    assert mine == [("cat", "ok")]
