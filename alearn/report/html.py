"""A static HTML report of a project: ``report.html`` plus its PNG plots in
``report_files/`` beside it (relative links: copy or serve the two together).

Sections: the convergence verdict, the learning curve (with a random-sampling reference
from ``scripts/bench_label_efficiency.py`` when one is given), agreement per round with
95% bootstrap intervals, the class distribution, the head's cross-validated confusion
matrix, coverage of the pool's clusters by the trusted labels (with thumbnails of the
pockets none covers yet, :mod:`alearn.report.coverage_view`), annotator quality over all
rounds against the flag rule, pending adjudications
(linked to the Label Studio adjudication project) and the rounds tables. A section
without data says so instead of drawing an empty plot. Only the store's contents go in:
no database URL, no token. The page and its plots are written 0644 and the plots' folder
0755, whatever the umask, so that the team and a web server can read them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter, defaultdict
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from alearn.atomic import write_bytes
from alearn.exceptions import AlearnError, ConfigError
from alearn.project import Project
from alearn.report import coverage_view, plots, sections
from alearn.report.markup import FILE_MODE, Figures, fmt, nodata, page, table
from alearn.rounds import metrics as round_metrics
from alearn.rounds.convergence import convergence_status

log = logging.getLogger(__name__)

Rounds = sections.Rounds


def write_report(project: Project, out: Path | str, *, reference: Path | str | None = None,
                 coverage: dict[str, Any] | None = None) -> Path:
    """Write the report to ``out`` (an .html path, or a folder for ``report.html``) and
    its plots to ``<stem>_files/``; return the HTML path.

    ``reference`` is a JSON written by ``scripts/bench_label_efficiency.py``: its random
    strategy's curve is drawn under the learning curve. ``coverage`` is
    :func:`alearn.report.coverage.coverage`'s result, computed here when not given.
    """
    out = Path(out)
    if out.is_dir():
        out = out / "report.html"
    files = out.parent / f"{out.stem}_files"
    files.mkdir(parents=True, exist_ok=True)
    files.chmod(0o755)
    for old in files.glob("*.png"):  # plots from an earlier report that may have no data now
        old.unlink()
    most_votes = project.config.rounds.vote_limits()[1]
    ref = load_reference(Path(reference), overlap=most_votes) if reference else None
    rounds = round_metrics.by_round(project.store)
    closed = [(r, m) for r, m in rounds if r.status == "closed"]
    fig = Figures(files)
    head = _head_view(project)
    body = [
        _header(project, closed, head),
        _convergence(project),
        _learning(fig, closed, ref),
        _agreement(fig, closed, project.config.agreement.kappa_threshold),
        _classes(fig, project, head),
        _confusion(fig, project, head),
        coverage_view.section(coverage if coverage is not None else _coverage(project, head),
                              project.image_root),
        sections.annotators(fig, closed, project.config.agreement.annotator_min_accuracy),
        sections.adjudication(project),
        sections.rounds_tables(rounds),
    ]
    write_bytes(out, page(f"alearn report: {project.config.name}", body).encode("utf-8"),
                mode=FILE_MODE)
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


def _head_view(project: Project) -> dict[str, Any]:
    """The pool (memory-mapped, never read whole), the trusted training set and the
    current head (the one the next round starts from), or the reason there is none."""
    from alearn.features.pool import open_pool  # the feature cache pulls in torch
    from alearn.model import training
    from alearn.model.current import current_head

    view: dict[str, Any] = {"pool": None, "head": None, "why": ""}
    try:
        pool = open_pool(project)
        ids, X = training.labeled_features(project)
    except AlearnError as exc:
        view["why"] = f"features cannot be read ({exc})"
        return view
    if not len(pool):
        view["why"] = "no embedded items (run 'alearn embed')"
        return view
    t_ids, t_X, y = training.training_set(project, ids, X)
    view.update(pool=pool, t_ids=t_ids, t_X=t_X, y=y)
    current = current_head(project) if len(set(y.tolist())) >= 2 else None
    if current is None:
        view["why"] = f"{len(y)} trusted labels of embedded items cover fewer than two classes"
        return view
    view.update(head=current.head, version=current.version)
    return view


def _predicted_unlabeled(project: Project, head: dict) -> Counter[str]:
    """Class counts the head predicts over the unlabeled pool, in one streamed pass (the
    select job's pass of the same head is reused when it was kept)."""
    from alearn.query.scoring import pool_scores

    scores = pool_scores(project, head["pool"], head["head"], "margin", head["version"])
    unlabeled = ~np.isin(scores.ids, head["t_ids"])
    classes = np.asarray(head["head"].classes_, dtype=object)
    return Counter(classes[scores.predicted[unlabeled]].tolist())


def _coverage(project: Project, head: dict) -> dict[str, Any]:
    from alearn.report.coverage import coverage

    return coverage(project, predict=None if head["head"] is None else head["head"].predict)


def _header(project: Project, closed: list[Rounds], head: dict) -> str:
    from alearn.report.status import project_status

    st = project_status(project)
    spent = closed[-1][1].labels_spent_total if closed else 0
    embedded = "-" if head["pool"] is None else len(head["pool"])
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
    grid = table(["signal", "", "value", "detail"], rows) if rows else ""
    return (f'<h2>Convergence</h2><p class="verdict {cls}">{escape(status.summary)}</p>'
            f"{rule}{grid}")


def _learning(fig: Figures, closed: list[Rounds], ref: tuple | None) -> str:
    points = [(m.labels_spent_total or 0, m.cv_accuracy, r.number)
              for r, m in closed if m.cv_accuracy is not None]
    if not points:
        return "<h2>Learning curve</h2>" + nodata(
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


def _agreement(fig: Figures, closed: list[Rounds], threshold: float) -> str:
    rows = [(r, m) for r, m in closed if m.agreement]
    if not rows:
        return "<h2>Agreement per round</h2>" + nodata("no closed round with annotations.")
    numbers = [r.number for r, _ in rows]
    kappa = [m.kappa for _, m in rows]
    fleiss = [_interval((m.agreement or {}).get("fleiss_kappa")) for _, m in rows]
    alpha = [_interval((m.agreement or {}).get("krippendorff_alpha")) for _, m in rows]
    grid = table(["round", "mean pairwise Cohen's kappa", "Fleiss' kappa", "95% CI",
                  "Krippendorff's alpha", "95% CI"],
                 [[n, k, f[0], f"{fmt(f[1])} to {fmt(f[2])}", a[0],
                   f"{fmt(a[1])} to {fmt(a[2])}"]
                  for n, k, f, a in zip(numbers, kappa, fleiss, alpha, strict=True)])
    return "<h2>Agreement per round</h2>" + fig.html(
        "agreement.png", lambda p: plots.agreement(numbers, kappa, fleiss, alpha, p,
                                                   threshold=threshold),
        "Error bars are 95% percentile bootstrap intervals over items.",
        "agreement per round with confidence intervals") + grid


def _classes(fig: Figures, project: Project, head: dict) -> str:
    classes = project.config.classes
    trusted = Counter(project.store.trusted_labels().values())
    counts = [trusted.get(c, 0) for c in classes]
    predicted, note = None, head["why"]
    if head["head"] is not None:
        pred = _predicted_unlabeled(project, head)
        if pred:
            predicted = [pred.get(c, 0) for c in classes]
            note = f"Predictions of head {head['version']} over the unlabeled pool."
        else:
            note = "Every embedded item is labeled."
    if not sum(counts) and predicted is None:
        return "<h2>Class distribution</h2>" + nodata(f"no trusted labels; {note}")
    rows = [[c, n, None if predicted is None else predicted[i]] for i, (c, n) in
            enumerate(zip(classes, counts, strict=True))]
    return "<h2>Class distribution</h2>" + fig.html(
        "class_distribution.png", lambda p: plots.class_distribution(classes, counts,
                                                                     predicted, p),
        escape(f"Share of each class. {note}"), "class distribution") + table(
        ["class", "trusted labels", "predicted (unlabeled pool)"], rows)


def _confusion(fig: Figures, project: Project, head: dict) -> str:
    title = "<h2>Model against consensus</h2>"
    if head["head"] is None:
        return title + nodata(head["why"])
    from alearn.model import training

    y = head["y"]
    counts = Counter(y.tolist())
    cv = training.cv_predictions(project, head["t_X"], y)
    if cv is None:
        return title + nodata("a class has fewer than two trusted labels to cross-validate.")
    pred, n_folds = cv
    classes = [c for c in project.config.classes if c in counts]
    matrix = _confusion_matrix(y.tolist(), pred.tolist(), classes)
    acc = float(np.trace(matrix) / matrix.sum())
    caption = (f"Cross-validated ({n_folds} folds) predictions on {len(y)} trusted "
               f"labels: accuracy {acc:.3f}.")
    return title + fig.html("confusion.png", lambda p: plots.confusion(matrix, classes, p),
                            escape(caption), "confusion matrix")


def _confusion_matrix(truth: list, pred: list, classes: list[str]) -> np.ndarray:
    """Counts of (true class, predicted class), rows and columns in ``classes`` order."""
    index = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p in zip(truth, pred, strict=True):
        if t in index and p in index:
            out[index[t], index[p]] += 1
    return out
