"""The Label Studio client, and the alearn project's counterpart in Label Studio.

:class:`LSClient` is a thin wrapper around the Label Studio SDK (plain dicts in and out);
only this module touches the SDK. Every call goes through :meth:`LSClient._calls`, which
turns connection problems and API errors into :class:`~alearn.exceptions.LabelStudioError`
with a message that names the URL and says what to do. SDK errors carry the response
headers (session cookies included), so they never go into messages or logs as they are.

:func:`ensure_project` creates or updates the Label Studio project idempotently. The
store's ``meta`` table remembers it:

``ls_project_id``       the Label Studio project id
``ls_url``              the server it lives on
``ls_classes`` / ``ls_classes_hash``   the classes it was set up with
``ls_image_url_base``   what a task's image URL starts with (the item path follows)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.core.request_options import RequestOptions

from alearn.config import ProjectConfig, Settings
from alearn.exceptions import ConfigError, LabelStudioError
from alearn.store import Store
from labelstudio.label_config import config_hash, label_config
from labelstudio.urls import image_url_base, storage_path

logger = logging.getLogger(__name__)

#: POSTs that create things are not retried by the SDK: a retried import could duplicate
#: tasks. Callers reconcile instead (push lists existing tasks before creating).
_NO_RETRY: RequestOptions = {"max_retries": 0}


def _describe(body: Any) -> str:
    if isinstance(body, dict):
        parts = [str(body.get("detail") or "")]
        if body.get("validation_errors"):
            parts.append(str(body["validation_errors"]))
        text = " ".join(p for p in parts if p)
        return text or str({k: v for k, v in body.items() if k != "exc_info"})
    return str(body)[:500]


class LSClient:
    """A Label Studio server, reached with an API token.

    Parameters
    ----------
    url
        Base URL, e.g. ``http://127.0.0.1:8080``.
    token
        An API token: a legacy token (sent as ``Token ...``; the organization must allow
        legacy tokens) or a personal access token (JWT, sent as ``Bearer ...``).
    timeout
        Seconds per request.
    """

    def __init__(self, url: str, token: str, *, timeout: float = 60.0) -> None:
        if not token:
            raise ConfigError(
                "no Label Studio API token. Set ALEARN_LS_TOKEN (alearn ls up prints it) "
                "or ALEARN_LS_TOKEN_FILE."
            )
        self.url = url.rstrip("/")
        self._sdk = LabelStudio(base_url=self.url, api_key=token, timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings) -> LSClient:
        """A client for ``ALEARN_LS_URL`` with ``ALEARN_LS_TOKEN`` (or the token file)."""
        return cls(settings.ls_url, settings.label_studio_token() or "")

    def __repr__(self) -> str:
        return f"LSClient({self.url!r})"

    @contextmanager
    def _calls(self, what: str) -> Iterator[None]:
        try:
            yield
        except httpx.TransportError as exc:
            raise LabelStudioError(
                f"cannot reach Label Studio at {self.url} ({what}: {type(exc).__name__}). "
                "Is Label Studio running? Start a local one with 'alearn ls up', or set "
                "ALEARN_LS_URL to your server's address."
            ) from None
        except ApiError as exc:
            if exc.status_code == 401:
                raise LabelStudioError(
                    f"Label Studio at {self.url} refused the API token ({what}). Set "
                    "ALEARN_LS_TOKEN to an admin's token ('alearn ls up' prints the local "
                    "one); a legacy token needs an organization that allows legacy tokens."
                ) from None
            raise LabelStudioError(
                f"Label Studio at {self.url} answered {exc.status_code} to {what}: "
                f"{_describe(exc.body)}"
            ) from None

    # -- account --------------------------------------------------------------------
    def whoami(self) -> dict[str, Any]:
        """The account behind the token (also checks that the server answers)."""
        with self._calls("who am I"):
            me = self._sdk.users.whoami()
        return {"id": me.id, "email": me.email}

    def user_emails(self) -> dict[int, str]:
        """Label Studio user id -> email, for every user of the organization."""
        with self._calls("list users"):
            return {u.id: u.email for u in self._sdk.users.list() if u.id is not None}

    # -- projects -------------------------------------------------------------------
    def get_project(self, project_id: int) -> dict[str, Any] | None:
        """The project's settings, or None if there is no such project."""
        with self._calls(f"get project {project_id}"):
            try:
                p = self._sdk.projects.get(id=project_id)
            except ApiError as exc:
                if exc.status_code == 404:
                    return None
                raise
        return {
            "id": p.id,
            "title": p.title,
            "label_config": p.label_config,
            "maximum_annotations": p.maximum_annotations,
            "show_collab_predictions": p.show_collab_predictions,
            "sampling": p.sampling,
            "model_version": p.model_version,
        }

    def create_project(self, **fields: Any) -> int:
        with self._calls("create project"):
            project_id = self._sdk.projects.create(**fields, request_options=_NO_RETRY).id
        if project_id is None:
            raise LabelStudioError(f"Label Studio at {self.url} created a project without id.")
        return int(project_id)

    def update_project(self, project_id: int, **fields: Any) -> None:
        with self._calls(f"update project {project_id} ({', '.join(sorted(fields))})"):
            self._sdk.projects.update(id=project_id, **fields)

    # -- tasks ----------------------------------------------------------------------
    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> list[int]:
        """Create tasks (each may carry ``predictions``); returns their ids in order."""
        with self._calls(f"import {len(tasks)} tasks into project {project_id}"):
            resp = self._sdk.projects.import_tasks(  # plain dicts serialize as they are
                id=project_id, request=cast(Any, tasks), return_task_ids=True,
                request_options=_NO_RETRY,
            )
        ids = [int(i) for i in (getattr(resp, "task_ids", None) or [])]
        if len(ids) != len(tasks):
            raise LabelStudioError(
                f"Label Studio at {self.url} created {len(ids)} tasks for {len(tasks)} sent "
                f"to project {project_id}; push again to reconcile."
            )
        return ids

    def iter_tasks(
        self, project_id: int, *, annotations: bool = False, page_size: int = 200
    ) -> Iterator[dict[str, Any]]:
        """Every task of the project as ``{"id", "data", "annotations"}``, page by page."""
        fields = "all" if annotations else "task_only"
        with self._calls(f"list tasks of project {project_id}"):
            pager: Any = self._sdk.tasks.list(
                project=project_id, fields=fields, page_size=page_size
            )
            for t in pager:
                yield {"id": t.id, "data": dict(t.data or {}), "annotations": t.annotations or []}

    def update_task(self, task_id: int, **fields: Any) -> None:
        """Change a task's fields (``overlap``, ``is_labeled``...)."""
        with self._calls(f"update task {task_id} ({', '.join(sorted(fields))})"):
            self._sdk.tasks.update(id=str(task_id), **fields)

    def delete_task(self, task_id: int) -> bool:
        """Delete a task; False if it was already gone."""
        with self._calls(f"delete task {task_id}"):
            try:
                self._sdk.tasks.delete(id=str(task_id))
            except ApiError as exc:
                if exc.status_code == 404:
                    return False
                raise
        return True

    # -- annotations (admin side: tests, demo, repairs) ------------------------------
    def create_annotation(self, task_id: int, result: list[dict], **fields: Any) -> int:
        with self._calls(f"create an annotation on task {task_id}"):
            a = self._sdk.annotations.create(
                id=task_id, result=result, **fields, request_options=_NO_RETRY
            )
        return int(a.id)

    def update_annotation(self, annotation_id: int, **fields: Any) -> None:
        with self._calls(f"update annotation {annotation_id}"):
            self._sdk.annotations.update(id=annotation_id, **fields)

    def delete_annotation(self, annotation_id: int) -> None:
        with self._calls(f"delete annotation {annotation_id}"):
            self._sdk.annotations.delete(id=annotation_id)

    # -- storages and webhooks -------------------------------------------------------
    def local_storages(self, project_id: int) -> list[dict[str, Any]]:
        with self._calls(f"list local storages of project {project_id}"):
            found = self._sdk.import_storage.local.list(project=project_id)
        return [{"id": s.id, "path": s.path, "title": s.title} for s in found]

    def create_local_storage(self, project_id: int, path: str, *, title: str) -> int:
        """Register a folder (no sync: alearn creates its own tasks)."""
        with self._calls(f"register local storage {path} for project {project_id}"):
            s = self._sdk.import_storage.local.create(
                project=project_id, path=path, title=title, use_blob_urls=False,
                request_options=_NO_RETRY,
            )
        return int(s.id)

    def webhooks(self, project_id: int) -> list[dict[str, Any]]:
        with self._calls(f"list webhooks of project {project_id}"):
            found = self._sdk.webhooks.list(project=str(project_id))
        return [
            {"id": w.id, "url": w.url, "project": w.project, "actions": list(w.actions or []),
             "headers": w.headers or {}, "is_active": w.is_active}
            for w in found
        ]

    def create_webhook(self, project_id: int, url: str, **fields: Any) -> int:
        with self._calls(f"create a webhook for project {project_id}"):
            w = self._sdk.webhooks.create(
                url=url, project=project_id, **fields, request_options=_NO_RETRY
            )
        return int(w.id)

    def update_webhook(self, webhook_id: int, **fields: Any) -> None:
        with self._calls(f"update webhook {webhook_id}"):
            self._sdk.webhooks.update(id=webhook_id, **fields)


