"""The progress bar of long steps: on a terminal it shows the rate and the time left;
disabled (not a terminal, or --json) it prints nothing at all.

Rich decides whether stderr is a terminal; ``TTY_COMPATIBLE=1`` makes it treat pytest's
captured stderr as one, so these tests see exactly what a terminal would get.
"""

from __future__ import annotations

import gc
import json
import re
import sys
import time
from pathlib import Path

import pytest

from alearn.progress import progress, track, waiting

TIME = r"\d+:\d\d:\d\d"


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.delenv("TTY_COMPATIBLE_OFF", raising=False)


def plain(text: str) -> str:
    """Rendered frames without the terminal's control sequences."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_bar_shows_done_total_rate_and_time_left(
        terminal: None, capsys: pytest.CaptureFixture[str]) -> None:
    with progress(True, 10, "embed", "img") as advance:
        advance(2)
        time.sleep(0.2)
        advance(2)
        time.sleep(0.2)
    out = capsys.readouterr()
    frame = plain(out.err)
    assert out.out == ""  # stdout stays clean for --json
    assert "embed" in frame and "4/10" in frame and "40%" in frame
    rate = re.search(r"([\d.,]+) img/s", frame)
    assert rate is not None, frame
    # 2 images in about 0.2 s (Rich measures from the first to the last advance)
    assert 2.0 < float(rate.group(1).replace(",", "")) < 20.0, rate.group(0)
    left = re.search(rf"ETA\s+({TIME})", frame)
    assert left is not None, frame
    h, m, s = (int(x) for x in left.group(1).split(":"))
    assert 0 < 3600 * h + 60 * m + s < 60  # 6 to go at about 10 a second


def test_disabled_bar_prints_nothing(terminal: None,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with progress(False, 10, "embed", "img") as advance:
        advance(10)
    assert list(track(range(5), 5, "export", enabled=False)) == [0, 1, 2, 3, 4]
    with waiting(False, 30, "Label Studio starting") as update:
        update(3.0)
    assert capsys.readouterr() == ("", "")


def test_a_pipe_gets_no_bar(capsys: pytest.CaptureFixture[str]) -> None:
    """What the CLI does off a terminal: ``progress=sys.stderr.isatty()`` is False."""
    enabled = sys.stderr.isatty()
    with progress(enabled, 3, "ingest", "files") as advance:
        advance(3)
    assert capsys.readouterr() == ("", "")


def test_wait_shows_seconds_and_time_left(terminal: None,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.monotonic()
    with waiting(True, 20.0, "Label Studio starting") as update:
        for _ in range(3):
            time.sleep(0.1)
            update(time.monotonic() - t0)
    frame = plain(capsys.readouterr().err)
    assert "Label Studio starting" in frame and "/s" not in frame  # no rate for a wait
    left = re.search(rf"ETA\s+({TIME})", frame)
    assert left is not None, frame
    h, m, s = (int(x) for x in left.group(1).split(":"))
    assert 10 <= 3600 * h + 60 * m + s <= 60  # about 20 s less the 0.3 s waited


class SlowLS:
    """Label Studio's task import, answering after a delay (the boundary push crosses)."""

    def __init__(self) -> None:
        self.imported = 0

    def update_project(self, project_id: int, **fields: object) -> None:
        pass

    def iter_tasks(self, project_id: int, **_kw: object):  # noqa: ANN201
        return iter(())

    def import_tasks(self, project_id: int, tasks: list[dict]) -> list[int]:
        time.sleep(0.05)
        self.imported += len(tasks)
        return list(range(self.imported - len(tasks) + 1, self.imported + 1))


def test_push_shows_tasks_and_rate(terminal: None, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from alearn.store import Item, Round, Selection, Store
    from labelstudio.push import push_round

    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    store.set_meta("ls_project_id", "7")
    store.set_meta("ls_image_url_base", "/data/local-files/?d=")
    with store.session() as s:
        s.add(Round(id=1, number=1, status="planned", strategy="margin", batch_size=6,
                    overlap=2))
        for i in range(1, 7):
            s.add(Item(id=i, sha256=f"{i:064x}", path=f"{i}.png", width=4, height=4))
            s.add(Selection(round_id=1, item_id=i, rank=i, score=0.5))
    ls = SlowLS()
    summary = push_round(store, ls, 1, chunk_size=2, progress=True)  # type: ignore[arg-type]
    store.dispose()
    assert summary.created == 6 == ls.imported
    frame = plain(capsys.readouterr().err)
    assert "push" in frame and "6/6" in frame and re.search(r"[\d.,]+ tasks/s", frame), frame
    assert re.search(rf"ETA\s+{TIME}", frame), frame


FAKE_LABEL_STUDIO = """#!{python}
# stands in for label-studio: answers /health after a delay, on the port it is given
import sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer

port = int(sys.argv[sys.argv.index("-p") + 1])
time.sleep({delay})


class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{{}}")

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


# start_server leaves its detached server's Popen to the garbage collector, on purpose
# (conftest.INTEGRATION_LEAKS); collected inside the test, under this filter
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <function Popen.__del__:pytest.PytestUnraisableExceptionWarning")
def test_label_studio_start_waits_with_a_bar_and_learns_its_duration(
        terminal: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """start_server's real wait loop, on a stand-in program that takes ~2 s to answer:
    the bar says how long is left (the first start's guess), and the start's measured
    duration becomes the next start's estimate."""
    from labelstudio.server import (
        FIRST_START_GUESS_S,
        STARTUP_FILE,
        expected_start_seconds,
        free_port,
        start_server,
        stop_server,
    )

    fake = tmp_path / "bin" / "label-studio"
    fake.parent.mkdir()
    fake.write_text(FAKE_LABEL_STUDIO.format(python=sys.executable, delay=2.0))
    fake.chmod(0o755)
    images = tmp_path / "images"
    images.mkdir()
    data = tmp_path / "ls"
    assert expected_start_seconds(data) == FIRST_START_GUESS_S
    common = {"image_root": images, "username": "admin@alearn.local", "password": "p" * 12,
              "token": "t" * 40, "ls_bin": fake, "timeout": 60}
    try:
        start_server(data, port=free_port(), progress=True, **common)
    finally:
        stop_server(data)
    frame = plain(capsys.readouterr().err)
    assert "Label Studio starting" in frame
    left = re.findall(rf"ETA\s+({TIME})", frame)
    assert left, frame
    h, m, s = (int(x) for x in left[-1].split(":"))
    assert FIRST_START_GUESS_S - 10 <= 3600 * h + 60 * m + s <= FIRST_START_GUESS_S
    took = json.loads((data / STARTUP_FILE).read_text())["seconds"]
    assert 1.5 <= took < 30 and expected_start_seconds(data) == took
    # without progress (a pipe, --json): the same start prints nothing
    try:
        start_server(data, port=free_port(), progress=False, **common)
    finally:
        stop_server(data)
    assert capsys.readouterr() == ("", "")
    gc.collect()
