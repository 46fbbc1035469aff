"""A local Label Studio server for development, tests and the demo.

Label Studio lives in its own virtual environment (it pins its own Django stack), so it
runs as a separate, detached process: ``label-studio start`` with a data directory, a
pid file and a log file in that directory. Production deployments run Label Studio on
their own (see docker-compose.yml) and only need :mod:`labelstudio.client`.

The server listens on loopback only (``--internal-host 127.0.0.1``). Sign-up is closed
(only an invite link signs a person up, see :mod:`labelstudio.annotators`), SSRF
protection is on with only the webhook receiver's host allowed, and it serves local
files from a document root that holds the image root and nothing else. Its process gets
only the environment it needs: the admin's password and token (in the environment, so
``ps`` does not show them), never alearn's own variables.
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from alearn.exceptions import ConfigError, LabelStudioError
from alearn.processes import pid_alive
from labelstudio.urls import served_link

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


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), or None without /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def _is_our_label_studio(pid: int, data_dir: Path, started: int | None) -> str | None:
    """None if ``pid`` is the Label Studio alearn started for ``data_dir``; else why not.

    Checked: the pid is a real process id (> 1), its command line runs label-studio on
    this data directory, and it started when the recorded process started.
    """
    if pid <= 1:
        return f"pid {pid} is not a process alearn could have started"
    cmd = _cmdline(pid)
    if cmd is None:
        return f"there is no process {pid} to check"
    if b"label-studio" not in cmd and b"label_studio" not in cmd:
        return f"process {pid} is not Label Studio"
    if str(data_dir).encode() not in cmd:
        return f"process {pid} is a Label Studio for another data directory"
    now = _start_time(pid)
    if started is not None and now is not None and now != started:
        return f"process {pid} started after the Label Studio alearn recorded (pid reused)"
    return None


def _read_state(data_dir: Path) -> dict | None:
    """server.json, checked; None if absent. A corrupt one raises a one-line error."""
    state = data_dir / STATE_FILE
    try:
        text = state.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LabelStudioError(f"{state}: cannot read it ({exc.strerror}).") from None
    try:
        info = json.loads(text)
        info["pid"], info["port"] = int(info["pid"]), int(info["port"])
        if not isinstance(info["url"], str):
            raise TypeError("url")
    except (ValueError, TypeError, KeyError):
        raise LabelStudioError(
            f"{state} is not a record alearn wrote (corrupt or edited). Nothing was "
            "signalled. If no Label Studio is running for this project, delete that file."
        ) from None
    return info


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
    """The server recorded in ``data_dir`` if it is alive and is the Label Studio alearn
    started there, else None."""
    data_dir = Path(data_dir).resolve()
    info = _read_state(data_dir)
    if info is None:
        return None
    pid = info["pid"]
    if pid <= 1 or not pid_alive(pid, reap=True):
        return None
    if _is_our_label_studio(pid, data_dir, info.get("started")) is not None:
        return None
    return ServerInfo(
        url=info["url"], pid=pid, port=info["port"], log_path=data_dir / LOG_FILE
    )


#: The only variables of the caller's environment Label Studio's process gets; alearn's
#: own (tokens, database URLs) never reach it.
_PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SSL_CERT_FILE",
             "REQUESTS_CA_BUNDLE", "PYTHONIOENCODING")


def banned_subnets(allow_hosts: Sequence[str] = ()) -> list[str]:
    """Label Studio's default banned (reserved) subnets, less the given hosts' addresses:
    SSRF protection stays on, and only a webhook receiver's host is reachable.

    The allowance is per address, not per port: run the receiver on an address of its
    own (e.g. ``alearn webhook serve --host 127.0.0.2`` with ``--allow-webhook-host
    127.0.0.2``), so nothing else on the machine becomes reachable."""
    import ipaddress

    reserved = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
                "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24",
                "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
                "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32", "::/128", "::1/128",
                "::ffff:0:0/96", "64:ff9b::/96", "100::/64", "2001::/32", "2001:10::/28",
                "2001:20::/28", "2001:db8::/32", "2002::/16", "fc00::/7", "fe80::/10",
                "ff00::/8"]
    nets = [ipaddress.ip_network(n) for n in reserved]
    for host in allow_hosts:
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            try:
                ip = ipaddress.ip_address(socket.getaddrinfo(host, None)[0][4][0])
            except (OSError, IndexError, ValueError):
                raise ConfigError(f"webhook host {host!r}: not an address, and it does not "
                                  "resolve. Give the receiver's IP address.") from None
        addr = ipaddress.ip_network(ip)
        out = []
        for net in nets:
            if addr.version == net.version and addr.subnet_of(net):  # type: ignore[arg-type]
                out += list(net.address_exclude(addr))  # type: ignore[arg-type]
            else:
                out.append(net)
        nets = out
    return [str(n) for n in nets]


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
        Seconds to wait for ``/health``; a first start takes 30-45 s.

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
    url = f"http://127.0.0.1:{port}"
    env = {
        **{k: os.environ[k] for k in _PASS_ENV if k in os.environ},
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(doc_root),
        "LABEL_STUDIO_USERNAME": username,
        "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "SSRF_PROTECTION_ENABLED": "true",
        "USE_DEFAULT_BANNED_SUBNETS": "false",
        "USER_ADDITIONAL_BANNED_SUBNETS": ",".join(banned_subnets(list(allow_hosts))),
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
    state = {"pid": proc.pid, "port": port, "url": url, "document_root": str(doc_root),
             "started": _start_time(proc.pid)}
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
    """Stop the server recorded in ``data_dir``; True if one was running.

    Signals only a process verified as the Label Studio alearn started there (pid > 1,
    its command line, its start time); otherwise refuses with a message and signals
    nothing. A record of a process that is gone is removed.
    """
    data_dir = Path(data_dir).resolve()
    info = _read_state(data_dir)
    if info is None:
        return False
    pid = info["pid"]
    if pid > 1 and not pid_alive(pid, reap=True):
        (data_dir / STATE_FILE).unlink(missing_ok=True)
        return False
    why = _is_our_label_studio(pid, data_dir, info.get("started"))
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
    if _is_our_label_studio(pid, data_dir, info.get("started")) is None:
        os.kill(pid, signal.SIGKILL)
    while pid_alive(pid, reap=True) and time.monotonic() < deadline + 5:
        time.sleep(0.1)
    logger.warning("label studio killed pid=%s after %.0f s", pid, timeout)
    return True


SERVED_DIR = "served"
SERVED_LINK = "images"


def serve_only(data_dir: Path | str, image_root: Path | str) -> Path:
    """A document root for Label Studio that holds one link, to the image root, and
    nothing else: ``<data_dir>/served/images -> image_root``. Returns the document root.

    Label Studio serves local files below its document root and registers storages only
    below it; with this root, no file beside the images (the store, token files, Label
    Studio's own database) can be served or registered.
    """
    served = Path(data_dir).resolve() / SERVED_DIR
    served.mkdir(parents=True, exist_ok=True)
    link = served / SERVED_LINK
    target = Path(image_root).resolve()
    if link.is_symlink() and link.resolve() == target:
        return served
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target, target_is_directory=True)
    for extra in served.iterdir():  # nothing else is ever served
        if extra != link:
            raise ConfigError(f"{served} must hold only the link {SERVED_LINK}; remove "
                              f"{extra.name} from it.")
    return served


def local_document_root(data_dir: Path | str) -> Path | None:
    """The served root of the local server, if ``alearn ls up`` made one."""
    served = Path(data_dir).resolve() / SERVED_DIR
    return served if (served / SERVED_LINK).is_symlink() else None


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
