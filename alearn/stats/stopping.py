"""Knowing when to stop, on plain numbers: the convergence signals and the rule over them.

Signals (each a :class:`Signal`, thresholds in ``[convergence]`` of alearn.toml):

``stabilizing``
    Cohen's kappa between successive heads' predictions on a fixed, unlabeled stop set
    stays >= ``stability_threshold`` for ``stability_rounds`` rounds (Bloodgood and
    Vijay-Shanker, 2009, "stabilizing predictions").
``plateau``
    The gain in cross-validated accuracy per 100 labels spent, between successive
    closed rounds, stays below ``plateau_gain`` for ``plateau_rounds`` rounds.
``human_ceiling``
    The head's cross-validated accuracy against consensus reaches the annotators' mean
    accuracy as the consensus estimates it (``rounds.convergence.ceiling_accuracies``).
``budget``
    Labels spent reach ``rounds.label_budget`` (when it is > 0).
``pool_exhausted``
    No embedded item is left that is unlabeled and was never selected.
``targets``
    Every class with a ``[classes.<name>] target`` has that many trusted labels (present
    only when a class has a target, so without targets nothing changes).

The project has converged when ``convergence.rule`` holds, by default
``budget or targets or pool_exhausted or (stabilizing and (plateau or human_ceiling))``:
stable predictions alone may come from a head that stopped learning for want of
informative items, so they must be backed by a flat learning curve or by the head
matching people. Targets are the dataset size the team wrote down: like the budget,
reaching them stops; a rule without ``targets`` shows the signal for information.

Arrays and numbers only; :mod:`alearn.rounds.convergence` reads them from the store.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from alearn.exceptions import ConfigError

SIGNAL_NAMES = ("stabilizing", "plateau", "human_ceiling", "budget", "pool_exhausted", "targets")
DEFAULT_RULE = "budget or targets or pool_exhausted or (stabilizing and (plateau or human_ceiling))"


@dataclass(frozen=True)
class Signal:
    """One convergence signal: whether it holds, its headline figure and a sentence."""

    name: str
    met: bool
    value: float | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ConvergenceStatus:
    """The verdict: converged or not, why, and every signal behind it."""

    converged: bool
    reasons: list[str] = field(default_factory=list)
    signals: list[Signal] = field(default_factory=list)
    summary: str = ""
    rule: str = DEFAULT_RULE

    def to_dict(self) -> dict[str, Any]:
        return {"converged": self.converged, "reasons": list(self.reasons),
                "signals": [s.to_dict() for s in self.signals], "summary": self.summary,
                "rule": self.rule}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConvergenceStatus:
        return cls(converged=bool(data.get("converged", False)),
                   reasons=list(data.get("reasons", [])),
                   signals=[Signal(**s) for s in data.get("signals", [])],
                   summary=str(data.get("summary", "")), rule=str(data.get("rule", "")))


def not_assessed(why: str) -> ConvergenceStatus:
    """A status for a project (or round) whose convergence could not be assessed."""
    return ConvergenceStatus(converged=False, summary=f"not assessed: {why}")


def _trailing(values: Sequence[float | None], ok: Callable[[float], bool]) -> int:
    """How many values at the end are not None and pass ``ok``."""
    run = 0
    for v in reversed(values):
        if v is None or not ok(v):
            break
        run += 1
    return run


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer (rounds in a row), got {k!r}")


def stabilizing(kappas: Sequence[float | None], *, threshold: float = 0.99,
                k: int = 2) -> Signal:
    """Met when the last ``k`` stop-set kappas are all >= ``threshold``.

    ``kappas`` holds one value per closed round, oldest first: Cohen's kappa between
    that round's head and the previous round's on the stop set (None where there was
    no pair of heads to compare).
    """
    _check_k(k)
    if not -1 <= threshold <= 1:
        raise ValueError(f"threshold is a kappa in [-1, 1], got {threshold!r}")
    last = kappas[-1] if len(kappas) else None
    if last is None:
        return Signal("stabilizing", False, None,
                      "no stop-set Cohen's kappa yet (needs heads from two successive "
                      "rounds)")
    run = _trailing(kappas, lambda v: v >= threshold)
    op = ">=" if last >= threshold else "<"
    return Signal("stabilizing", run >= k, float(last),
                  f"stop-set Cohen's kappa {last:.3f} {op} {threshold:g}, {min(run, k)} of "
                  f"{k} rounds")


def accuracy_gains(curve: Sequence[tuple[float, float | None]]) -> list[float]:
    """Accuracy gain per 100 labels between successive points of a learning curve.

    Points without an accuracy are skipped; a point that spent no new label replaces
    the one before it (its gain is undefined).
    """
    gains: list[float] = []
    prev: tuple[float, float] | None = None
    for labels, acc in curve:
        if acc is None:
            continue
        if prev is not None and labels > prev[0]:
            gains.append((acc - prev[1]) / (labels - prev[0]) * 100.0)
        prev = (labels, acc)
    return gains


def plateau(curve: Sequence[tuple[float, float | None]], *, threshold: float = 0.005,
            k: int = 2) -> Signal:
    """Met when the last ``k`` gains per 100 labels are all below ``threshold``.

    ``curve`` is ``[(labels spent in total, cross-validated accuracy or None), ...]``,
    one point per closed round, oldest first.
    """
    _check_k(k)
    gains = accuracy_gains(curve)
    if not gains:
        return Signal("plateau", False, None,
                      "no accuracy gain yet (needs accuracies from two rounds)")
    run = _trailing(gains, lambda g: g < threshold)
    last = gains[-1]
    op = "<" if last < threshold else ">="
    return Signal("plateau", run >= k, float(last),
                  f"accuracy gain {last:+.4f} per 100 labels {op} {threshold:g}, "
                  f"{min(run, k)} of {k} rounds")


def human_ceiling(model_acc: float | None, annotator_accs: Sequence[float | None]) -> Signal:
    """Met when the head's accuracy against consensus reaches the annotators' mean."""
    accs = [float(a) for a in annotator_accs if a is not None]
    if model_acc is None:
        return Signal("human_ceiling", False, None, "no cross-validated head accuracy yet")
    if not accs:
        return Signal("human_ceiling", False, float(model_acc),
                      f"head {model_acc:.3f}, but no annotator accuracy this round")
    mean = sum(accs) / len(accs)
    op = ">=" if model_acc >= mean else "<"
    return Signal("human_ceiling", model_acc >= mean, float(model_acc),
                  f"head accuracy {model_acc:.3f} {op} annotators' mean {mean:.3f} "
                  f"({len(accs)} annotators)")


def budget(spent: int, label_budget: int) -> Signal:
    """Met when ``spent`` labels reach a positive ``label_budget`` (0 means no limit)."""
    if label_budget <= 0:
        return Signal("budget", False, float(spent), f"{spent} labels spent, no budget set")
    word = "spent" if spent >= label_budget else "left"
    return Signal("budget", spent >= label_budget, float(spent),
                  f"{spent} of {label_budget} labels spent, budget {word}")


def pool_exhausted(remaining: int | None, *, embedded: int | None,
                   why: str = "") -> Signal:
    """Met when embedded items exist and none is unlabeled and never selected."""
    if remaining is None or embedded is None:
        return Signal("pool_exhausted", False, None, f"not assessed: {why or 'no features'}")
    if embedded == 0:
        return Signal("pool_exhausted", False, 0.0, "no embedded items yet")
    return Signal("pool_exhausted", remaining == 0, float(remaining),
                  f"{remaining} of {embedded} embedded items never selected nor labeled")


def targets_reached(trusted: Mapping[str, int], targets: Mapping[str, int]) -> Signal:
    """Met when every class with a positive target has that many ``trusted`` labels
    (counts per class). Value: the share of the targets reached, none past its target."""
    if not (wanted := {c: int(t) for c, t in targets.items() if t > 0}):
        return Signal("targets", False, None, "no class has a target")
    have = {c: int(trusted.get(c, 0)) for c in wanted}
    short = [c for c in wanted if have[c] < wanted[c]]
    share = sum(min(have[c], t) for c, t in wanted.items()) / sum(wanted.values())
    counts = ", ".join(f"{c} {have[c]} of {t}" for c, t in wanted.items())
    head = (f"{len(short)} of {len(wanted)} classes short of their target" if short
            else f"every class reached its target ({len(wanted)} classes)")
    return Signal("targets", not short, float(share), f"{head}: trusted labels {counts}")


# ---------------------------------------------------------------------------- the rule
_Node = Callable[[Mapping[str, bool]], tuple[bool, list[str]]]


def parse_rule(rule: str) -> _Node:
    """Compile a rule (``and``, ``or``, ``not``, parentheses over signal names).

    The compiled rule maps ``{signal name: met}`` to ``(holds, reasons)``, where
    ``reasons`` names the met signals that make it hold.
    """
    try:
        tree = ast.parse(rule.strip(), mode="eval").body
    except SyntaxError:
        raise ConfigError(f"convergence.rule {rule!r} is not a valid expression. Combine "
                          f"{', '.join(SIGNAL_NAMES)} with and, or, not and "
                          "parentheses.") from None
    return _compile(tree, rule)


def _compile(node: ast.AST, rule: str) -> _Node:
    if isinstance(node, ast.Name):
        if node.id not in SIGNAL_NAMES:
            raise ConfigError(f"convergence.rule {rule!r}: unknown signal {node.id!r}. "
                              f"Valid signals are: {', '.join(SIGNAL_NAMES)}.")
        name = node.id
        return lambda met: (met.get(name, False), [name] if met.get(name, False) else [])
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = _compile(node.operand, rule)
        return lambda met: (not inner(met)[0], [])
    if isinstance(node, ast.BoolOp):
        parts = [_compile(v, rule) for v in node.values]
        is_and = isinstance(node.op, ast.And)

        def run(met: Mapping[str, bool]) -> tuple[bool, list[str]]:
            results = [p(met) for p in parts]
            holds = all(r[0] for r in results) if is_and else any(r[0] for r in results)
            reasons = [n for ok, names in results if ok for n in names] if holds else []
            return holds, list(dict.fromkeys(reasons))

        return run
    raise ConfigError(f"convergence.rule {rule!r}: only signal names, and, or, not and "
                      f"parentheses are allowed (found {type(node).__name__}).")


def decide(signals: Sequence[Signal], *, rule: str = DEFAULT_RULE) -> ConvergenceStatus:
    """Apply ``rule`` to the signals. A signal the rule names but ``signals`` lacks is
    taken as not met."""
    holds, reasons = parse_rule(rule)({s.name: s.met for s in signals})
    by_name = {s.name: s for s in signals}
    if holds:
        summary = "converged because " + " and ".join(
            f"{n} ({by_name[n].detail})" for n in reasons)
    else:
        summary = "not converged: " + "; ".join(f"{s.name} ({s.detail})" for s in signals)
    return ConvergenceStatus(converged=holds, reasons=reasons, signals=list(signals),
                             summary=summary, rule=rule)


# ------------------------------------------------------------- stop-set predictions
def stop_kappa(previous: Sequence[int] | None, current: Sequence[int] | None) -> float | None:
    """Cohen's kappa between two heads' stop-set predictions (class indices, -1 = none).

    None when either is missing, they cover different stop sets, or share no item.
    """
    if previous is None or current is None or len(previous) != len(current):
        return None
    import numpy as np  # on use: 'alearn status' reads verdicts, never computes one

    a, b = np.asarray(previous), np.asarray(current)
    both = (a >= 0) & (b >= 0)
    if not both.any():
        return None
    a, b = a[both], b[both]
    if np.array_equal(a, b):  # also covers one shared class, where kappa is 0/0
        return 1.0
    from sklearn import metrics as skmetrics  # on use: 'alearn status' never loads it

    return float(skmetrics.cohen_kappa_score(a, b))


def encode_predictions(preds: Sequence[int] | None) -> str | None:
    """Class indices as one compact string, ``"0,2,-1,1"`` (short in JSON and logs)."""
    return None if preds is None else ",".join(str(int(p)) for p in preds)


def decode_predictions(text: str | Sequence[int] | None) -> list[int] | None:
    """The inverse of :func:`encode_predictions` (a list passes through)."""
    if text is None or not isinstance(text, str):
        return None if text is None else [int(p) for p in text]
    return [int(p) for p in text.split(",")] if text else []
