"""The live status page on the webhook service: ``GET /status`` (the page) and
``GET /status.json`` (what its script polls), read-only, behind a read token.

The token is the project's status token (:func:`alearn.connection.status_token`),
distinct from the webhook secret and the Label Studio token; it is given as
``?token=<token>`` or ``Authorization: Bearer <token>`` and compared in constant time.
A wrong or missing token gets 401 and no figures. The token is read from its file on
each request (a rotated token takes effect at once) and never logged or put in the page.

The figures (:mod:`alearn.report.live`) are recomputed only when the store's votes,
labels or rounds changed (:func:`alearn.report.live.votes_version`), one request at a
time; the page polls every few seconds and swaps them in when their version changes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask, Request, Response, jsonify, request

from alearn.project import Project
from alearn.report import live

logger = logging.getLogger(__name__)

UNAUTHORIZED = ("a read token is needed: open the address that 'alearn webhook status-url' "
                "prints.")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


#: only the page's own style sheet and script run; it may fetch from this server only
POLICY = (f"default-src 'none'; script-src {_sha256(live.SCRIPT)}; "
          f"style-src {_sha256(live.STYLE)}; connect-src 'self'; img-src 'self' data:; "
          "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
           "X-Content-Type-Options": "nosniff", "Content-Security-Policy": POLICY}


def presented_token(req: Request) -> str:
    """The read token a request presents (the query's ``token``, else a Bearer header)."""
    given = req.args.get("token", "")
    if not given:
        auth = req.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:]
    return given.strip()


def token_ok(given: str, expected: str) -> bool:
    """Constant-time comparison; an empty token on either side never matches."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


class LiveFigures:
    """The figures and their HTML, recomputed only when their version changes."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self._lock = threading.Lock()
        self._version: str | None = None
        self._data: dict[str, Any] = {}
        self._html = ""

    def get(self) -> tuple[dict[str, Any], str]:
        with self._lock:
            version = live.votes_version(self.project)
            if version != self._version:
                self._data = live.live_status(self.project)
                self._html = live.fragment(self._data)
                self._version = version
            return self._data, self._html


def add_status_page(app: Flask, project: Project, read_token: Callable[[], str]) -> None:
    """Serve the live status page of ``project`` on ``app``; ``read_token`` returns the
    expected token (read on each request)."""
    figures = LiveFigures(project)

    def refused() -> Response | None:
        try:
            expected = read_token()
        except Exception:  # noqa: BLE001 - a broken token file refuses, it never opens
            logger.exception("status page: cannot read the read token")
            expected = ""
        if token_ok(presented_token(request), expected):
            return None
        logger.warning("status page refused: bad or missing read token from %s",
                       request.remote_addr)
        resp = Response(UNAUTHORIZED + "\n", status=401, mimetype="text/plain")
        resp.headers["WWW-Authenticate"] = 'Bearer realm="alearn status"'
        return resp

    def current() -> tuple[dict[str, Any], str] | Response:
        try:
            return figures.get()
        except Exception:  # one line to the reader; the cause goes to the log
            logger.exception("status page: the figures could not be computed")
            return Response("the figures cannot be read now (see the receiver's log); "
                            "retrying is safe.\n", status=503, mimetype="text/plain")

    @app.get("/status")
    def status_html() -> Any:
        if (no := refused()) is not None:
            return no
        got = current()
        if isinstance(got, Response):
            return got
        data, _ = got
        return Response(live.page(data), mimetype="text/html")

    @app.get("/status.json")
    def status_json() -> Any:
        if (no := refused()) is not None:
            return no
        got = current()
        if isinstance(got, Response):
            return got
        data, html = got
        return jsonify(version=data["version"], figures=data, html=html)

    @app.after_request
    def headers(resp: Response) -> Response:
        if request.path in ("/status", "/status.json"):
            resp.headers.update(HEADERS)
        return resp