def connect_label_studio(settings: Settings, *, check: bool = True) -> LSClient:
    """A client for ``ALEARN_LS_URL`` / ``ALEARN_LS_TOKEN``; checks the server answers."""
    client = LSClient.from_settings(settings)
    if check:
        client.whoami()
    return client


STORAGE_TITLE = "alearn images"


def project_title(cfg: ProjectConfig) -> str:
    title = (cfg.labelstudio.title or cfg.name).strip()
    return title if len(title) >= 3 else f"alearn {title}".strip()  # LS wants >= 3 chars


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

    Sets the title, the labeling interface, ``maximum_annotations`` (the overlap) and
    whether annotators see predictions, and registers the image root as a local
    storage (unless ``labelstudio.image_url_prefix`` is set). Safe to call again.

    Raises
    ------
    ConfigError
        The class set changed since the project was created (no silent relabel).
    LabelStudioError
        The recorded project no longer exists, or the server refused a call.
    """
    fields = {
        "title": project_title(cfg),
        "label_config": label_config(cfg.classes),
        "maximum_annotations": cfg.rounds.overlap,
        "show_collab_predictions": cfg.labelstudio.show_predictions,
    }
    base = image_url_base(
        image_root, prefix=cfg.labelstudio.image_url_prefix, document_root=document_root
    )
    recorded = store.get_meta("ls_project_id")
    if recorded is not None:  # refuse a class change before touching Label Studio
        _check_classes(store, cfg, int(recorded))
    project_id = upsert_project(store, client, "ls_project_id", fields, what="project")
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
