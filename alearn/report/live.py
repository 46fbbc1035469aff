"""The live status page's figures: the running round's progress and agreement so far,
with the project's headline, as JSON and as an HTML page (``/status`` of the webhook
service, :mod:`labelstudio.status_page`).

Everything comes from the store, through the same functions as ``alearn status``
(:func:`alearn.report.status.project_status`) and ``alearn agreement``
(:func:`alearn.report.agreement_view.agreement_summary`). :func:`votes_version` is a
cheap fingerprint of what the figures depend on, so a server recomputes them only when
a vote is mirrored, a label is trusted or a round moves. Every string from the store or
Label Studio (project, class, annotator names, errors) is escaped here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from html import escape
from typing import Any

from sqlalchemy import func, select

from alearn.project import Project
from alearn.report.markup import CSS, fmt, nodata, table
from alearn.store import Annotation, Label, Round

#: how often the page asks whether the figures changed (milliseconds)
POLL_MS = 3000


def votes_version(project: Project) -> str:
    """A fingerprint of the store's votes, trusted labels and rounds: it changes when a
    vote is mirrored, edited or removed, a label is trusted, or a round moves."""
    with project.store.session() as s:
        votes = s.execute(select(func.count(), func.max(Annotation.id),
                                 func.max(Annotation.updated_at),
                                 func.count(Annotation.label))).one()
        labels = s.execute(select(func.count(), func.max(Label.id))).one()
        rounds = s.execute(select(Round.id, Round.status, Round.closed_at, Round.error)
                           .order_by(Round.id)).all()
        aside = s.scalar(select(func.count()).where(Annotation.status != "ok"))
    text = repr((tuple(votes), tuple(labels), [tuple(r) for r in rounds], aside))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def live_status(project: Project) -> dict[str, Any]:
    """The figures of the running round (else the latest), and the project's headline."""
    from alearn.report.agreement_view import agreement_summary
    from alearn.report.status import project_status

    st = project_status(project)
    current = st["current_round"]
    number = current["number"] if current else (st["rounds"][-1]["number"]
                                                if st["rounds"] else None)
    entry = next((r for r in st["rounds"] if r["number"] == number), None)
    out: dict[str, Any] = {
        "version": votes_version(project),
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "project": st["project"], "classes": st["classes"], "pool_size": st["pool_size"],
        "trusted_labels": st["trusted_labels"], "trusted_by_class": st["trusted_by_class"],
        "targets": project.config.class_targets(),
        "convergence": st["convergence"]["summary"],
        "adjudication_pending": st["adjudication"].get("pending", 0),
        "attention": st["attention"],
        "running": current is not None,
        "round": None,
    }
    if number is None:
        return out
    from alearn.rounds.lifecycle import round_progress

    rid = current["round_id"] if current else _round_id(project, number)
    progress = current or round_progress(project.store, rid).to_dict()
    summary = agreement_summary(project, round_number=number)
    pairs = [p["value"] for p in (summary.get("report") or {}).get("pairwise_kappa", {})
             .get("pairs", []) if p.get("value") is not None and math.isfinite(p["value"])]
    out["round"] = {
        "number": number, "status": progress["status"], "strategy": entry and entry["strategy"],
        "overlap": entry and entry["overlap"], "tasks": progress["tasks"],
        "tasks_done": progress["tasks_done"], "annotations": progress["annotations"],
        "set_aside": progress["set_aside"], "by_annotator": progress["by_annotator"],
        "error": entry and entry["error"],
        "mean_pairwise_kappa": sum(pairs) / len(pairs) if pairs else None,
        "figures": summary["figures"], "annotators": summary["annotators"],
        "annotator_accuracy": summary.get("annotator_accuracy"),
        "n_items": summary["n_items"], "n_ratings": summary["n_ratings"],
    }
    return out


def _round_id(project: Project, number: int) -> int:
    with project.store.session() as s:
        rid = s.scalar(select(Round.id).where(Round.number == number))
    assert rid is not None
    return int(rid)


