"""A local Label Studio server for development, tests and the demo.

Label Studio lives in its own virtual environment (it pins its own Django stack), so it
runs as a separate, detached process: ``label-studio start`` with a data directory, a
pid file and a log file in that directory. Production deployments run Label Studio on
their own (see docker-compose.yml) and only need :mod:`labelstudio.client`.

The server listens on loopback only (``--internal-host 127.0.0.1``). Because it is
private to this machine, it runs with Label Studio's SSRF protection off, so that it
may call a webhook receiver on 127.0.0.1 (with protection on, Label Studio refuses
webhook URLs on reserved addresses). The admin's password and token are passed in the
environment, not on the command line, so ``ps`` does not show them.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from alearn.exceptions import ConfigError, LabelStudioError

logger = logging.getLogger(__name__)

STATE_FILE = "server.json"
LOG_FILE = "label-studio.log"
ADMIN_FILE = "admin.json"
ADMIN_EMAIL = "admin@alearn.local"
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


def pid_alive(pid: int) -> bool:
    try:  # reap it if it is our own finished child
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return True
    return True


def _is_label_studio(pid: int) -> bool:
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():  # no /proc (macOS): trust the pid file
        return True
    try:
        return b"label-studio" in cmdline.read_bytes() or b"label_studio" in cmdline.read_bytes()
    except OSError:
        return False


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


def server_status(data_dir: Path | str) -> ServerInfo | None:
    """The server recorded in ``data_dir`` if its process is alive, else None."""
    state = Path(data_dir) / STATE_FILE
    try:
        info = json.loads(state.read_text())
    except (OSError, ValueError):
        return None
    pid = int(info["pid"])
    if not (pid_alive(pid) and _is_label_studio(pid)):
        return None
    return ServerInfo(
        url=info["url"], pid=pid, port=int(info["port"]), log_path=Path(data_dir) / LOG_FILE
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
) -> ServerInfo:
    """Start Label Studio detached and wait until ``/health`` answers.

    Parameters
    ----------
    data_dir
        Label Studio's data directory (database, uploads); the pid and log files go here.
    image_root
        Folder of the images to serve. Label Studio serves files below its document root
        only, and a storage may not be the document root itself, so the document root
        defaults to the parent of ``image_root``. May be None if ``document_root`` is
        given.
    username, password, token
        The admin account (email, password, API token), created on the first start.
    port
        Port on 127.0.0.1. Refused if already in use (Label Studio would silently move
        to another port).
    document_root
        Overrides the document root (for example a folder above several image roots).
    timeout
        Seconds to wait for ``/health``; a first start takes 30-45 s.

    Returns the running server; if one is already running for ``data_dir``, returns it.
    """
    data_dir = Path(data_dir).resolve()
    if image_root is None and document_root is None:
        raise ConfigError("start_server needs image_root (or document_root).")
    root = Path(image_root).resolve() if image_root is not None else None
    doc_root = Path(document_root).resolve() if document_root else root.parent  # type: ignore[union-attr]
    if root is not None and doc_root not in root.parents:
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
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(doc_root),
        "LABEL_STUDIO_USERNAME": username,
        "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_SENTRY_DSN": "",
        "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
    }
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
    state = {"pid": proc.pid, "port": port, "url": url, "document_root": str(doc_root)}
    tmp = data_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(data_dir / STATE_FILE)
    logger.info("label studio starting url=%s pid=%s data_dir=%s", url, proc.pid, data_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabelStudioError(
                f"Label Studio exited with code {proc.returncode} while starting. "
                f"Last lines of {log_path}:\n{log_tail(data_dir)}"
            )
        if _healthy(url):
            logger.info("label studio up url=%s pid=%s", url, proc.pid)
            return ServerInfo(url=url, pid=proc.pid, port=port, log_path=log_path)
        time.sleep(1.0)
    stop_server(data_dir)
    raise LabelStudioError(
        f"Label Studio did not answer {url}/health within {timeout:.0f} s; stopped it. "
        f"Last lines of {log_path}:\n{log_tail(data_dir)}"
    )


def stop_server(data_dir: Path | str, *, timeout: float = 30.0) -> bool:
    """Stop the server recorded in ``data_dir``; True if one was running."""
    data_dir = Path(data_dir)
    info = server_status(data_dir)
    (data_dir / STATE_FILE).unlink(missing_ok=True)
    if info is None:
        return False
    os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(info.pid):
            logger.info("label studio stopped pid=%s", info.pid)
            return True
        time.sleep(0.2)
    os.kill(info.pid, signal.SIGKILL)
    while pid_alive(info.pid) and time.monotonic() < deadline + 5:
        time.sleep(0.1)
    logger.warning("label studio killed pid=%s after %.0f s", info.pid, timeout)
    return True


def admin_credentials(data_dir: Path | str) -> dict[str, str]:
    """The local server's admin ``{email, password, token}``, generated on first use.

    Kept in ``<data_dir>/admin.json``, readable by its owner only (mode 0600).
    """
    path = Path(data_dir) / ADMIN_FILE
    if path.exists():
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        creds = json.loads(path.read_text(encoding="utf-8"))
        if not {"email", "password", "token"} <= set(creds):
            raise ConfigError(f"{path} lacks email, password or token; delete it to regenerate.")
        return creds
    path.parent.mkdir(parents=True, exist_ok=True)
    creds = {
        "email": ADMIN_EMAIL,
        "password": secrets.token_urlsafe(12),
        "token": secrets.token_hex(20),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(creds, f, indent=2)
    return creds
