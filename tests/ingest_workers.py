"""Stand-ins that ingest's worker processes import by name (kept light: a spawned worker
imports this module, not the test module with all its imports)."""

from __future__ import annotations

import multiprocessing
import os
from typing import Any

from alearn.ingestion.decode import Decoded, decode_image


def dies_on_poison(path: str, **kw: Any) -> Decoded:
    """A decoder that kills its process on a file named '*poison*', as a crashing codec
    would; it never does so outside a worker process."""
    if "poison" in str(path) and multiprocessing.parent_process() is not None:
        os._exit(3)
    return decode_image(path, **kw)


def init_fails() -> None:
    """A worker initializer that fails: the pool cannot start."""
    raise RuntimeError("no worker for you")
