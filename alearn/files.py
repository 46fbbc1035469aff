"""Reading files a user names: only regular files, never more than a cap.

A FIFO, a device or a socket named like an image or a manifest would block a read
forever, and a huge file would fill the memory; both are refused with a reason.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path


def read_regular_file(path: Path, max_bytes: int, *,
                      limit: str = "ingest.max_file_mb") -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; see :func:`read_regular_stat`."""
    return read_regular_stat(path, max_bytes, limit=limit)[0]


def read_regular_stat(path: Path | str, max_bytes: int, *,
                      limit: str = "ingest.max_file_mb") -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file of at most ``max_bytes``, and its stat before the read.

    Opened without blocking, then checked on the open descriptor, so a FIFO, a device
    or a socket named like an image is refused (never read, never waited on) even if it
    replaces a file between a look and the read. Raises ValueError with the reason.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file (a FIFO, device, socket or folder); only "
                             "image files are read")
        if st.st_size > max_bytes:
            raise ValueError(f"file too large: {st.st_size} bytes, over the limit of "
                             f"{max_bytes} ({limit})")
        want = min(st.st_size, max_bytes) + 1  # +1: it may have grown
        data = os.read(fd, want)  # a regular file never blocks (O_NONBLOCK is moot)
        while len(data) < want and (more := os.read(fd, want - len(data))):
            data += more
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ValueError(f"file too large: over the limit of {max_bytes} bytes ({limit})")
    return data, st


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
