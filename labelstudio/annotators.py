"""Annotator accounts, and annotators (real or simulated) labeling as themselves.

Accounts are made through Label Studio's web sign-up form, like a person would: users
created that way can log in, while users made through the admin API could not (checked
with Label Studio 1.23.2). Each account's personal API token then lets a program label
*as that user* through the label stream (``/api/projects/{id}/next``), which is how
the demo and the tests simulate several annotators: Label Studio decides who gets which
task and enforces the overlap, exactly as for people.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from html import unescape
from typing import Any

import httpx

from alearn.exceptions import ConfigError, LabelStudioError
from labelstudio.label_config import choice_result

logger = logging.getLogger(__name__)

EMAIL_DOMAIN = "alearn.local"
_ERRORS = re.compile(r'class="[^"]*errors?[^"]*"[^>]*>(.*?)</(?:ul|div|p)>', re.I | re.S)
_TAGS = re.compile(r"<[^>]+>")


@dataclass(frozen=True)
class Annotator:
    """A Label Studio user who can log in and label. ``token`` is their API token."""

    email: str
    user_id: int
    token: str = field(repr=False)


def annotator_email(name: str) -> str:
    """``name`` if it is an email, else ``<name>@alearn.local``."""
    name = name.strip()
    if "@" in name:
        return name
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.")
    if not slug:
        raise ConfigError(f"annotator name {name!r}: use letters or digits, or an email.")
    return f"{slug}@{EMAIL_DOMAIN}"


def new_password() -> str:
    return secrets.token_urlsafe(12)


def _form_errors(html: str) -> str:
    found = []
    for block in _ERRORS.findall(html):
        found += [unescape(t).strip() for t in _TAGS.split(block)]
    return "; ".join(dict.fromkeys(f for f in found if f)) or "the form was refused"


def _post_form(http: httpx.Client, path: str, data: dict[str, str]) -> httpx.Response:
    http.get(path)
    csrf = http.cookies.get("csrftoken")
    if not csrf:
        raise LabelStudioError(f"{http.base_url}{path} set no CSRF cookie; is this Label Studio?")
    return http.post(
        path,
        data={**data, "csrfmiddlewaretoken": csrf},
        headers={"Referer": f"{http.base_url}{path}"},
    )


def _fetch_identity(http: httpx.Client, email: str) -> Annotator:
    me = http.get("/api/current-user/whoami")
    tok = http.get("/api/current-user/token")
    if me.status_code != 200 or tok.status_code != 200 or "token" not in tok.json():
        raise LabelStudioError(
            f"{http.base_url}: signed in as {email} but could not read the personal API "
            f"token (HTTP {tok.status_code}). The organization must allow legacy API "
            "tokens (label-studio start --enable-legacy-api-token)."
        )
    return Annotator(email=email, user_id=int(me.json()["id"]), token=str(tok.json()["token"]))


def signup_annotator(
    base_url: str, email: str, password: str, *, invite_token: str | None = None,
    timeout: float = 30.0,
) -> Annotator:
    """Create an annotator account through the sign-up form (or log in if it exists).

    ``invite_token`` is the organization's invite token, needed when the server
    disables sign-up without an invite link.
    """
    if len(password) < 8:
        raise ConfigError("annotator passwords need at least 8 characters.")
    path = "/user/signup/" + (f"?token={invite_token}" if invite_token else "")
    try:
        with httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout) as http:
            r = _post_form(http, path, {"email": email, "password": password})
            if r.status_code != 302:  # the form came back: exists already, or refused
                why = _form_errors(r.text)
                r = _post_form(http, "/user/login/", {"email": email, "password": password})
                if r.status_code != 302:
                    raise LabelStudioError(
                        f"{base_url}: could not sign up {email} ({why}) nor log in with the "
                        "given password. Choose another email, or give that account's "
                        "password."
                    )
                logger.info("annotator exists, logged in email=%s", email)
            else:
                logger.info("annotator signed up email=%s", email)
            return _fetch_identity(http, email)
    except httpx.TransportError as exc:
        raise LabelStudioError(
            f"cannot reach Label Studio at {base_url} ({type(exc).__name__}). Is it "
            "running? Start a local one with 'alearn ls up'."
        ) from None


def invite_annotator(
    base_url: str, admin_token: str, email: str, password: str, *, timeout: float = 30.0,
) -> Annotator:
    """Sign a person up through a fresh invite link, then rotate the link.

    Label Studio runs with ``LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK`` (alearn's local
    launcher and docker-compose set it), so the sign-up form refuses anyone without the
    organization's invite token. The admin token reads it (``GET /api/invite``), the
    person signs up with it, and ``POST /api/invite/reset-token`` makes a new one at once,
    so the link that was used opens nothing. An existing account just logs in.
    """
    headers = {"Authorization": f"Token {admin_token}"}
    try:
        with httpx.Client(base_url=base_url.rstrip("/"), headers=headers,
                          timeout=timeout) as http:
            r = http.get("/api/invite")
            _raise_for(r, base_url, "read the organization's invite link")
            token = str(r.json().get("token") or "")
            if not token:
                raise LabelStudioError(f"{base_url}: the invite link carries no token.")
            try:
                return signup_annotator(base_url, email, password, invite_token=token,
                                        timeout=timeout)
            finally:
                r = http.post("/api/invite/reset-token")
                _raise_for(r, base_url, "rotate the invite link")
    except httpx.TransportError as exc:
        raise LabelStudioError(
            f"cannot reach Label Studio at {base_url} ({type(exc).__name__}). Is it "
            "running? Start a local one with 'alearn ls up'."
        ) from None


def label_stream(
    base_url: str,
    token: str,
    ls_project_id: int,
    choose: Callable[[dict[str, Any]], str | None],
    *,
    lead_time: float | None = None,
    max_tasks: int | None = None,
    timeout: float = 30.0,
) -> int:
    """Label tasks from the label stream as the token's user until it runs dry.

    Parameters
    ----------
    choose
        Receives the task's data (``item_id``, ``image``...) and returns a class name,
        or None to skip the task.
    lead_time
        Seconds to report per annotation; by default the time ``choose`` took.
    max_tasks
        Stop after this many tasks.

    Returns the number of tasks labeled or skipped.
    """
    done = 0
    seen: set[int] = set()
    headers = {"Authorization": f"Token {token}"}
    try:
        with httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout) as http:
            while max_tasks is None or done < max_tasks:
                r = http.get(f"/api/projects/{ls_project_id}/next")
                if r.status_code == 404:
                    break
                _raise_for(r, base_url, f"get the next task of project {ls_project_id}")
                task = r.json()
                if task["id"] in seen:  # served again: nothing new for this user
                    logger.warning("label stream served task %s twice; stopping", task["id"])
                    break
                seen.add(task["id"])
                t0 = time.perf_counter()
                label = choose(dict(task.get("data") or {}))
                spent = lead_time if lead_time is not None else time.perf_counter() - t0
                body: dict[str, Any] = {"project": ls_project_id, "lead_time": spent}
                if label is None:
                    body.update(result=[], was_cancelled=True)
                else:
                    body["result"] = choice_result(label)
                r = http.post(f"/api/tasks/{task['id']}/annotations/", json=body)
                _raise_for(r, base_url, f"annotate task {task['id']}")
                done += 1
    except httpx.TransportError as exc:
        raise LabelStudioError(
            f"cannot reach Label Studio at {base_url} ({type(exc).__name__}) while labeling."
        ) from None
    return done


def _raise_for(r: httpx.Response, base_url: str, what: str) -> None:
    if r.status_code >= 400:
        raise LabelStudioError(
            f"Label Studio at {base_url} answered {r.status_code} to '{what}': {r.text[:300]}"
        )
