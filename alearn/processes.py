"""Is a process alive? One answer for the whole code base (local server, leases, workers)."""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int, *, reap: bool = False) -> bool:
    """True while process ``pid`` runs: not gone, not a zombie; never for pid <= 1 (0 and
    -1 name process groups, 1 is init). With ``reap``, a finished child of ours is
    reaped (only for children this code started: reaping another's child, e.g. RQ's
    scheduler process, would hide its death from its owner)."""
    if pid <= 1:
        return False
    if reap:
        try:
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
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
