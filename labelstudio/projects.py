"""The alearn project's counterpart in Label Studio: project set-up.

:func:`ensure_project` creates or updates the Label Studio project idempotently: its
title, labeling interface and whether annotators see predictions, and the image root
as a local storage, and the annotators' instructions (``expert_instruction``, shown on
the labeling page) when a class of alearn.toml has a description, guidance or examples;
without them Label Studio's instructions are left as they are. It never touches
``maximum_annotations``: a round's overlap has one source of truth, the round, and
:func:`labelstudio.push.push_round` sets it. So ``alearn ls up`` in the middle of a round
started with ``--overlap`` changes nothing about that round. The store's ``meta`` table
remembers the project:

``ls_project_id``       the Label Studio project id
``ls_url``              the server it lives on
``ls_classes`` / ``ls_classes_hash``   the classes it was set up with
``ls_image_url_base``   what a task's image URL starts with (the item path follows)

:func:`upsert_project` and :func:`ensure_storage` are shared with the adjudication
project (:mod:`labelstudio.adjudication`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alearn.class_tables import is_url
from alearn.config import ProjectConfig
from alearn.exceptions import ConfigError, LabelStudioError
from alearn.store import Store
from labelstudio.client import LSClient
from labelstudio.label_config import config_hash, instructions_html, label_config
from labelstudio.urls import image_url, image_url_base, storage_path

logger = logging.getLogger(__name__)

STORAGE_TITLE = "alearn images"


def project_title(cfg: ProjectConfig) -> str:
    title = (cfg.labelstudio.title or cfg.name).strip()
    return title if len(title) >= 3 else f"alearn {title}".strip()  # LS wants >= 3 chars


def project_fields(cfg: ProjectConfig, image_base: str = "") -> dict[str, Any]:
    """The main project's settings that set-up owns (never ``maximum_annotations``).

    ``image_base`` is what task image URLs start with (:func:`labelstudio.urls.
    image_url_base`): example images under the image root are served the same way.
    """
    fields: dict[str, Any] = {
        "title": project_title(cfg),
        "label_config": label_config(cfg.classes),
        "show_collab_predictions": cfg.labelstudio.show_predictions,
    }
    html = instructions_html(
        cfg.classes, {c: cfg.class_spec(c) for c in cfg.classes},
        lambda e: e if is_url(e) else image_url(image_base, e))
    if html:
        fields.update(expert_instruction=html, show_instruction=True)
    return fields


def _differs(current: object, wanted: object) -> bool:
    if isinstance(current, str) and isinstance(wanted, str):
        return current.strip() != wanted.strip()
    return current != wanted


def _check_classes(store: Store, cfg: ProjectConfig, project_id: int) -> bool:
    """Raise if the class set changed; True if only the order changed."""
    old_hash = store.get_meta("ls_classes_hash")
    if old_hash is None or old_hash == config_hash(cfg.classes):
        return False
    old = list(store.get_meta("ls_classes") or [])
    added = [c for c in cfg.classes if c not in old]
    removed = [c for c in old if c not in cfg.classes]
    if not added and not removed and old:
        return True
    raise ConfigError(
        f"the classes in alearn.toml changed since Label Studio project {project_id} was "
        f"set up: added {added or 'none'}, removed {removed or 'none'} (was {old}, now "
        f"{cfg.classes}). Annotations already made there use the old classes, and alearn "
        "does not relabel them silently. Restore the previous classes in alearn.toml, or "
        "label the new classes in a new alearn project (alearn init)."
    )


def ensure_project(
    store: Store,
    client: LSClient,
    cfg: ProjectConfig,
    image_root: Path | str,
    *,
    document_root: Path | str | None = None,
) -> int:
    """Create or update the Label Studio project for ``cfg``; return its id.

    Sets the title, the labeling interface and whether annotators see predictions, and
    registers the image root as a local storage (unless ``labelstudio.image_url_prefix``
    is set). The overlap is left alone: each round's push sets it. Safe to call again.

    Raises
    ------
    ConfigError
        The class set changed since the project was created (no silent relabel).
    LabelStudioError
        The recorded project no longer exists, or the server refused a call.
    """
    base = image_url_base(
        image_root, prefix=cfg.labelstudio.image_url_prefix, document_root=document_root
    )
    recorded = store.get_meta("ls_project_id")
    if recorded is not None:  # refuse a class change before touching Label Studio
        _check_classes(store, cfg, int(recorded))
    project_id = upsert_project(store, client, "ls_project_id", project_fields(cfg, base),
                                what="project")
    if recorded is None:
        store.set_meta("ls_url", client.url)
    store.set_meta("ls_classes", list(cfg.classes))
    store.set_meta("ls_classes_hash", config_hash(cfg.classes))
    store.set_meta("ls_image_url_base", base)
    if not cfg.labelstudio.image_url_prefix:
        ensure_storage(client, project_id, storage_path(image_root, document_root))
    return project_id


def upsert_project(
    store: Store, client: LSClient, meta_key: str, fields: dict[str, Any], *, what: str
) -> int:
    """Create the Label Studio project whose id the store keeps under ``meta_key``, or
    bring the existing one's ``fields`` up to date; return its id."""
    project_id = store.get_meta(meta_key)
    if project_id is None:
        project_id = client.create_project(**fields)
        store.set_meta(meta_key, project_id)
        logger.info("ls %s created ls_project_id=%s url=%s", what, project_id, client.url)
        return int(project_id)
    project_id = int(project_id)
    current = client.get_project(project_id)
    if current is None:
        created_at = store.get_meta("ls_url")
        raise LabelStudioError(
            f"Label Studio {what} {project_id}, recorded in the store, does not exist at "
            f"{client.url}" + (f" (it was created at {created_at})" if created_at else "")
            + ". Point ALEARN_LS_URL at the server that holds it, or restore that "
            "server's data."
        )
    changed = {k: v for k, v in fields.items() if _differs(current.get(k), v)}
    if changed:
        client.update_project(project_id, **changed)
        logger.info("ls %s updated ls_project_id=%s fields=%s", what, project_id,
                    ",".join(sorted(changed)))
    return project_id


def ensure_storage(client: LSClient, project_id: int, image_root: Path) -> None:
    """Register ``image_root`` (as Label Studio sees it) as the project's local storage."""
    for s in client.local_storages(project_id):
        if s["path"] and Path(s["path"]) == image_root:
            return
    client.create_local_storage(project_id, str(image_root), title=STORAGE_TITLE)
    logger.info("ls local storage registered ls_project_id=%s path=%s", project_id, image_root)
