"""The report's plots: each draws one PNG with matplotlib's Agg canvas (no pyplot, no
display). Inputs are plain lists; :mod:`alearn.report.html` gathers them and decides when
there is nothing to draw."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

BLUE, ORANGE, GREEN, RED, GREY = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#7f7f7f"
Interval = tuple[float | None, float | None, float | None]  # value, ci_low, ci_high
#: an annotator and their (round, value, upper bound, flagged) points
AnnotatorSeries = tuple[str, Sequence[tuple[int, float, float, bool]]]


def _figure(width: float = 7.0, height: float = 3.6) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.3)
    return fig, ax


def _step(n: int, most: int = 12) -> int:
    """Label every step-th of n points so that at most about ``most`` get a label."""
    return max(1, -(-n // most))


def _legend(ax: Axes) -> None:
    """A legend above the plot, where it cannot hide data."""
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.01), ncol=2, fontsize=8,
              frameon=False)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def learning_curve(points: Sequence[tuple[float, float, int]], path: Path, *,
                   reference: Sequence[tuple[float, float]] | None = None,
                   reference_label: str = "random sampling (reference)") -> Path:
    """Accuracy against labels spent, one point per closed round (labelled R<number>).

    ``points`` are ``(labels spent, accuracy, round number)``; ``reference`` is another
    curve ``(labels, accuracy)`` drawn dashed.
    """
    fig, ax = _figure()
    if reference:
        rx, ry = zip(*reference, strict=True)
        ax.plot(rx, ry, "--", color=GREY, label=reference_label)
    x, y, numbers = zip(*points, strict=True)
    ax.plot(x, y, "o-", color=BLUE, label="this project (cross-validated)")
    step = _step(len(points))
    for i, (xi, yi, n) in enumerate(points):
        if i % step and i != len(points) - 1:
            continue
        ax.annotate(f"R{n}", (xi, yi), textcoords="offset points", xytext=(0, 7),
                    ha="center",
                    fontsize=8, color=BLUE)
    ax.margins(x=0.08, y=0.15)
    ax.set_xlabel("human labels spent")
    ax.set_ylabel("accuracy")
    _legend(ax)
    return _save(fig, path)


def agreement(rounds: Sequence[int], kappa: Sequence[float | None],
              fleiss: Sequence[Interval], alpha: Sequence[Interval], path: Path, *,
              threshold: float | None = None) -> Path:
    """Agreement per round: mean pairwise Cohen's kappa, and Fleiss' kappa and
    Krippendorff's alpha with their 95% bootstrap intervals as error bars."""
    fig, ax = _figure()
    r = np.asarray(rounds, dtype=float)
    for offset, series, colour, label in ((-0.08, fleiss, ORANGE, "Fleiss' kappa (95% CI)"),
                                          (0.08, alpha, GREEN, "Krippendorff's alpha (95% CI)")):
        keep = [i for i, (v, _, _) in enumerate(series) if v is not None]
        if not keep:
            continue
        v = np.array([series[i][0] for i in keep], dtype=float)
        lo = np.array([series[i][1] if series[i][1] is not None else series[i][0]
                       for i in keep], dtype=float)
        hi = np.array([series[i][2] if series[i][2] is not None else series[i][0]
                       for i in keep], dtype=float)
        ax.errorbar(r[keep] + offset, v, yerr=np.vstack([v - lo, hi - v]), fmt="o", capsize=4,
                    color=colour, label=label)
    keep = [i for i, k in enumerate(kappa) if k is not None]
    if keep:
        ax.plot(r[keep], np.array([kappa[i] for i in keep], dtype=float), "D", color=BLUE,
                label="mean pairwise Cohen's kappa")
    if threshold is not None:
        ax.axhline(threshold, linestyle=":", color=RED, label=f"flag below {threshold:g}")
    step = _step(len(rounds))
    ax.set_xticks(r[::step], [f"R{int(n)}" for n in rounds][::step])
    ax.set_xlim(r.min() - 0.6, r.max() + 0.6)
    ax.set_xlabel("round")
    ax.set_ylabel("agreement")
    _legend(ax)
    return _save(fig, path)


