"""The report's sections about people and rounds: annotator quality over all rounds,
pending adjudications (with a link to the Label Studio project that holds them) and the
rounds tables. :mod:`alearn.report.html` puts them in the page."""

from __future__ import annotations

from collections import defaultdict
from html import escape
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from alearn.project import Project
from alearn.report import plots
from alearn.report.markup import Figures, nodata, table
from alearn.rounds import metrics as round_metrics
from alearn.rounds.adjudication import adjudication_status
from alearn.rounds.close import MIN_ITEMS, wilson_upper
from alearn.rounds.label_history import review_status
from alearn.store import Round

#: a round and its metrics
Rounds = tuple[Round, round_metrics.RoundMetrics]
#: the setting behind the annotator flag (alearn.rounds.close)
FLAG_SETTING = "agreement.annotator_min_accuracy"


def annotators(fig: Figures, closed: list[Rounds], min_accuracy: float) -> str:
    """Every annotator's estimated accuracy per round against the flag rule of
    :mod:`alearn.rounds.close`, and a table of each one's latest round."""
    title = "<h2>Annotator quality</h2>"
    latest: dict[str, tuple[int, dict[str, Any]]] = {}
    flagged_in: dict[str, list[int]] = defaultdict(list)
    series: dict[str, list[tuple[int, float, float, bool]]] = defaultdict(list)
    for r, m in closed:
        for a in m.annotators or []:
            name = str(a["annotator"])
            latest[name] = (r.number, a)
            if a.get("flagged"):
                flagged_in[name].append(r.number)
            acc = a.get("model_accuracy")
            if acc is not None:
                n = int(a.get("n_items") or 0)
                series[name].append((r.number, acc, wilson_upper(acc, n), bool(a.get("flagged"))))
    if not latest:
        return title + nodata("no closed round with annotators.")
    rows, classes = [], []
    for name, (number, a) in latest.items():
        acc, n = a.get("model_accuracy"), int(a.get("n_items") or 0)
        rows.append([name, number, n, acc, None if acc is None else wilson_upper(acc, n),
                     a.get("gold_accuracy"), a.get("n_gold"), a.get("loo_accuracy"),
                     a.get("peer_kappa"), a.get("median_seconds"),
                     "; ".join(a.get("reasons") or []) or ("flagged" if a.get("flagged") else ""),
                     ", ".join(str(x) for x in flagged_in[name]) or None])
        classes.append("flagged" if a.get("flagged") else "")
    grid = table(["annotator", "latest round", "items", "estimated accuracy (consensus)",
                  "90% upper bound", "gold accuracy", "gold items", "leave-one-out accuracy",
                  "mean Cohen's kappa with peers", "median seconds", "flagged because",
                  "flagged in rounds"], rows, classes)
    rule = (f"<p>An annotator is flagged in a round when the 90% upper bound of their "
            f"estimated accuracy (consensus), or of their accuracy on gold items, is below "
            f"<code>{FLAG_SETTING}</code> = {min_accuracy:g}, on at least {MIN_ITEMS} items "
            "(a round's flags are set when it closes, with the setting as it was then). The "
            "table holds each annotator's latest round; flagged rows are highlighted.</p>")
    if not series:
        return title + rule + nodata("no round has an estimated accuracy to plot.") + grid
    caption = (f"Estimated accuracy (consensus) per round; each bar reaches the 90% upper "
               f"bound. Dotted line: {FLAG_SETTING}. A red cross marks a flag (the bar ends "
               "below the line, or the gold-item rule; see the table's reasons).")
    return title + rule + fig.html(
        "annotators.png", lambda p: plots.annotator_rounds(
            list(series.items()), p, threshold=min_accuracy, setting=FLAG_SETTING),
        escape(caption), "annotator accuracy per round") + grid


def ls_project_url(base: str, project_id: Any) -> str | None:
    """``<base>/projects/<id>/`` with no user, password, query or fragment; None when
    ``project_id`` is not a project id."""
    try:
        pid = int(project_id)
    except (TypeError, ValueError):
        return None
    if pid <= 0:
        return None
    parts = urlsplit(base.strip())
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    path = parts.path.rstrip("/") + f"/projects/{pid}/"
    return urlunsplit((parts.scheme, netloc, quote(path, safe="/%"), "", ""))


def adjudication(project: Project) -> str:
    """Items waiting for a reviewer's decision, and where they wait."""
    title = "<h2>Adjudication</h2>"
    adj, lr = adjudication_status(project), review_status(project.store)
    if lr["sent"]:
        title += (f"<p>Label review: {lr['sent']} trusted labels likely wrong sent to a "
                  f"reviewer, {lr['decided']} decided, <b>{lr['corrected']} corrected by "
                  "review</b>.</p>")
    if not adj["items"] and not adj["waiting_for_votes"]:
        return title + ("" if lr["sent"] else nodata("no item has been sent to adjudication."))
    text = (f"<p>Mode <code>{escape(str(adj['mode']))}</code>: {adj['items']} items sent to "
            f"adjudication, {adj['decided']} decided, <b>{adj['pending']} pending</b>, "
            f"{len(adj['set_aside'])} decisions set aside")
    if adj["waiting_for_votes"]:
        text += f", {adj['waiting_for_votes']} items waiting for more votes"
    text += ".</p>"
    if not adj["pending"]:
        return title + text
    url = ls_project_url(project.settings.ls_url, adj["ls_project_id"])
    if url:
        text += (f'<p>The pending items wait in the Label Studio adjudication project: '
                 f'<a href="{escape(url)}">{escape(url)}</a> (reviewers decide them there).</p>')
    elif adj["mode"] == "review":
        text += ("<p>No Label Studio adjudication project yet: it is set up when a round "
                 "closes with a reviewer on the team (alearn ls users add NAME --role "
                 "reviewer).</p>")
    return title + text


def rounds_tables(rounds: list[Rounds]) -> str:
    """Two tables, so that each fits the page: what each round was, and its figures."""
    if not rounds:
        return "<h2>Rounds</h2>" + nodata("no rounds yet (alearn round start).")
    marks = ["flagged" if m.flagged else "" for _, m in rounds]
    runs = [[r.number, r.status, r.strategy, r.batch_size if m.tasks is None else m.tasks,
             r.overlap, m.labels_spent, m.labels_spent_total, r.model_version, r.closed_at,
             r.error] for r, m in rounds]
    columns = ["round", "status", "strategy", "items", "overlap", "labels", "labels total",
               "model", "closed", "error"]
    if not any(r.error for r, _ in rounds):
        columns, runs = columns[:-1], [row[:-1] for row in runs]
    figures = [[r.number, m.kappa, m.alpha, m.cv_accuracy,
                ", ".join(f"{k} {v}" for k, v in m.consensus.items()) or None,
                len(m.adjudication_items), m.converged] for r, m in rounds]
    return ("<h2>Rounds</h2><p>Highlighted: rounds whose mean pairwise Cohen's kappa fell "
            "below the agreement threshold (agreement.kappa_threshold).</p>"
            + table(columns, runs, marks) + "<h3>Figures per round</h3>"
            + table(["round", "mean pairwise Cohen's kappa", "Krippendorff's alpha",
                     "cv accuracy", "consensus", "to adjudicate", "converged"], figures, marks))
