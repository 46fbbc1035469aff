"""The Label Studio client: the only module that touches the Label Studio SDK.

:class:`LSClient` is a thin wrapper around the SDK (plain dicts in and out). Every call
goes through one error boundary, which turns connection problems and API errors into
:class:`~alearn.exceptions.LabelStudioError` with a message that names the URL and says
what to do. SDK errors carry the response headers (session cookies included), so they
never go into messages or logs as they are.

Setting the alearn project up in Label Studio is :mod:`labelstudio.projects`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.core.request_options import RequestOptions

from alearn.config import Settings
from alearn.exceptions import ConfigError, LabelStudioError

#: POSTs that create things are not retried by the SDK: a retried import could duplicate
#: tasks. Callers reconcile instead (a push that may follow an interrupted one lists the
#: round's tasks before creating).
_NO_RETRY: RequestOptions = {"max_retries": 0}
#: What :meth:`LSClient.get_project` reads of a project.
_PROJECT_FIELDS = ("id", "title", "label_config", "maximum_annotations",
                   "show_collab_predictions", "sampling", "model_version",
                   "expert_instruction", "show_instruction")


def _iso(when: Any) -> str | None:
    """Label Studio's time as ISO 8601 in UTC (the SDK gives a datetime or a string)."""
    if when is None:
        return None
    if isinstance(when, dt.datetime):
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return str(when)


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
                "no Label Studio API token. Run 'alearn ls up' (a local server) or 'alearn "
                "ls connect URL' (yours) in the project, or set ALEARN_LS_TOKEN or "
                "ALEARN_LS_TOKEN_FILE."
            )
        self.url = url.rstrip("/")
        # our own connection pool, so close() (or ``with``) frees its sockets
        self._http = httpx.Client(timeout=timeout, follow_redirects=True)
        self._sdk = LabelStudio(base_url=self.url, api_key=token, timeout=timeout,
                                httpx_client=self._http)

    def close(self) -> None:
        """Close the client's connections (it cannot be used afterwards)."""
        self._http.close()

    def __enter__(self) -> LSClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
                    f"Label Studio at {self.url} refused the API token ({what}). Give an "
                    "admin's token ('alearn ls connect URL', or ALEARN_LS_TOKEN); a legacy "
                    "token needs an organization that allows legacy tokens."
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
        return {field: getattr(p, field) for field in _PROJECT_FIELDS}

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
        self, project_id: int, *, annotations: bool = False, page_size: int = 200,
        updated_after: str | None = None, data_equal: Mapping[str, int] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The project's tasks as ``{"id", "data", "annotations", "updated_at",
        "prediction_versions"}`` (annotations and versions listed only with ``annotations``),
        page by page: all, or those updated after ``updated_after`` (an ISO time of Label
        Studio's clock) whose data fields have the integer values in ``data_equal``. Label
        Studio filters them before listing, which is what costs."""
        fields = "all" if annotations else "task_only"
        filters: list[dict[str, Any]] = []
        if updated_after is not None:
            filters.append({"filter": "filter:tasks:updated_at", "operator": "greater",
                            "type": "Datetime", "value": updated_after})
        for field, value in (data_equal or {}).items():
            filters.append({"filter": f"filter:tasks:data.{field}", "operator": "equal",
                            "type": "Number", "value": int(value)})
        query = (json.dumps({"filters": {"conjunction": "and", "items": filters}})
                 if filters else None)
        with self._calls(f"list tasks of project {project_id}"):
            first: Any = self._sdk.tasks.list(
                project=project_id, fields=fields, page_size=page_size, query=query
            )
            listed, total = 0, getattr(first.response, "total", None)  # all pages' tasks
            for page in first.iter_pages():  # the next page is asked for on resuming
                for t in page.items or []:
                    yield {"id": t.id, "data": dict(t.data or {}),
                           "annotations": t.annotations or [], "updated_at": _iso(t.updated_at),
                           "prediction_versions": sorted({str(getattr(p, "model_version", None))
                                                          for p in t.predictions or []})}
                listed += len(page.items or [])
                if isinstance(total, int) and listed >= total:
                    return  # all listed: no request for a page past the end

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

    # -- predictions ----------------------------------------------------------------
    def create_prediction(self, task_id: int, *, result: list[dict[str, Any]], score: float,
                          model_version: str) -> int:
        with self._calls(f"create a prediction on task {task_id}"):
            made = self._sdk.predictions.create(task=task_id, result=result, score=score,
                                                model_version=model_version,
                                                request_options=_NO_RETRY)
        return int(made.id or 0)

    # -- annotations (admin side: tests, demo, repairs) ------------------------------
    def create_annotation(self, task_id: int, result: list[dict], **fields: Any) -> int:
        with self._calls(f"create an annotation on task {task_id}"):
            a = self._sdk.annotations.create(id=task_id, result=result, **fields,
                                             request_options=_NO_RETRY)
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
            s = self._sdk.import_storage.local.create(project=project_id, path=path,
                                                      title=title, use_blob_urls=False,
                                                      request_options=_NO_RETRY)
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
            w = self._sdk.webhooks.create(url=url, project=project_id, **fields,
                                          request_options=_NO_RETRY)
        return int(w.id)

    def update_webhook(self, webhook_id: int, **fields: Any) -> None:
        with self._calls(f"update webhook {webhook_id}"):
            self._sdk.webhooks.update(id=webhook_id, **fields)


def connect_label_studio(settings: Settings, *, check: bool = True) -> LSClient:
    """A client for ``ALEARN_LS_URL`` / ``ALEARN_LS_TOKEN``; checks the server answers.
    Close it when done (``with connect_label_studio(settings) as client:``)."""
    client = LSClient.from_settings(settings)
    if check:
        try:
            client.whoami()
        except BaseException:
            client.close()
            raise
    return client