def class_distribution(classes: Sequence[str], trusted: Sequence[int],
                       predicted: Sequence[int] | None, path: Path) -> Path:
    """Share of each class among trusted labels and, if given, among the head's
    predictions over the unlabeled pool."""
    fig, ax = _figure(7.0, 3.2)
    x = np.arange(len(classes))
    width = 0.4 if predicted is not None else 0.6
    t = np.asarray(trusted, dtype=float)
    ax.bar(x - (width / 2 if predicted is not None else 0), t / max(t.sum(), 1), width,
           color=BLUE, label=f"trusted labels (n={int(t.sum())})")
    if predicted is not None:
        p = np.asarray(predicted, dtype=float)
        ax.bar(x + width / 2, p / max(p.sum(), 1), width, color=ORANGE,
               label=f"predicted, unlabeled pool (n={int(p.sum())})")
    ax.set_xticks(x, list(classes), rotation=30 if len(classes) > 6 else 0, ha="right"
                  if len(classes) > 6 else "center")
    ax.set_ylabel("share")
    _legend(ax)
    return _save(fig, path)


def confusion(matrix: np.ndarray, classes: Sequence[str], path: Path) -> Path:
    """Confusion matrix: rows are consensus labels, columns the head's predictions."""
    k = len(classes)
    side = min(2.5 + 0.45 * k, 6.5)
    fig, ax = _figure(side + 1.2, side)
    ax.grid(False)
    m = np.asarray(matrix)
    image = ax.imshow(m, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    top = m.max() if m.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=8,
                    color="white" if m[i, j] > top / 2 else "black")
    ax.set_xticks(range(k), list(classes), rotation=45 if k > 4 else 0,
                  ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), list(classes))
    ax.set_xlabel("predicted (cross-validated)")
    ax.set_ylabel("consensus label")
    return _save(fig, path)


def annotator_rounds(series: Sequence[AnnotatorSeries], path: Path, *, threshold: float,
                     setting: str) -> Path:
    """Each annotator's estimated accuracy in every round, with a bar up to its 90% upper
    bound, and the flag threshold as a line: a point is red when that round flagged the
    annotator. ``series``: ``(name, [(round, value, upper bound, flagged), ...])``."""
    fig, ax = _figure(8.0, 4.0)
    rounds = sorted({p[0] for _, points in series for p in points})
    spread = min(0.5, 0.12 * len(series))
    colours = [f"C{j % 10}" for j in range(len(series))]
    for j, (name, points) in enumerate(series):
        shift = (j / max(len(series) - 1, 1) - 0.5) * spread if len(series) > 1 else 0.0
        x = np.array([p[0] for p in points], dtype=float) + shift
        v = np.array([p[1] for p in points], dtype=float)
        up = np.array([p[2] for p in points], dtype=float)
        ax.errorbar(x, v, yerr=np.vstack([np.zeros_like(v), np.maximum(up - v, 0)]), fmt="o-",
                    color=colours[j], capsize=3, markersize=5, linewidth=1.2,
                    label=name if len(name) <= 30 else f"{name[:16]}…{name[-12:]}")
        red = [i for i, p in enumerate(points) if p[3]]
        if red:
            ax.plot(x[red], v[red], "X", color=RED, markersize=11, markeredgecolor="black",
                    zorder=5)
    if any(p[3] for _, points in series for p in points):
        ax.plot([], [], "X", color=RED, markersize=9, markeredgecolor="black", label="flagged")
    ax.axhline(threshold, linestyle=":", color=RED, linewidth=1.5,
               label=f"{setting} = {threshold:g}")
    r = np.asarray(rounds, dtype=float)
    step = _step(len(rounds))
    ax.set_xticks(r[::step], [f"R{int(n)}" for n in rounds][::step])
    ax.set_xlim(r.min() - 0.6, r.max() + 0.6)
    ax.set_ylim(min(0.0, threshold - 0.1), 1.05)
    ax.set_xlabel("round")
    ax.set_ylabel("estimated accuracy (consensus)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)
