"""A static HTML report of a project: ``report.html`` plus its PNG plots in
``report_files/`` beside it (relative links: copy or serve the two together).

Sections: the convergence verdict, the learning curve (with a random-sampling reference
from ``scripts/bench_label_efficiency.py`` when one is given), agreement per round with
95% bootstrap intervals, the class distribution, the head's cross-validated confusion
matrix, annotator quality and the rounds table. A section without data says so instead
of drawing an empty plot. Only the store's contents go in: no database URL, no token.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sqlalchemy import select

from alearn import atomic
from alearn.exceptions import AlearnError, ConfigError
from alearn.project import Project
from alearn.report import plots
from alearn.rounds.convergence import convergence_status
from alearn.store import Round

log = logging.getLogger(__name__)

CSS = """
body{font:15px/1.45 system-ui,sans-serif;color:#222;max-width:1100px;margin:24px auto;
padding:0 16px}
h1{font-size:24px;margin-bottom:4px} h2{font-size:19px;margin-top:32px;border-bottom:1px solid #ddd}
.meta{color:#666} .nodata{color:#777;font-style:italic;background:#f6f6f6;padding:10px}
table{border-collapse:collapse;margin:8px 0;font-size:13px} th,td{border:1px solid #ccc;
padding:3px 8px;text-align:left} th{background:#f0f0f0} td.num{text-align:right}
tr.flagged td{background:#fde2e2} td.nw{white-space:nowrap} figure{margin:8px 0}
figcaption{color:#555;font-size:13px} .scroll{overflow-x:auto}
img{max-width:100%;border:1px solid #eee} .verdict{padding:10px 14px;border-left:6px solid;
font-size:16px} .yes{border-color:#2ca02c;background:#eef8ee} .no{border-color:#ff7f0e;
background:#fff5e8}
"""
SCRIPT = """window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  document.body.dataset.imagesTotal = imgs.length;
  document.body.dataset.imagesLoaded = imgs.filter(function (i) {
    return i.complete && i.naturalWidth > 0; }).length;
});"""


def write_report(project: Project, out: Path | str, *, reference: Path | str | None = None) -> Path:
    """Write the report to ``out`` (an .html path, or a folder for ``report.html``) and
    its plots to ``<stem>_files/``; return the HTML path.

    ``reference`` is a JSON written by ``scripts/bench_label_efficiency.py``: its random
    strategy's curve is drawn under the learning curve.
    """
    out = Path(out)
    if out.is_dir():
        out = out / "report.html"
    files = out.parent / f"{out.stem}_files"
    files.mkdir(parents=True, exist_ok=True)
    for old in files.glob("*.png"):  # plots from an earlier report that may have no data now
        old.unlink()
    ref = load_reference(Path(reference), overlap=project.config.rounds.overlap) if reference \
        else None
    with project.store.session() as s:
        rounds = [{"number": r.number, "status": r.status, "strategy": r.strategy,
                   "overlap": r.overlap, "batch_size": r.batch_size,
                   "model_version": r.model_version, "metrics": dict(r.metrics or {}),
                   "closed_at": r.closed_at, "error": r.error}
                  for r in s.scalars(select(Round).order_by(Round.number))]
    closed = [r for r in rounds if r["status"] == "closed"]
    fig = _Figures(files)
    head = _head_view(project)
    body = [
        _header(project, closed, head),
        _convergence(project),
        _learning(fig, closed, ref),
        _agreement(fig, closed, project.config.agreement.kappa_threshold),
        _classes(fig, project, head),
        _confusion(fig, project, head),
        _annotators(fig, closed, project.config.agreement.annotator_min_accuracy),
        _rounds_table(rounds),
    ]
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>alearn report: {escape(project.config.name)}</title><style>{CSS}</style>"
            f"<script>{SCRIPT}</script></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")
    atomic.write_text(out, page)
    log.info("report written to %s (%d plots)", out, fig.count)
    return out


def load_reference(path: Path, *, overlap: int = 1) -> tuple[list[tuple[float, float]], str]:
    """The random-sampling curve of a label-efficiency benchmark JSON.

    Returns ``[(labels, accuracy), ...]``, the mean over seeds at each labels count
    that every seed reached, with labels multiplied by ``overlap`` (the benchmark's
    oracle gives one label per item, a round asks ``overlap`` people), and a legend.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        curves = data["strategies"]["random"]["accuracy"]
        by_n: dict[float, list[float]] = defaultdict(list)
        for points in curves.values():
            for n, acc in points:
                by_n[float(n)].append(float(acc))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"--reference {path}: not a label-efficiency benchmark result ({exc!r}). Give "
            "the JSON written by scripts/bench_label_efficiency.py --out FILE.") from None
    curve = [(n * overlap, float(np.mean(a))) for n, a in sorted(by_n.items())
             if len(a) == len(curves)]
    label = (f"random sampling, {data.get('dataset', 'benchmark')} benchmark "
             f"(mean of {len(curves)} seed{'s' if len(curves) != 1 else ''}, "
             f"labels x {overlap})")
    return curve, label


class _Figures:
    """Draws the plots into the files folder and returns their HTML."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.count = folder, 0

    def html(self, name: str, draw: Callable[[Path], Any], caption: str, alt: str) -> str:
        draw(self.folder / name)
        self.count += 1
        src = escape(f"{quote(self.folder.name)}/{quote(name)}")
        return (f'<figure><img src="{src}" alt="{escape(alt)}"><figcaption>{caption}'
                "</figcaption></figure>")


def _nodata(why: str) -> str:
    return f'<p class="nodata">No data yet: {escape(why)}</p>'


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, dt.datetime):
        return v.strftime("%Y-%m-%d %H:%M")
    return str(v)


def _table(columns: list[str], rows: list[list[Any]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        cells = "".join(f"<td{_td_class(v)}>{escape(_fmt(v))}</td>" for v in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f'<div class="scroll"><table><tr>{head}</tr>{"".join(body)}</table></div>'


def _td_class(v: Any) -> str:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return ' class="num"'
    return ' class="nw"' if isinstance(v, dt.datetime) else ""


def _head_view(project: Project) -> dict[str, Any]:
    """Pool features, the trusted training set and a head fitted on it (as the next
    round would train it), or the reason there is none."""
    from alearn.model import training  # the feature cache pulls in torch: import on use

    view: dict[str, Any] = {"ids": None, "head": None, "why": ""}
    try:
        ids, X = training.pool_features(project)
    except AlearnError as exc:
        view["why"] = f"features cannot be read ({exc})"
        return view
    if not len(ids):
        view["why"] = "no embedded items (run 'alearn embed')"
        return view
    t_ids, t_X, y = training.training_set(project, ids, X)
    view.update(ids=ids, X=X, t_ids=t_ids, t_X=t_X, y=y)
    if len(set(y.tolist())) < 2:
        view["why"] = f"{len(y)} trusted labels of embedded items cover fewer than two classes"
        return view
    view["head"] = training.make_head(project).fit(t_X, y)
    view["version"] = training.model_version(project, t_ids, t_X, y)
    return view


def _header(project: Project, closed: list[dict], head: dict) -> str:
    from alearn.report.status import project_status

    st = project_status(project)
    spent = closed[-1]["metrics"].get("labels_spent_total") if closed else 0
    embedded = "-" if head["ids"] is None else len(head["ids"])
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<h1>alearn report: {escape(project.config.name)}</h1>"
            f'<p class="meta">Generated {now}. Pool {st["pool_size"]} items ({embedded} '
            f'embedded), {st["trusted_labels"]} trusted labels, {len(closed)} closed rounds, '
            f"{spent or 0} human labels spent. Classes: "
            f"{escape(', '.join(project.config.classes))}.</p>")


def _convergence(project: Project) -> str:
    status = convergence_status(project)
    cls = "yes" if status.converged else "no"
    rows = [[s.name, "met" if s.met else "not met", "-" if s.value is None else f"{s.value:.4g}",
             s.detail] for s in status.signals]
    rule = f"<p>Rule: <code>{escape(status.rule)}</code></p>" if status.rule else ""
    table = _table(["signal", "", "value", "detail"], rows) if rows else ""
    return (f'<h2>Convergence</h2><p class="verdict {cls}">{escape(status.summary)}</p>'
            f"{rule}{table}")


def _learning(fig: _Figures, closed: list[dict], ref: tuple | None) -> str:
    points = [(m.get("labels_spent_total") or 0, m["cv_accuracy"], r["number"])
              for r in closed if (m := r["metrics"]).get("cv_accuracy") is not None]
    if not points:
        return "<h2>Learning curve</h2>" + _nodata(
            "no closed round has a cross-validated accuracy (it needs two trusted labels "
            "in each of two classes, and embedded items).")
    curve, label = ref if ref else (None, "")
    caption = ("Cross-validated accuracy of the head on the trusted labels at each round's "
               "close, against the human labels spent so far.")
    if ref:
        caption += (" Dashed: test-set accuracy of random sampling in the benchmark (one "
                    "label per item, multiplied by the overlap to compare costs).")
    return "<h2>Learning curve</h2>" + fig.html(
        "learning_curve.png", lambda p: plots.learning_curve(
            points, p, reference=curve, reference_label=label), escape(caption),
        "learning curve: accuracy against labels spent")


def _interval(est: dict | None) -> tuple:
    est = est or {}
    return est.get("value"), est.get("ci_low"), est.get("ci_high")


def _agreement(fig: _Figures, closed: list[dict], threshold: float) -> str:
    rows = [r for r in closed if r["metrics"].get("agreement")]
    if not rows:
        return "<h2>Agreement per round</h2>" + _nodata("no closed round with annotations.")
    numbers = [r["number"] for r in rows]
    kappa = [r["metrics"].get("kappa") for r in rows]
    fleiss = [_interval(r["metrics"]["agreement"].get("fleiss_kappa")) for r in rows]
    alpha = [_interval(r["metrics"]["agreement"].get("krippendorff_alpha")) for r in rows]
    table = _table(["round", "mean pairwise kappa", "Fleiss' kappa", "95% CI", "alpha", "95% CI"],
                   [[n, k, f[0], f"{_fmt(f[1])} to {_fmt(f[2])}", a[0],
                     f"{_fmt(a[1])} to {_fmt(a[2])}"]
                    for n, k, f, a in zip(numbers, kappa, fleiss, alpha, strict=True)])
    return "<h2>Agreement per round</h2>" + fig.html(
        "agreement.png", lambda p: plots.agreement(numbers, kappa, fleiss, alpha, p,
                                                   threshold=threshold),
        "Error bars are 95% percentile bootstrap intervals over items.",
        "agreement per round with confidence intervals") + table


def _classes(fig: _Figures, project: Project, head: dict) -> str:
    classes = project.config.classes
    trusted = Counter(project.store.trusted_labels().values())
    counts = [trusted.get(c, 0) for c in classes]
    predicted, note = None, head["why"]
    if head["head"] is not None:
        labeled = np.isin(head["ids"], head["t_ids"])
        if (~labeled).any():
            pred = Counter(head["head"].predict(head["X"][~labeled]).tolist())
            predicted = [pred.get(c, 0) for c in classes]
            note = f"Predictions of head {head['version']} over the unlabeled pool."
        else:
            note = "Every embedded item is labeled."
    if not sum(counts) and predicted is None:
        return "<h2>Class distribution</h2>" + _nodata(f"no trusted labels; {note}")
    rows = [[c, n, None if predicted is None else predicted[i]] for i, (c, n) in
            enumerate(zip(classes, counts, strict=True))]
    return "<h2>Class distribution</h2>" + fig.html(
        "class_distribution.png", lambda p: plots.class_distribution(classes, counts,
                                                                     predicted, p),
        escape(f"Share of each class. {note}"), "class distribution") + _table(
        ["class", "trusted labels", "predicted (unlabeled pool)"], rows)


def _confusion(fig: _Figures, project: Project, head: dict) -> str:
    title = "<h2>Model against consensus</h2>"
    if head["head"] is None:
        return title + _nodata(head["why"])
    from alearn.model import training

    y = head["y"]
    counts = Counter(y.tolist())
    if min(counts.values()) < 2:
        return title + _nodata("a class has fewer than two trusted labels to cross-validate.")
    folds = StratifiedKFold(n_splits=min(training.CV_FOLDS, min(counts.values())),
                            shuffle=True, random_state=0)
    pred = cross_val_predict(training.make_head(project), head["t_X"], y, cv=folds)
    classes = [c for c in project.config.classes if c in counts]
    matrix = confusion_matrix(y, pred, labels=classes)
    acc = float(np.trace(matrix) / matrix.sum())
    caption = (f"Cross-validated ({folds.n_splits} folds) predictions on {len(y)} trusted "
               f"labels: accuracy {acc:.3f}.")
    return title + fig.html("confusion.png", lambda p: plots.confusion(matrix, classes, p),
                            escape(caption), "confusion matrix")


def _annotators(fig: _Figures, closed: list[dict], threshold: float) -> str:
    title = "<h2>Annotator quality</h2>"
    latest = next((r for r in reversed(closed) if r["metrics"].get("annotators")), None)
    if latest is None:
        return title + _nodata("no closed round with annotators.")
    people = latest["metrics"]["annotators"]
    rows = [[a["annotator"], a.get("n_items"), a.get("loo_accuracy"), a.get("peer_kappa"),
             a.get("gold_accuracy"), a.get("n_gold"), a.get("median_seconds"),
             "; ".join(a.get("reasons") or []) or ("flagged" if a.get("flagged") else "")]
            for a in people]
    table = _table(["annotator", "items", "leave-one-out accuracy", "peer kappa",
                    "gold accuracy", "gold items", "median seconds", "flagged because"],
                   rows, ["flagged" if a.get("flagged") else "" for a in people])
    shown = [a for a in people if a.get("loo_accuracy") is not None]
    intro = f"<p>Round {latest['number']}. Flagged annotators are highlighted.</p>"
    if not shown:
        return title + intro + table + _nodata("no leave-one-out accuracy to plot.")
    return title + intro + fig.html(
        "annotators.png", lambda p: plots.annotator_accuracy(
            [str(a["annotator"]) for a in shown], [a["loo_accuracy"] for a in shown],
            [bool(a.get("flagged")) for a in shown], p, threshold=threshold),
        "Accuracy against the majority of the other annotators; red: flagged.",
        "annotator accuracy") + table


def _rounds_table(rounds: list[dict]) -> str:
    if not rounds:
        return "<h2>Rounds</h2>" + _nodata("no rounds yet (alearn round start).")
    rows = []
    for r in rounds:
        m = r["metrics"]
        cons = ", ".join(f"{k} {v}" for k, v in (m.get("consensus") or {}).items())
        rows.append([r["number"], r["status"], r["strategy"], m.get("tasks", r["batch_size"]),
                     r["overlap"], m.get("labels_spent"), m.get("labels_spent_total"),
                     m.get("kappa"), m.get("alpha"), m.get("cv_accuracy"), cons or None,
                     len(m.get("adjudication_items") or []), m.get("converged"),
                     r["model_version"], r["closed_at"], r["error"]])
    columns = ["round", "status", "strategy", "items", "overlap", "labels", "labels total",
               "kappa", "alpha", "cv accuracy", "consensus", "to adjudicate", "converged",
               "model", "closed", "error"]
    if not any(r["error"] for r in rounds):
        columns, rows = columns[:-1], [row[:-1] for row in rows]
    return ("<h2>Rounds</h2><p>Highlighted: rounds whose mean pairwise kappa fell below the "
            "agreement threshold.</p>" + _table(
                columns, rows, ["flagged" if r["metrics"].get("flagged") else ""
                                for r in rounds]))