def fragment(data: dict[str, Any]) -> str:
    """The page's body (everything the poll replaces): escaped HTML."""
    e = escape
    head = (f"<h1>alearn live status: {e(str(data['project']))}</h1>"
            f'<p class="meta">Figures as of {e(data["generated"])} (they change as votes '
            f"are mirrored). Pool {data['pool_size']} items, {data['trusted_labels']} trusted "
            f"labels. Convergence: {e(str(data['convergence']))}. "
            f"{data['adjudication_pending']} adjudications pending.</p>")
    parts = [head]
    if data["attention"]:
        parts.append("<h2>Needs attention</h2><ul>" + "".join(
            f"<li>{e(str(a))}</li>" for a in data["attention"]) + "</ul>")
    rnd = data["round"]
    if rnd is None:
        parts.append("<h2>Round</h2>" + nodata("no round yet (alearn round start)."))
    else:
        parts.append(_round_html(rnd, data["running"]))
    targets = data.get("targets") or {}
    rows = [[c, n, targets.get(c)] for c, n in data["trusted_by_class"].items()]
    parts.append("<h2>Trusted labels by class</h2>" + table(
        ["class", "trusted labels", "target"] if targets else ["class", "trusted labels"],
        rows if targets else [r[:2] for r in rows]))
    return "\n".join(parts)


def _round_html(rnd: dict[str, Any], running: bool) -> str:
    e = escape
    done, tasks = rnd["tasks_done"], rnd["tasks"]
    pct = 100.0 * done / tasks if tasks else 0.0
    what = "Running round" if running else "Latest round (none running)"
    out = (f'<h2>{what} {rnd["number"]}: <span class="status">{e(str(rnd["status"]))}'
           f"</span></h2>"
           f'<p><span id="tasks-done">{done}</span> of {tasks} tasks have their votes; '
           f'<span id="annotations">{rnd["annotations"]}</span> votes mirrored '
           f"({rnd['set_aside']} set aside). Strategy {e(str(rnd['strategy']))}, overlap "
           f"{e(fmt(rnd['overlap']))}.</p>"
           f'<progress max="{max(tasks, 1)}" value="{done}">{pct:.0f}%</progress>')
    if rnd.get("error"):
        out += f'<p class="error">{e(str(rnd["error"]))}</p>'
    kappa = rnd["mean_pairwise_kappa"]
    out += (f"<h3>Agreement so far</h3><p>Mean pairwise Cohen's kappa: "
            f'<b id="kappa">{e(fmt(kappa))}</b> over {rnd["n_items"]} items, '
            f"{rnd['n_ratings']} votes.</p>")
    out += table(["figure", "value", "95% CI", "items", "note"],
                 [[f["figure"], f["value"], f["95% CI"], f["items"], f["note"]]
                  for f in rnd["figures"]])
    votes = [[name, n] for name, n in rnd["by_annotator"].items()]
    if votes:
        out += "<h3>Votes per annotator</h3>" + table(["annotator", "votes"], votes)
    if rnd["annotators"]:
        cols = ["annotator", "items", "accuracy (consensus)", "accuracy vs others",
                "peer kappa", "gold accuracy", "median s", "flag"]
        names = {"peer kappa": "mean Cohen's kappa with peers", "median s": "median seconds",
                 "flag": "flagged because"}
        out += "<h3>Annotators so far</h3>" + table(
            [names.get(c, c) for c in cols], [[a[c] for c in cols] for a in rnd["annotators"]])
        if rnd.get("annotator_accuracy"):
            out += f"<p>Accuracy (consensus): {e(rnd['annotator_accuracy'])}.</p>"
    return out


SCRIPT = """(function () {
  var token = new URLSearchParams(window.location.search).get("token") || "";
  var main = document.getElementById("live");
  function poll() {
    fetch("status.json", {headers: {"Authorization": "Bearer " + token},
                          cache: "no-store", credentials: "omit"})
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (d) {
        if (d.version !== main.dataset.version) {
          main.innerHTML = d.html; main.dataset.version = d.version; }
        document.getElementById("poll").textContent = "";
      })
      .catch(function (err) {
        document.getElementById("poll").textContent = "Refresh failed (" + err.message
          + "); retrying.";
      });
  }
  setInterval(poll, POLL_MS);
})();""".replace("POLL_MS", str(POLL_MS))
EXTRA_CSS = ("progress{width:100%;max-width:600px;height:16px}.error{color:#b00}"
             "#poll{color:#b00;font-size:13px}")
#: the page's one style sheet and one script, exactly as inlined (a server's
#: Content-Security-Policy allows these two by their hashes and nothing else)
STYLE = CSS + EXTRA_CSS


def page(data: dict[str, Any]) -> str:
    """The whole page: the fragment, and a script that swaps in a new one when the figures'
    version changes. No token in it: the script reads it from the address."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="referrer" content="no-referrer">'
            f"<title>alearn live status: {escape(str(data['project']))}</title>"
            f"<style>{STYLE}</style></head>\n<body>"
            f'<main id="live" data-version="{escape(data["version"])}">{fragment(data)}</main>'
            f'<p id="poll"></p><script>{SCRIPT}</script></body></html>\n')
