"""The project's stored Label Studio connection (``alearn ls up`` / ``alearn ls connect``):
kept with mode 0600 outside anything served or exported, found by every command and
worker opened in the project, overridden by the environment, never printed."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from pathlib import Path

import pytest
from factories import run_cli as run

from alearn import connection
from alearn.config import Settings
from alearn.exceptions import ConfigError
from alearn.project import Project

TOKEN = "tok-STORED-5e1f0c9a"
URL = "http://127.0.0.1:18080"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_saved_private_and_read_back(project: Project) -> None:
    stored = connection.save(project.data_dir, URL, TOKEN + "\n")
    where = project.data_dir / "connection"
    assert stored.token_file == (where / "labelstudio.token").resolve()
    assert _mode(where) == 0o700
    assert _mode(where / "labelstudio.token") == 0o600
    assert _mode(where / "labelstudio.json") == 0o600
    assert (where / "labelstudio.token").read_text() == TOKEN + "\n"
    assert TOKEN not in (where / "labelstudio.json").read_text()
    assert not [p for p in where.iterdir() if p.name.startswith(".tmp-")]
    got = connection.read(project.data_dir)
    assert got is not None and got.url == URL
    assert connection.read_token(got.token_file) == TOKEN
    (where / "labelstudio.token").chmod(0o644)  # widened by hand: read narrows it again
    assert connection.read_token(got.token_file) == TOKEN
    assert _mode(where / "labelstudio.token") == 0o600
    assert connection.forget(project.data_dir) is True
    assert connection.read(project.data_dir) is None
    assert connection.forget(project.data_dir) is False


def test_every_project_opened_finds_it_as_a_worker_does(project: Project) -> None:
    from workers.jobs import _open  # how every job opens its project

    assert Project.open(project.root).settings.label_studio_token() is None
    connection.save(project.data_dir, URL + "/", TOKEN)
    for opened in (Project.open(project.root), Project.open(project.root, Settings.load()),
                   _open(str(project.root))):
        assert opened.settings.ls_url == URL
        assert opened.settings.label_studio_token() == TOKEN
    assert TOKEN not in repr(opened.settings) and TOKEN not in str(opened.settings)


def test_the_environment_overrides_it(project: Project, monkeypatch: pytest.MonkeyPatch,
                                      tmp_path: Path) -> None:
    connection.save(project.data_dir, URL, TOKEN)
    monkeypatch.setenv("ALEARN_LS_TOKEN", "tok-from-env")
    s = Project.open(project.root).settings
    assert (s.ls_url, s.label_studio_token()) == (URL, "tok-from-env")
    monkeypatch.delenv("ALEARN_LS_TOKEN")
    (tmp_path / "tok").write_text("tok-from-file\n")
    monkeypatch.setenv("ALEARN_LS_TOKEN_FILE", str(tmp_path / "tok"))
    assert Project.open(project.root).settings.label_studio_token() == "tok-from-file"
    monkeypatch.delenv("ALEARN_LS_TOKEN_FILE")
    # another server named by the environment never gets the stored token
    monkeypatch.setenv("ALEARN_LS_URL", "http://elsewhere.example:8080")
    s = Project.open(project.root).settings
    assert (s.ls_url, s.label_studio_token()) == ("http://elsewhere.example:8080", None)
    monkeypatch.setenv("ALEARN_LS_URL", URL + "/")  # the same server: it does
    assert Project.open(project.root).settings.label_studio_token() == TOKEN
    # explicit settings, as the tests and scripts pass them, win too
    explicit = Settings(ls_url="http://other:1", ls_token="tok-explicit")
    assert Project.open(project.root, explicit).settings.label_studio_token() == "tok-explicit"


def test_a_broken_stored_connection_fails_only_where_the_token_is_needed(
        project: Project, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    connection.save(project.data_dir, URL, TOKEN)
    url_file = project.data_dir / "connection" / "labelstudio.json"
    for text, words in (("{not json", "not a stored connection"),
                        ('{"url": "ftp://x/"}', "not a Label Studio URL")):
        url_file.write_text(text)
        opened = Project.open(project.root)  # still opens: status and the rest run
        with pytest.raises(ConfigError, match=words) as err:
            opened.settings.label_studio_token()
        assert "alearn ls connect" in str(err.value)
    (project.data_dir / "connection" / "labelstudio.token").unlink()
    url_file.write_text(json.dumps({"url": URL}))
    with pytest.raises(ConfigError, match="missing.*alearn ls disconnect"):
        Project.open(project.root).settings.label_studio_token()
    monkeypatch.chdir(project.root)
    code, out, _ = run(["ls", "disconnect"], capsys)
    assert code == 0 and "Forgot" in out and connection.read(project.data_dir) is None


def test_refused_inside_the_image_root(tmp_path: Path) -> None:
    from factories import write_image

    write_image(tmp_path / "p" / "a.png", seed=1)
    project = Project.init(tmp_path / "p", classes=["a", "b"], images=tmp_path / "p",
                           settings=Settings())
    with pytest.raises(ConfigError, match="inside the image root"):
        connection.save(project.data_dir, URL, TOKEN, image_root=project.image_root)
    assert connection.read(project.data_dir) is None


def test_the_served_folder_never_holds_it(project: Project) -> None:
    """Label Studio's document root (the link to the image root, and nothing else) holds
    no file with the token, following the link."""
    from labelstudio.server_security import serve_only

    served = serve_only(project.data_dir / "labelstudio", project.image_root)
    connection.save(project.data_dir, URL, TOKEN, image_root=project.image_root)
    token_file = connection.folder(project.data_dir).resolve()
    found = [Path(d) / f for d, _, files in os.walk(served, followlinks=True) for f in files]
    assert found  # the images are there
    for path in found:
        assert TOKEN.encode() not in path.read_bytes(), path
        assert token_file not in path.resolve().parents


@pytest.mark.parametrize(("argv", "stdin", "words"), [
    (["ls", "connect", "ftp://h/"], TOKEN, "not a Label Studio URL"),
    (["ls", "connect", "http://bob:pw@h:1"], TOKEN, "must not carry a user or password"),
    (["ls", "connect", "http://127.0.0.1:1", "--token-file", "/nonexistent/tok"], "",
     "--token-file"),
    (["ls", "connect", "http://127.0.0.1:1"], "", "no token in stdin"),
    (["ls", "connect", "http://127.0.0.1:1", "--token-file", "-"], "a\nb\n", "one line"),
    (["ls", "connect", "http://127.0.0.1:1"], TOKEN, "cannot reach Label Studio"),
], ids=["ftp", "credentials", "no-token-file", "empty-stdin", "two-lines", "unreachable"])
def test_ls_connect_bad_input_is_one_line_and_stores_nothing(
        project: Project, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        argv: list[str], stdin: str, words: str) -> None:
    monkeypatch.chdir(project.root)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code, out, err = run(argv, capsys)
    assert code != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert words.lower() in lines[0].lower(), lines[0]
    assert TOKEN not in out + err and "pw@" not in out + err
    assert not connection.folder(project.data_dir).exists()


def test_ls_connect_to_a_real_label_studio(live_ls, project: Project, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused with a wrong token (nothing stored); stored with the right one, read from a
    file; then a command with no ALEARN_LS_* in its environment uses it, and nothing the
    commands print holds the token."""
    monkeypatch.chdir(project.root)
    monkeypatch.setattr(sys, "stdin", io.StringIO("wrong-token-123456\n"))
    code, out, err = run(["ls", "connect", live_ls.url], capsys)
    assert code == 1 and "refused the API token" in err and "alearn ls connect" in err
    assert connection.read(project.data_dir) is None
    (tmp_path / "tok").write_text(live_ls.token + "\n")
    code, out, err = run(["ls", "connect", live_ls.url + "/", "--token-file",
                          str(tmp_path / "tok"), "--json"], capsys)
    assert code == 0, err
    got = json.loads(out)
    assert got["url"] == live_ls.url and got["user"] == live_ls.admin_email
    token_file = connection.folder(project.data_dir) / "labelstudio.token"
    assert _mode(token_file) == 0o600
    texts = [out + err]
    for argv in (["ls", "status"], ["ls", "status", "--json"],
                 ["ls", "users", "add", "Stored Conn", "--password", "pw-12345678", "--json"]):
        code, out, err = run(argv, capsys)
        assert code == 0, err
        texts.append(out + err)
    assert json.loads(texts[-1])["login_url"] == f"{live_ls.url}/user/login/"
    assert f"stored connection: {live_ls.url}" in texts[1]
    code, out, err = run(["ls", "down"], capsys)
    assert code == 0 and "stored connection is kept" in out
    assert connection.read(project.data_dir) is not None
    assert not any(live_ls.token in t for t in texts + [out + err])
