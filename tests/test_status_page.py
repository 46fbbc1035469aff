"""The live status page of the webhook service: its read token, its figures, its escaping,
and (in Chromium, against a real ``alearn webhook serve`` process) its refresh and layout."""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from factories import ANNOTATORS, FIRST_TASK_ID, run_cli, voted_round
from sklearn.metrics import cohen_kappa_score

from alearn.connection import STATUS_TOKEN_FILE, folder, read_token, status_token
from alearn.exceptions import ConfigError
from alearn.project import Project
from alearn.report import live
from alearn.rounds.lifecycle import round_progress
from labelstudio.convert import annotation_to_record
from labelstudio.mirror import mirror_votes
from labelstudio.status_page import add_status_page, presented_token, token_ok
from labelstudio.webhook import create_app

SECRET = "webhook-secret-0123456789abcdef"
HOSTILE = "<script>alert('x')</script>\"><img src=x onerror=alert(2)>"
EVIL_LOGIN = "<img src=x onerror=alert(3)>@example.org"
CHROMIUM = Path("/usr/bin/chromium")
# ten items: four with three votes, six with two (the third annotator has not voted yet)
VOTES = {k: (["cat", "cat", "dog"] if k < 2 else ["dog", "dog", "dog"]) if k < 4
         else [["cat", "dog", "bird"][k % 3]] * 2 for k in range(10)}


@pytest.fixture
def live_project(project: Project) -> Project:
    """A pushed round of ten tasks with 24 votes; a hostile project name."""
    project.config.name = HOSTILE
    project.save_config()
    voted_round(project, VOTES)
    return project


_ids = itertools.count(10_000)


