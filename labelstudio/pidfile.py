"""The record of a started local Label Studio, and the check that a pid is still it.

``<data_dir>/server.json`` holds the pid, port, URL, document root and the process's
start time. Before alearn reports a server as running or signals it, the pid must be a
real process whose command line runs label-studio on that data directory and which
started when the recorded one did (:func:`why_not_ours`), so a reused pid or an edited
record never gets a stranger's process signalled.
"""

from __future__ import annotations

import json
from pathlib import Path

from alearn.exceptions import LabelStudioError

STATE_FILE = "server.json"


def start_time(pid: int) -> int | None:
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


def why_not_ours(pid: int, data_dir: Path, started: int | None) -> str | None:
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
    now = start_time(pid)
    if started is not None and now is not None and now != started:
        return f"process {pid} started after the Label Studio alearn recorded (pid reused)"
    return None


def read_state(data_dir: Path) -> dict | None:
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
