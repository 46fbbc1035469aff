"""The Label Studio boundary: the only package that talks to Label Studio.

The rest of alearn never sees the SDK or Label Studio JSON; it calls these functions
with the store and an :class:`LSClient`. Names are imported lazily: the SDK takes
seconds to import, and most commands never need it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Annotator": "annotators",
    "label_stream": "annotators",
    "signup_annotator": "annotators",
    "LSClient": "client",
    "connect_label_studio": "client",
    "annotation_to_record": "convert",
    "config_hash": "label_config",
    "label_config": "label_config",
    "ensure_project": "projects",
    "PullSummary": "pull",
    "pull_annotations": "pull",
    "PushSummary": "push",
    "push_round": "push",
    "ServerInfo": "server",
    "admin_credentials": "server_security",
    "server_status": "server",
    "start_server": "server",
    "stop_server": "server",
    "image_url": "urls",
    "image_url_base": "urls",
    "create_app": "webhook",
    "register_webhook": "webhook",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'labelstudio' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"labelstudio.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