def mirror_vote(project: Project, key: int, label: str, who: str = "ann-c") -> None:
    """One Label Studio annotation on item ``key``'s task, mirrored as a pull does."""
    with project.store.session() as s:
        from sqlalchemy import select

        from alearn.store import Selection

        sel = s.scalars(select(Selection).where(Selection.ls_task_id == FIRST_TASK_ID + key)
                        ).one()
        item, rid = sel.item_id, sel.round_id
    ann = {"id": next(_ids), "completed_by": {"id": 99, "email": who}, "lead_time": 2.5,
           "result": [{"type": "choices", "from_name": "label", "to_name": "image",
                       "value": {"choices": [label]}}],
           "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}
    task = {"id": FIRST_TASK_ID + key, "data": {"item_id": item, "round": rid}}
    rec = annotation_to_record(ann, task, project.config.classes)
    mirror_votes(project.store, {rec["ls_annotation_id"]: rec}, {}, set(), {rid: (1, "pushed")})


# ------------------------------------------------------------------ the token
def test_token_checks() -> None:
    assert token_ok("a" * 43, "a" * 43)
    assert not token_ok("a" * 42 + "b", "a" * 43)
    assert not token_ok("a", "a" * 43) and not token_ok("", "") and not token_ok("x", "")
    assert not token_ok("é" * 3, "e" * 3)  # non-ASCII compares, never raises


def test_status_token_is_stored_0600_and_rotates(project: Project) -> None:
    first = status_token(project.data_dir)
    path = folder(project.data_dir) / STATUS_TOKEN_FILE
    assert len(first) >= 43 and read_token(path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert status_token(project.data_dir) == first  # kept
    second = status_token(project.data_dir, rotate=True)
    assert second != first and read_token(path) == second
    with pytest.raises(ConfigError, match="image root"):  # Label Studio serves the images
        status_token(project.data_dir, image_root=project.data_dir.parent)


def _client(project: Project, token: str = "r" * 43) -> Any:
    app = create_app(SECRET, lambda _event: None)
    add_status_page(app, project, lambda: token)
    return app.test_client()


def test_wrong_or_missing_token_gets_401_and_no_data(
        live_project: Project, caplog: pytest.LogCaptureFixture) -> None:
    token = "r" * 43
    client = _client(live_project, token)
    caplog.set_level(logging.INFO)
    for path in ("/status", "/status.json"):
        for kwargs in ({}, {"query_string": {"token": "r" * 42}},
                       {"query_string": {"token": SECRET}},  # the webhook secret is not it
                       {"headers": {"Authorization": f"Bearer {SECRET}"}},
                       {"headers": {"Authorization": "Basic " + token}}):
            res = client.get(path, **kwargs)
            assert res.status_code == 401, (path, kwargs)
            body = res.get_data(as_text=True)
            assert "status-url" in body and "cat" not in body and "round" not in body
    ok = client.get("/status", query_string={"token": token})
    assert ok.status_code == 200 and "tasks have their votes" in ok.get_data(as_text=True)
    ok = client.get("/status.json", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and ok.get_json()["figures"]["round"]["tasks"] == 10
    # the token is in no page, no header and no log line
    assert token not in ok.get_data(as_text=True) and token not in str(ok.headers)
    assert token not in client.get("/status", query_string={"token": token}).get_data(
        as_text=True)
    assert "status page refused" in caplog.text and token not in caplog.text
    # the webhook still takes its own secret only
    assert client.post("/webhook", json={}, headers={"Authorization": f"Bearer {token}"}
                       ).status_code == 401
    assert client.post("/webhook", json={"action": "ANNOTATION_CREATED"},
                       headers={"Authorization": f"Bearer {SECRET}"}).status_code == 202


def test_a_broken_token_file_refuses(live_project: Project) -> None:
    def broken() -> str:
        raise ConfigError("cannot read it")

    app = create_app(SECRET, lambda _event: None)
    add_status_page(app, live_project, broken)
    assert app.test_client().get("/status", query_string={"token": ""}).status_code == 401


def test_presented_token() -> None:
    app = create_app(SECRET, lambda _event: None)
    with app.test_request_context("/status?token=%20abc%20"):
        from flask import request

        assert presented_token(request) == "abc"
    with app.test_request_context("/status", headers={"Authorization": "bearer xyz"}):
        from flask import request

        assert presented_token(request) == "xyz"


# ------------------------------------------------------------------ the figures
def test_figures_are_the_rounds_and_change_when_a_vote_is_mirrored(
        live_project: Project) -> None:
    project = live_project
    data = live.live_status(project)
    rnd = data["round"]
    assert data["running"] and rnd["number"] == 1 and rnd["status"] == "pushed"
    progress = round_progress(project.store, 1)
    assert (rnd["tasks"], rnd["tasks_done"], rnd["annotations"]) == (10, 4, 24)
    assert (progress.tasks_done, progress.annotations) == (4, 24)
    # mean pairwise Cohen's kappa over the items each pair rated, by scikit-learn
    assert rnd["mean_pairwise_kappa"] == pytest.approx(_sklearn_mean_kappa(VOTES), abs=1e-12)
    assert rnd["by_annotator"] == {"ann-a": 10, "ann-b": 10, "ann-c": 4}
    before = live.votes_version(project)
    assert live.votes_version(project) == before  # nothing changed, nothing recomputed
    mirror_vote(project, 5, "bird")  # ann-c votes on item 5 (others: bird, bird)
    assert live.votes_version(project) != before
    rnd = live.live_status(project)["round"]
    assert (rnd["tasks_done"], rnd["annotations"]) == (5, 25)
    votes = {**VOTES, 5: ["bird"] * 3}
    assert rnd["mean_pairwise_kappa"] == pytest.approx(_sklearn_mean_kappa(votes), abs=1e-12)


def _sklearn_mean_kappa(votes: dict[int, list[str]]) -> float:
    values = []
    for i, j in itertools.combinations(range(len(ANNOTATORS)), 2):
        both = [(v[i], v[j]) for v in votes.values() if len(v) > max(i, j)]
        a, b = zip(*both, strict=True)
        values.append(cohen_kappa_score(a, b))
    return float(np.mean(values))


def test_every_stored_string_is_escaped(live_project: Project) -> None:
    mirror_vote(live_project, 6, "cat", who=EVIL_LOGIN)
    with live_project.store.session() as s:
        from alearn.store import Round

        s.get(Round, 1).error = HOSTILE
    data = live.live_status(live_project)
    for html in (live.page(data), live.fragment(data)):
        assert "<script>alert" not in html and "<img src=x" not in html
        assert "&lt;script&gt;alert(&#x27;x&#x27;)" in html
        assert "&lt;img src=x onerror=alert(3)&gt;@example.org" in html
        assert html.count("<script>") == (1 if html.startswith("<!DOCTYPE") else 0)
    body = _client(live_project).get("/status.json", query_string={"token": "r" * 43})
    assert "<img src=x" not in body.get_json()["html"]
    assert body.headers["Content-Security-Policy"].startswith("default-src 'none'")


def test_no_round_yet(project: Project) -> None:
    data = live.live_status(project)
    assert data["round"] is None and "No data yet" in live.fragment(data)


def test_cli_prints_the_url_with_the_token(project: Project, capsys: Any) -> None:
    code, out, _ = run_cli(["--project", str(project.root), "webhook", "status-url",
                            "--port", "9123"], capsys)
    token = read_token(folder(project.data_dir) / STATUS_TOKEN_FILE)
    assert code == 0 and out.strip() == f"http://127.0.0.1:9123/status?token={token}"
    code, out, _ = run_cli(["--project", str(project.root), "webhook", "serve", "--help"],
                           capsys)
    assert code == 0 and "/status" in out and "status-url" in out


# ------------------------------------------------------------------ a real server, Chromium
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(live_project: Project, redis_conn: Any, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``alearn webhook serve`` as its own process; yields its base URL and log file."""
    port = _free_port()
    log = tmp_path / "webhook.log"
    env = {**os.environ, "ALEARN_WEBHOOK_SECRET": SECRET}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "alearn"), "--project", str(live_project.root),
             "webhook", "serve", "--port", str(port)], env=env, stdout=out,
            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield base, log
    finally:
        proc.terminate()
        proc.wait(timeout=30)


#: the page's widths: its scroll width, and every table that needs scrolling (its box
#: scrolls, or it reaches past the window)
MEASURE = """() => {
  const d = document.documentElement, wide = [];
  document.querySelectorAll('table').forEach((t, i) => {
    const box = t.parentElement;
    if (box.scrollWidth > box.clientWidth
        || t.getBoundingClientRect().right > d.clientWidth) wide.push(i); });
  return {scroll: d.scrollWidth, client: d.clientWidth, wide: wide,
          tables: document.querySelectorAll('table').length}; }"""


@pytest.mark.slow  # a server process and a headless Chromium
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_status_page_in_chromium(server: tuple[str, Path], live_project: Project) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, log = server
    token = read_token(folder(live_project.data_dir) / STATUS_TOKEN_FILE)
    assert httpx.get(f"{base}/status.json").status_code == 401
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("dialog", lambda d: errors.append(f"dialog {d.message}"))
            denied = page.goto(f"{base}/status?token=wrong")
            assert denied is not None and denied.status == 401
            assert "tasks have their votes" not in page.content()
            page.goto(f"{base}/status?token={token}")
            assert page.locator("#tasks-done").inner_text() == "4"
            assert page.locator("#annotations").inner_text() == "24"
            kappa = page.locator("#kappa").inner_text()
            assert kappa == f"{_sklearn_mean_kappa(VOTES):.3f}"
            assert "Fleiss' kappa" in page.inner_text("main")
            assert HOSTILE in page.inner_text("h1")  # shown as text, never run
            # a vote is mirrored: the page shows it without a reload
            mirror_vote(live_project, 5, "bird")
            # (the page's policy forbids eval, so no wait_for_function: expect polls)
            expect(page.locator("#annotations")).to_have_text("25", timeout=20000)
            assert page.locator("#tasks-done").inner_text() == "5"
            new_kappa = f"{_sklearn_mean_kappa({**VOTES, 5: ['bird'] * 3}):.3f}"
            assert page.locator("#kappa").inner_text() == new_kappa != kappa
            # nothing needs horizontal scrolling at 1280 px: the page nor any table
            widths = page.evaluate(MEASURE)
            assert widths["tables"] >= 3 and widths["wide"] == [], widths
            assert widths["scroll"] <= widths["client"] <= 1280, widths
            # the check can fail: a table wider than the window is seen
            page.evaluate("() => document.querySelectorAll('table').forEach("
                          "t => { t.style.minWidth = '1400px'; })")
            assert page.evaluate(MEASURE)["wide"] != []
            assert token not in page.content() and errors == []
        finally:
            browser.close()
    assert token not in log.read_text() and "/status" in log.read_text()
    assert json.loads(httpx.get(f"{base}/status.json", params={"token": token}).text
                      )["figures"]["round"]["annotations"] == 25
