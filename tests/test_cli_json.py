"""``--json`` on every command that prints data: stdout is one JSON document and nothing
else; a failure with ``--json`` is still one line on stderr and nothing on stdout.

The audit is enforced, not listed once: :func:`test_every_command_that_prints_data_takes_json`
walks the whole click tree, so a new command without ``--json`` fails it unless it is
named in :data:`NO_DATA` with the reason, and every command with ``--json`` must be run
by one of the tests below (:data:`RUN_OFFLINE`, :data:`RUN_LIVE`, :data:`RUN_LS_UP`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest
from factories import TINY_EMBED, ingested_project
from factories import run_cli as run

from alearn.cli import cli

# commands that print no data: what they print is a server's or a worker's log
NO_DATA = {
    "worker": "runs until stopped; prints the worker's log",
    "webhook serve": "a server: runs until stopped; prints its log",
}
# the --json commands each test runs
RUN_OFFLINE = {"init", "ingest", "embed", "round plan", "status", "agreement", "report",
               "export", "doctor", "ls status", "ls down", "ls disconnect", "ls users add",
               "ls users list", "ls users remove", "webhook status-url"}
RUN_LIVE = {"round start", "round sync", "round close", "round retry", "round abort",
            "ls connect", "ls users add", "webhook register"}
RUN_LS_UP = {"ls up", "ls down"}


def leaf_commands(group: click.Group = cli, prefix: str = "") -> dict[str, click.Command]:
    """'round plan' -> its command, for every command under ``group``."""
    out: dict[str, click.Command] = {}
    for name, cmd in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(cmd, click.Group):
            out.update(leaf_commands(cmd, f"{path} "))
        else:
            out[path] = cmd
    return out


def test_every_command_that_prints_data_takes_json() -> None:
    commands = leaf_commands()
    lacking = [p for p, cmd in commands.items()
               if p not in NO_DATA and "--json" not in {o for prm in cmd.params
                                                       for o in getattr(prm, "opts", [])}]
    assert lacking == [], f"commands that print data without --json: {lacking}"
    assert set(NO_DATA) <= set(commands)
    with_json = set(commands) - set(NO_DATA)
    assert RUN_OFFLINE | RUN_LIVE | RUN_LS_UP == with_json  # each one is run below


def json_of(argv: list[str], capsys: pytest.CaptureFixture[str], *, code: int = 0) -> Any:
    """Run ``alearn ARGV --json``; its stdout parsed (the whole of it is one document)."""
    got, out, err = run([*argv, "--json"], capsys)
    assert got == code, f"alearn {' '.join(argv)} --json exited {got}: {err}"
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        pytest.fail(f"alearn {' '.join(argv)} --json printed no JSON on stdout:\n{out!r}")


def one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code, out, err = run([*argv, "--json"], capsys)
    assert code != 0 and out == "", (code, out)
    assert len(err.strip().splitlines()) == 1 and err.startswith("error:"), err
    return err


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No service reachable: Redis and Label Studio point at a closed port."""
    monkeypatch.setenv("ALEARN_REDIS_URL", "redis://127.0.0.1:9/0")
    monkeypatch.setenv("ALEARN_LS_URL", "http://127.0.0.1:9")


def test_json_of_each_command_that_needs_no_service(
        offline: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ran: set[str] = set()

    def j(command: str, *args: str, code: int = 0) -> Any:
        ran.add(command)
        return json_of([*argv_prefix, *command.split(), *args], capsys, code=code)

    argv_prefix: list[str] = []
    (tmp_path / "pics").mkdir()
    made = j("init", str(tmp_path / "fresh"), "--classes", "a,b", "--images",
             str(tmp_path / "pics"))
    assert made["classes"] == ["a", "b"] and Path(made["config"]).is_file()

    project = ingested_project(tmp_path, 12, seed=300, embed=TINY_EMBED)
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,label\n" + "".join(f"{i:03d}.png,{['cat', 'dog', 'bird'][i % 3]}\n"
                                                 for i in range(6)))
    argv_prefix = ["--project", str(project.root)]
    assert j("ingest", "--manifest", str(manifest))["updated"] == 6
    assert j("embed")["items"] == 12
    plan = j("round plan", "--batch-size", "4")
    assert len(plan["items"]) == 4
    status = j("status")
    assert status["pool_size"] == 12 and "error" in status["queues"]
    assert j("agreement")["n_items"] == 0
    report = j("report", "--out", str(tmp_path / "r.html"))
    assert Path(report["report"]).is_file()
    export = j("export", "--out", str(tmp_path / "ds"), "--split", "0.5,0.5,0")
    assert export["n_items"] == 6
    checks = j("doctor", code=1)  # Redis and Label Studio unreachable: failing checks
    status_of = {c["name"]: c["status"] for c in checks}
    assert status_of["redis"] == status_of["label-studio"] == "fail", status_of
    assert j("ls status") == {"running": False, "url": None, "pid": None, "stored_url": None}
    assert j("ls down") == {"stopped": False, "connection_kept": False}
    assert j("ls disconnect")["forgotten"] is False
    added = j("ls users add", "x@example.org", "--existing")
    assert added == {"email": "x@example.org", "role": "annotator"}
    assert j("ls users list") == [{"email": "x@example.org", "role": "annotator"}]
    assert j("ls users remove", "x@example.org") == {"email": "x@example.org", "removed": True}
    assert j("webhook status-url")["status_url"].startswith("http://127.0.0.1:8800/status?token=")
    assert ran == RUN_OFFLINE

    # errors stay one line on stderr, stdout empty
    one_line_error([*argv_prefix, "round", "plan", "--strategy", "nope"], capsys)
    one_line_error([*argv_prefix, "ls", "users", "remove", "nobody@example.org"], capsys)
    one_line_error(["--project", str(tmp_path / "nowhere"), "status"], capsys)


