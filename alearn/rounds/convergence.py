"""Knowing when to stop, from the store: the convergence check at each round close.

:func:`assess_round` reads what the signals of :mod:`alearn.stats.stopping` need (the
earlier closed rounds' metrics, the embedded pool, the current head's predictions on a
fixed stop set) and applies ``convergence.rule``. It keeps the head's stop-set
predictions in the round's metrics, for the next round to compare;
:func:`convergence_status` reads the latest verdict back.

A close costs O(batch), not O(pool): the stop set is chosen once per project (kept in
the store's meta), the head predicts only its items, the number of embedded items is
the size of the pool the close opened anyway (:func:`alearn.features.pool.open_pool`:
its item map is a saved file), and the pool that remains is that number less the
labeled and selected items found in the pool's sorted ids. The feature cache's key
index (a sort of every cached hash) is never built by a close.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from alearn.exceptions import AlearnError
from alearn.rounds import metrics as round_metrics
from alearn.rounds.lifecycle import CLOSED, get_round
from alearn.stats.stopping import (
    ConvergenceStatus,
    budget,
    decide,
    decode_predictions,
    encode_predictions,
    human_ceiling,
    not_assessed,
    plateau,
    pool_exhausted,
    stabilizing,
    stop_kappa,
    targets_reached,
)
from alearn.store import Item, Selection

if TYPE_CHECKING:
    from alearn.features.pool import Pool
    from alearn.model.current import TrainedHead
    from alearn.project import Project

log = logging.getLogger(__name__)

STOP_SET_KEY = "stop_set"
#: Stop-set candidates drawn per look-up, at least.
CHUNK = 500


def assess_round(project: Project, round_id: int, metrics: round_metrics.RoundMetrics | None,
                 head: TrainedHead | None) -> dict[str, Any]:
    """Compute the convergence signals of a closing round from the store.

    ``metrics`` are the round's metrics computed so far by the close
    (``labels_spent_total``, ``cv_accuracy``, ``annotators``); None: its stored ones.
    ``head`` is the current head (:func:`alearn.model.current.current_head`, None while
    there is none); its predictions on the stop set are compared with the previous
    round's. Earlier closed rounds supply the history. Returns a JSON-able dict: the
    :class:`ConvergenceStatus` fields, plus ``stop_kappa``, ``stop_predictions`` (the
    head's class indices into the project's classes over the stop set, -1 where an item
    has no features, as one comma-separated string: see :func:`decode_predictions`),
    ``model_version`` of that head, ``n_embedded``, ``pool_remaining``
    and ``notes``; when a class has a target (``[classes.<name>] target``), also the
    ``targets`` signal and ``targets``: ``{class: {"trusted": n, "target": t}}``.
    Missing features or too few labels make the signals that need them unmet, with the
    reason; they do not raise.
    """
    store, cfg = project.store, project.config.convergence
    rnd = get_round(store, round_id)
    metrics = round_metrics.of(rnd) if metrics is None else metrics
    earlier = [m for r, m in round_metrics.by_round(store, status=CLOSED)
               if r.number < rnd.number]
    out: dict[str, Any] = {"stop_kappa": None, "stop_predictions": None,
                           "model_version": None, "n_embedded": None,
                           "pool_remaining": None, "notes": []}
    pool = None
    try:
        pool = _pool(project)  # opened once; the embedded count is its size
    except AlearnError as exc:
        out["notes"].append(f"no features: {exc}")
    if pool is not None:
        out["n_embedded"], out["pool_remaining"] = len(pool), _pool_remaining(project, pool)
    if pool is not None and len(pool):
        stop = _stop_set(project, pool, round_number=rnd.number)
        preds, version, note = _stop_predictions(project, head, stop, pool)
        out.update(stop_predictions=encode_predictions(preds), model_version=version)
        if note:
            out["notes"].append(note)
        prev = earlier[-1].stop_predictions if earlier else None
        out["stop_kappa"] = stop_kappa(decode_predictions(prev), preds)
    kappas = [m.stop_kappa for m in earlier]
    curve = [(m.labels_spent_total or 0, m.cv_accuracy) for m in earlier]
    spent = metrics.labels_spent_total or 0
    stable = stabilizing([*kappas, out["stop_kappa"]], threshold=cfg.stability_threshold,
                         k=cfg.stability_rounds)
    if out["stop_kappa"] is None and out["notes"]:
        stable = replace(stable, detail=f"{stable.detail}; {'; '.join(out['notes'])}")
    signals = [
        stable,
        plateau([*curve, (spent, metrics.cv_accuracy)],
                threshold=cfg.plateau_gain, k=cfg.plateau_rounds),
        human_ceiling(metrics.cv_accuracy, ceiling_accuracies(metrics.annotators)),
        budget(int(spent), project.config.rounds.label_budget),
        pool_exhausted(out["pool_remaining"], embedded=out["n_embedded"],
                       why="; ".join(out["notes"])),
    ]
    targets = project.config.class_targets()
    if targets:  # without targets, the signals are as they were
        trusted = Counter(store.trusted_labels().values())
        signals.append(targets_reached(trusted, targets))
        out["targets"] = {c: {"trusted": int(trusted.get(c, 0)), "target": t}
                          for c, t in targets.items()}
    status = decide(signals, rule=cfg.rule)
    log.info("round_event=convergence round=%s converged=%s reasons=%s stop_kappa=%s",
             round_id, status.converged, ",".join(status.reasons) or "-", out["stop_kappa"])
    return {**status.to_dict(), **out}


def ceiling_accuracies(annotators: Iterable[dict[str, Any]]) -> list[float | None]:
    """Each annotator's accuracy for the human ceiling: the round's estimated accuracy
    (consensus), else (a round closed before it was kept) the leave-one-out accuracy.

    Under adaptive votes most items have one vote, so leave-one-out accuracy rests on
    the items that needed a second: the disputed ones, where everybody errs more. It
    read 0.66 for annotators right 0.7 to 0.9 of the time, so the head "matched the
    people" rounds too early. The consensus estimate reads every vote of the round.
    """
    out: list[float | None] = []
    for a in annotators:
        est = round_metrics.finite_number(a.get("model_accuracy"))
        out.append(est if est is not None else round_metrics.finite_number(a.get("loo_accuracy")))
    return out


def convergence_status(project: Project) -> ConvergenceStatus:
    """The verdict stored by the latest closed round ("not assessed" before any)."""
    closed = round_metrics.by_round(project.store, status=CLOSED)
    if not closed:
        return not_assessed("no round closed yet")
    rnd, metrics = closed[-1]
    if not metrics.convergence:
        return not_assessed(f"round {rnd.number} closed without a convergence check")
    return ConvergenceStatus.from_dict(metrics.convergence)


def _pool(project: Project) -> Pool:
    """The project's pool (:func:`alearn.features.pool.open_pool`): the store's items
    mapped onto the feature cache, opened once per process and cache version, and
    already open in a close (its head read the labeled items' vectors from it)."""
    from alearn.features.pool import open_pool  # torch: import on use

    return open_pool(project)


def embedded_among(pool: Pool, item_ids: Iterable[int]) -> set[int]:
    """Those of ``item_ids`` that have cached features, looked up in the pool's sorted
    ids (O(k log n); the cache's own key index is never built)."""
    import numpy as np  # on use: 'alearn status' reads the stored verdict only

    wanted = np.unique(np.fromiter((int(i) for i in item_ids), dtype=np.int64))
    if not len(wanted):
        return set()
    return {int(i) for i in wanted[pool.positions(wanted) >= 0].tolist()}


def _pool_remaining(project: Project, pool: Pool) -> int:
    """Embedded items with no trusted label that no round ever selected: the pool's
    size less the embedded items among the labeled and selected ones."""
    with project.store.session() as s:
        selected = set(s.scalars(select(Selection.item_id).distinct()))
    taken = selected | set(project.store.trusted_labels())
    return max(0, len(pool) - len(embedded_among(pool, taken)))


def _stop_set(project: Project, pool: Pool, *, round_number: int) -> list[int]:
    """The stop set's item ids: chosen once per project (seeded, uniformly among the
    embedded unlabeled items) and kept in the store's meta. Choosing takes the item ids
    from the open pool when every item is embedded (else from the store, once) and
    looks up features only for the candidates it draws."""
    stored = project.store.get_meta(STOP_SET_KEY)
    if stored and stored.get("items"):
        return [int(i) for i in stored["items"]]
    import numpy as np

    cfg = project.config.convergence
    labels = project.store.trusted_labels()
    with project.store.session() as s:  # every item embedded: the pool's ids are the items'
        ids = pool.ids if s.scalar(select(func.count()).select_from(Item)) == len(pool) \
            else np.fromiter(s.scalars(select(Item.id).order_by(Item.id)), dtype=np.int64)
    rng = np.random.default_rng(cfg.stop_set_seed)
    order = ids[rng.permutation(len(ids))]
    picked: list[int] = []
    step = max(2 * cfg.stop_set_size, CHUNK)
    for k in range(0, len(order), step):
        if len(picked) >= cfg.stop_set_size:
            break
        draw = [int(i) for i in order[k:k + step].tolist() if int(i) not in labels]
        have = embedded_among(pool, draw)
        picked += [i for i in draw if i in have]
    items = sorted(picked[:cfg.stop_set_size])
    n = len(items)
    if n == 0:
        return []
    project.store.set_meta(STOP_SET_KEY, {"items": items, "seed": cfg.stop_set_seed,
                                          "chosen_at_round": round_number})
    log.info("stop set chosen: %d items, seed %d, round %d", n, cfg.stop_set_seed,
             round_number)
    return items


def _stop_predictions(project: Project, head: TrainedHead | None, stop: list[int], pool: Pool
                      ) -> tuple[list[int] | None, str | None, str]:
    """(class indices over the stop set, head version, note) from the current head, on
    the stop set's vectors read from ``pool``; (None, None, why) when there is no head or
    no stop set."""
    if not stop:
        return None, None, "the stop set is empty (no unlabeled embedded item)"
    if head is None:
        return None, None, "no head yet: trusted labels cover fewer than two classes"
    import numpy as np

    ids = np.asarray(stop, dtype=np.int64)
    have = pool.positions(ids) >= 0
    index = {c: k for k, c in enumerate(project.config.classes)}
    predicted = iter(head.head.predict(pool.vectors(ids[have])).tolist() if have.any() else [])
    return [index[str(next(predicted))] if h else -1 for h in have.tolist()], head.version, ""
