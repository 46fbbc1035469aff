"""A local Label Studio server for development, tests and the demo.

Label Studio lives in its own virtual environment (it pins its own Django stack), so it
runs as a separate, detached process: ``label-studio start`` with a data directory, a
pid file and a log file in that directory. Production deployments run Label Studio on
their own (see docker-compose.yml) and only need :mod:`labelstudio.client`.

The server listens on loopback only (``--internal-host 127.0.0.1``). What it is given
(its environment: closed sign-up, SSRF protection, the document root; the admin
account) is :mod:`labelstudio.server_security`; the record of the started process and
the check that a pid is still it, before anything is signalled, is
:mod:`labelstudio.pidfile`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from alearn import atomic
from alearn.exceptions import ConfigError, LabelStudioError
from alearn.processes import pid_alive
from alearn.progress import waiting
from labelstudio.empty_database import seed
from labelstudio.pidfile import STATE_FILE, read_state, start_time, why_not_ours
from labelstudio.server_security import serve_only, server_env
from labelstudio.urls import served_link

logger = logging.getLogger(__name__)

LOG_FILE = "label-studio.log"
# how long the last start took (the estimate of the next one's), and the first one's guess
STARTUP_FILE = "startup.json"
FIRST_START_GUESS_S = 60.0
SEEDED_START_GUESS_S = 10.0  # a first start from the empty database setup made
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ServerInfo:
    """A running local Label Studio."""

    url: str
    pid: int
    port: int
    log_path: Path


def find_ls_bin(ls_bin: str | Path | None = None) -> Path:
    """The ``label-studio`` executable.

    Looked up in order: the argument, ``$ALEARN_LS_BIN``, ``<repo>/.lsvenv/bin``
    (made by scripts/setup), then ``label-studio`` on the PATH.
    """
    env = os.environ.get("ALEARN_LS_BIN")
    on_path = shutil.which("label-studio")
    candidates = [Path(p) for p in (ls_bin, env) if p]
    candidates += [REPO_ROOT / ".lsvenv/bin/label-studio"]
    candidates += [Path(on_path)] if on_path else []
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise LabelStudioError(
        "cannot find the label-studio program (looked at "
        + ", ".join(str(p) for p in candidates)
        + "). Run scripts/setup to install it into .lsvenv, or set ALEARN_LS_BIN."
    )


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        r = httpx.get(f"{url}/health", timeout=timeout)
    except httpx.HTTPError:
        return False
    return r.status_code == 200


def log_tail(data_dir: Path | str, n: int = 30) -> str:
    """The last ``n`` lines of the server log."""
    path = Path(data_dir) / LOG_FILE
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def expected_start_seconds(data_dir: Path) -> float:
    """How long a start is expected to take: the last one's duration, else a guess."""
    try:
        return float(json.loads((data_dir / STARTUP_FILE).read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return FIRST_START_GUESS_S


def server_status(data_dir: Path | str) -> ServerInfo | None:
    """The server recorded in ``data_dir`` if it is alive and is the Label Studio alearn
    started there, else None."""
    data_dir = Path(data_dir).resolve()
    info = read_state(data_dir)
    if info is None:
        return None
    pid = info["pid"]
    if pid <= 1 or not pid_alive(pid, reap=True):
        return None
    if why_not_ours(pid, data_dir, info.get("started")) is not None:
        return None
    return ServerInfo(
        url=info["url"], pid=pid, port=info["port"], log_path=data_dir / LOG_FILE
    )


def start_server(
    data_dir: Path | str,
    *,
    image_root: Path | str | None,
    username: str,
    password: str,
    token: str,
    port: int = 8080,
    document_root: Path | str | None = None,
    ls_bin: str | Path | None = None,
    timeout: float = 180.0,
    allow_hosts: tuple[str, ...] | list[str] = (),
    progress: bool = False,
) -> ServerInfo:
    """Start Label Studio detached and wait until ``/health`` answers.

    Parameters
    ----------
    data_dir
        Label Studio's data directory (database, uploads); the pid and log files go here.
    image_root
        Folder of the images to serve. By default the document root is made by
        :func:`serve_only`: it holds a link to the image root and nothing else. May be
        None if ``document_root`` is given.
    username, password, token
        The admin account (email, password, API token), created on the first start.
    port
        Port on 127.0.0.1. Refused if already in use (Label Studio would silently move
        to another port).
    document_root
        Overrides the document root (for example a folder above several image roots).
    timeout
        Seconds to wait for ``/health``. A first start applies Label Studio's migrations
        (about a minute on 2 cores) unless setup made the empty database that
        :mod:`labelstudio.empty_database` copies in; then it takes seconds.
    progress
        Show a bar on stderr while waiting: seconds waited and the time left, estimated
        from how long the last start in ``data_dir`` took.

    Returns the running server; if one is already running for ``data_dir``, returns it.
    """
    data_dir = Path(data_dir).resolve()
    if image_root is None and document_root is None:
        raise ConfigError("start_server needs image_root (or document_root).")
    root = Path(image_root).resolve() if image_root is not None else None
    if document_root is None and root is not None:
        doc_root = serve_only(data_dir, root)  # the image root and nothing else
    else:
        doc_root = Path(document_root).resolve()  # type: ignore[arg-type]
    if root is not None and doc_root not in root.parents and not served_link(root, doc_root):
        raise ConfigError(
            f"image root {root} is not strictly below the document root {doc_root}; "
            "pass a document_root that contains the image root."
        )
    if len(token) < 6:
        raise ConfigError("the Label Studio token must be at least 6 characters long.")
    running = server_status(data_dir)
    if running is not None:  # started before (maybe still booting): wait for it
        deadline = time.monotonic() + timeout
        while server_status(data_dir) is not None and time.monotonic() < deadline:
            if _healthy(running.url):
                logger.info("label studio already running url=%s pid=%s", running.url, running.pid)
                return running
            time.sleep(1.0)
        stop_server(data_dir)
    if _port_in_use(port):
        raise LabelStudioError(
            f"port {port} on 127.0.0.1 is already in use. Stop what uses it, or choose "
            "another port (alearn ls up --port N)."
        )
    exe = find_ls_bin(ls_bin)
    data_dir.mkdir(parents=True, exist_ok=True)
    seeded = seed(data_dir, exe)  # migrations already applied: seconds, not a minute
    url = f"http://127.0.0.1:{port}"
    env = server_env(document_root=doc_root, username=username, password=password,
                     token=token, allow_hosts=allow_hosts)
    cmd = [
        str(exe), "start", "--no-browser", "--data-dir", str(data_dir),
        "-p", str(port), "--host", url, "--internal-host", "127.0.0.1",
        "--enable-legacy-api-token",
    ]
    log_path = data_dir / LOG_FILE
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, cwd=data_dir, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    state = {"pid": proc.pid, "port": port, "url": url, "document_root": str(doc_root),
             "started": start_time(proc.pid)}
    atomic.write_json(data_dir / STATE_FILE, state)
    logger.info("label studio starting url=%s pid=%s data_dir=%s", url, proc.pid, data_dir)
    started = time.monotonic()
    deadline = started + timeout
    expected = SEEDED_START_GUESS_S if seeded else expected_start_seconds(data_dir)
    with waiting(progress, expected, "Label Studio starting") as tick:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LabelStudioError(
                    f"Label Studio exited with code {proc.returncode} while starting. "
                    f"Last lines of {log_path}:\n{log_tail(data_dir)}"
                )
            if _healthy(url):
                took = round(time.monotonic() - started, 1)
                atomic.write_json(data_dir / STARTUP_FILE, {"seconds": took})
                logger.info("label studio up url=%s pid=%s seconds=%s", url, proc.pid, took)
                return ServerInfo(url=url, pid=proc.pid, port=port, log_path=log_path)
            time.sleep(1.0)
            tick(time.monotonic() - started)
    stop_server(data_dir)
    raise LabelStudioError(
        f"Label Studio did not answer {url}/health within {timeout:.0f} s; stopped it. "
        f"Last lines of {log_path}:\n{log_tail(data_dir)}"
    )


def stop_server(data_dir: Path | str, *, timeout: float = 30.0) -> bool:
    """Stop the server recorded in ``data_dir``; True if one was running.

    Signals only a process verified as the Label Studio alearn started there (pid > 1,
    its command line, its start time); otherwise refuses with a message and signals
    nothing. A record of a process that is gone is removed.
    """
    data_dir = Path(data_dir).resolve()
    info = read_state(data_dir)
    if info is None:
        return False
    pid = info["pid"]
    if pid > 1 and not pid_alive(pid, reap=True):
        (data_dir / STATE_FILE).unlink(missing_ok=True)
        return False
    why = why_not_ours(pid, data_dir, info.get("started"))
    if why is not None:
        raise LabelStudioError(
            f"{data_dir / STATE_FILE} names a process alearn will not stop: {why}. Nothing "
            "was signalled. Stop Label Studio yourself, then delete that file."
        )
    (data_dir / STATE_FILE).unlink(missing_ok=True)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid, reap=True):
            logger.info("label studio stopped pid=%s", pid)
            return True
        time.sleep(0.2)
    if why_not_ours(pid, data_dir, info.get("started")) is None:
        os.kill(pid, signal.SIGKILL)
    while pid_alive(pid, reap=True) and time.monotonic() < deadline + 5:
        time.sleep(0.1)
    logger.warning("label studio killed pid=%s after %.0f s", pid, timeout)
    return True