def test_json_of_each_command_on_live_services(
        live_ls, env, tmp_path: Path, capsys: pytest.CaptureFixture[str],  # noqa: ANN001
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis, a real Label Studio and in-process RQ workers (``env``)."""
    from ls_server import work

    from labelstudio.annotators import label_stream, signup_annotator

    project = ingested_project(tmp_path, 10, seed=500, size=(24, 24), batch_size=4, overlap=1)
    ran: set[str] = set()

    def j(command: str, *args: str) -> Any:
        ran.add(command)
        return json_of(["--project", str(project.root), *command.split(), *args], capsys)

    token_file = tmp_path / "token"
    token_file.write_text(live_ls.token)
    connected = j("ls connect", live_ls.url, "--token-file", str(token_file))
    assert connected["url"] == live_ls.url and connected["user"] == live_ls.admin_email
    person = j("ls users add", "json-person")
    assert person["role"] == "annotator" and len(person["password"]) >= 8

    started = j("round start")
    assert started["round"] == 1 and started["status"] == "planned"
    work(env)  # embed, train, select, push
    assert j("round sync") == {"enqueued": True}
    work(env)
    assert project.store.get_meta("ls_pull_window")["newest"]  # the pull set its window
    assert j("round sync", "--full") == {"enqueued": True}
    assert project.store.get_meta("ls_pull_window") is None  # the next pull lists every task
    work(env)
    ls_project = int(project.store.get_meta("ls_project_id"))
    me = signup_annotator(live_ls.url, person["email"], person["password"])
    assert label_stream(live_ls.url, me.token, ls_project, lambda d: "cat", max_tasks=1) == 1
    closed = j("round close", "--force")
    assert closed["closed"] is True and closed["labels_spent"] == 1
    assert closed["withdrawn"]["deleted"] == 3  # the 3 tasks nobody labeled

    assert j("round start")["round"] == 2
    retried = j("round retry")
    assert retried["round"] == 2 and retried["resumes_at"]
    aborted = j("round abort")
    assert aborted["round"] == 2 and aborted["aborted"] is True

    monkeypatch.setenv("ALEARN_WEBHOOK_SECRET", "s" * 32)
    hook = j("webhook register", "--url", "http://127.0.0.1:8800/webhook")
    assert isinstance(hook["webhook_id"], int)
    assert ran == RUN_LIVE


@pytest.mark.integration  # starts its own local Label Studio
@pytest.mark.slow
def test_json_of_ls_up_and_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from alearn.exceptions import LabelStudioError
    from labelstudio.server import find_ls_bin, free_port, stop_server

    try:
        find_ls_bin()
    except LabelStudioError as exc:
        pytest.skip(f"Label Studio is not installed: {exc}")
    project = ingested_project(tmp_path, 2, seed=700)
    argv = ["--project", str(project.root)]
    try:
        up = json_of([*argv, "ls", "up", "--port", str(free_port())], capsys)
        assert up["url"].startswith("http://127.0.0.1:") and up["ls_project_id"] >= 1
        assert json_of([*argv, "ls", "status"], capsys)["running"] is True
        assert json_of([*argv, "ls", "down"], capsys) == {"stopped": True,
                                                          "connection_kept": True}
    finally:
        stop_server(project.data_dir / "labelstudio")
        project.store.dispose()
