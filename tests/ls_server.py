"""A real Label Studio server, started once per test session (registered in conftest.py).

It listens on a free loopback port with a temporary data directory, and serves local
files from the session's base temp folder, so every test's ``tmp_path`` images are
reachable. Each test gets its own Label Studio project (through its own store), so
tests do not see each other's tasks. Starting takes 30-90 s; it is stopped at the end.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis import Redis

from alearn.exceptions import LabelStudioError


@dataclass(frozen=True)
class LiveLabelStudio:
    url: str
    token: str
    admin_email: str
    admin_password: str
    document_root: Path
    data_dir: Path

    def client(self):  # noqa: ANN201 - avoids importing the SDK at collection
        from labelstudio.client import LSClient

        return LSClient(self.url, self.token)

    def new_annotator(self, prefix: str = "ann", *, store=None, role: str = "annotator"):  # noqa: ANN001, ANN201
        """A Label Studio account made through an invite link (sign-up is closed), put
        on ``store``'s roster when given (else it labels as an outsider)."""
        from alearn.team import add_member
        from labelstudio.annotators import invite_annotator

        email = f"{prefix}-{uuid.uuid4().hex[:8]}@alearn.local"
        who = invite_annotator(self.url, self.token, email, "pw-" + secrets.token_hex(8))
        if store is not None:
            add_member(store, who.email, role)
        return who


@pytest.fixture(scope="session")
def live_ls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveLabelStudio]:
    from labelstudio.server import find_ls_bin, free_port, start_server, stop_server

    try:
        find_ls_bin()
    except LabelStudioError as exc:
        pytest.skip(f"Label Studio is not installed: {exc}")
    data_dir = tmp_path_factory.mktemp("label-studio")
    doc_root = tmp_path_factory.getbasetemp()
    token, password = secrets.token_hex(20), secrets.token_urlsafe(12)
    info = start_server(
        data_dir, image_root=None, document_root=doc_root, port=free_port(),
        username="admin@alearn.local", password=password, token=token, timeout=240,
        allow_hosts=["127.0.0.1"],  # the tests' webhook receivers listen there
    )
    try:
        yield LiveLabelStudio(info.url, token, "admin@alearn.local", password, doc_root, data_dir)
    finally:
        stop_server(data_dir)


@pytest.fixture
def env(live_ls: LiveLabelStudio, monkeypatch: pytest.MonkeyPatch) -> Iterator[Redis]:
    """The environment a worker sees: the live Label Studio and a flushed test Redis."""
    from conftest import REDIS_TEST_URL

    monkeypatch.setenv("ALEARN_REDIS_URL", REDIS_TEST_URL)
    monkeypatch.setenv("ALEARN_LS_URL", live_ls.url)
    monkeypatch.setenv("ALEARN_LS_TOKEN", live_ls.token)
    monkeypatch.setenv("ALEARN_LS_DOCUMENT_ROOT", str(live_ls.document_root))
    conn = Redis.from_url(REDIS_TEST_URL)
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()


def work(conn: Redis) -> None:
    """Run every queued job on a real RQ worker, in this process, until the queues empty."""
    from rq import SimpleWorker

    from alearn.config import Settings
    from workers import queues

    settings = Settings()
    qs = [queues.get_queue(conn, settings, n) for n in queues.QUEUE_NAMES]
    SimpleWorker(qs, connection=conn).work(burst=True)
