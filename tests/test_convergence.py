"""Convergence: each signal on constructed inputs, the rule, and the check at round close."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from sqlalchemy import select

from alearn.config import ConvergenceConfig, EmbedConfig, ProjectConfig, Settings
from alearn.exceptions import ConfigError
from alearn.features.backbone import cache_key_for
from alearn.features.cache import FeatureCache
from alearn.model import training
from alearn.project import Project
from alearn.report.status import project_status
from alearn.rounds.close import close_round
from alearn.rounds.convergence import (
    STOP_SET_KEY,
    assess_round,
    ceiling_accuracies,
    convergence_status,
)
from alearn.rounds.lifecycle import PUSHED, create_round, transition
from alearn.rounds.metrics import RoundMetrics
from alearn.stats.stopping import (
    DEFAULT_RULE,
    SIGNAL_NAMES,
    Signal,
    accuracy_gains,
    budget,
    decide,
    decode_predictions,
    encode_predictions,
    human_ceiling,
    parse_rule,
    plateau,
    pool_exhausted,
    stabilizing,
    stop_kappa,
    targets_reached,
)
from alearn.store import Annotation, Item, Round, Selection

CLASSES = ["cat", "dog", "bird"]
TINY = EmbedConfig(backbone="test_efficientnet", weights="none", image_size=32)


# ------------------------------------------------------------------ plateau
def test_plateau_on_a_flattening_curve() -> None:
    curve = [(60, 0.50), (120, 0.60), (180, 0.62), (240, 0.622), (300, 0.623)]
    # gains per 100 labels, by hand: 0.1/60*100, 0.02/60*100, 0.002/60*100, 0.001/60*100
    assert accuracy_gains(curve) == pytest.approx([1 / 6, 1 / 30, 1 / 300, 1 / 600])
    sig = plateau(curve, threshold=0.005, k=2)
    assert sig.met and sig.value == pytest.approx(1 / 600) and "2 of 2 rounds" in sig.detail
    assert not plateau(curve, threshold=0.005, k=3).met  # only two flat steps so far


def test_plateau_not_met_while_still_rising() -> None:
    rising = [(60, 0.50), (120, 0.58), (180, 0.65), (240, 0.70)]
    sig = plateau(rising, threshold=0.005, k=2)
    assert not sig.met and sig.value == pytest.approx(0.05 / 60 * 100)
    # a flat step followed by a rise resets the run
    assert not plateau([(60, 0.5), (120, 0.5), (180, 0.5), (240, 0.6)], k=2).met
    # a falling curve is not rising either
    assert plateau([(60, 0.6), (120, 0.59), (180, 0.58)], k=2).met


def test_plateau_skips_missing_accuracy_and_rounds_without_labels() -> None:
    curve = [(30, None), (60, 0.5), (60, 0.55), (120, 0.6), (180, None)]
    assert accuracy_gains(curve) == pytest.approx([0.05 / 60 * 100])
    assert not plateau([(60, None)], k=1).met
    assert plateau([], k=1).value is None


# ------------------------------------------------------------------ stabilizing
def test_stabilizing_needs_k_rounds_in_a_row() -> None:
    assert stabilizing([None, 0.995, 0.999], threshold=0.99, k=2).met
    sig = stabilizing([0.995, 0.98, 0.999], threshold=0.99, k=2)
    assert not sig.met and "1 of 2" in sig.detail and sig.value == 0.999
    assert not stabilizing([0.999, None], k=1).met
    assert not stabilizing([], k=1).met
    assert stabilizing([0.5, 0.99], threshold=0.99, k=1).met  # boundary: >=
    with pytest.raises(ValueError, match="threshold"):
        stabilizing([0.9], threshold=1.5)
    with pytest.raises(ValueError, match="k must be"):
        stabilizing([0.9], k=0)


def test_stop_kappa_matches_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    b[:120] = a[:120]
    a[5] = -1  # no features for that item in one round: left out
    keep = np.ones(200, bool)
    keep[5] = False
    assert stop_kappa(a.tolist(), b.tolist()) == pytest.approx(
        cohen_kappa_score(a[keep], b[keep]))
    assert stop_kappa([1, 1, 1], [1, 1, 1]) == 1.0  # one shared class: identical heads
    assert stop_kappa([0, 1], [0, 1, 2]) is None and stop_kappa(None, [0]) is None
    assert stop_kappa([-1, -1], [0, 1]) is None


def test_predictions_round_trip_as_a_compact_string() -> None:
    preds = [0, 2, -1, 11, 1]
    assert encode_predictions(preds) == "0,2,-1,11,1"
    assert decode_predictions(encode_predictions(preds)) == preds
    assert decode_predictions(encode_predictions([])) == []
    assert encode_predictions(None) is None and decode_predictions(None) is None
    assert decode_predictions([1, 2]) == [1, 2]


# ------------------------------------------------------------- ceiling, budget, pool
def test_ceiling_accuracies_prefer_the_consensus_estimate() -> None:
    # leave-one-out accuracy under adaptive votes rests on the disputed items: 0.6 here
    # for annotators the consensus puts at 0.9; a round closed before the estimate was
    # kept has only leave-one-out
    annotators = [{"model_accuracy": 0.9, "loo_accuracy": 0.6},
                  {"model_accuracy": 0.92, "loo_accuracy": None},
                  {"model_accuracy": None, "loo_accuracy": 0.7},
                  {"model_accuracy": None, "loo_accuracy": None}, {},
                  {"model_accuracy": float("nan"), "loo_accuracy": "x"}]
    assert ceiling_accuracies(annotators) == [0.9, 0.92, 0.7, None, None, None]
    assert not human_ceiling(0.8, ceiling_accuracies(annotators)).met  # mean 0.84
    assert human_ceiling(0.8, [a.get("loo_accuracy") for a in annotators[:5]]).met  # 0.65


def test_human_ceiling() -> None:
    assert human_ceiling(0.90, [0.85, 0.95, None]).met  # mean 0.90, >=
    sig = human_ceiling(0.89, [0.85, 0.95])
    assert not sig.met and "0.900" in sig.detail
    assert not human_ceiling(None, [0.9]).met
    assert not human_ceiling(0.99, []).met


def test_budget_and_pool() -> None:
    assert not budget(5000, 0).met  # 0 = no limit
    assert budget(100, 100).met and not budget(99, 100).met
    assert pool_exhausted(0, embedded=10).met
    assert not pool_exhausted(3, embedded=10).met
    assert not pool_exhausted(0, embedded=0).met
    sig = pool_exhausted(None, embedded=None, why="cache unreadable")
    assert not sig.met and "cache unreadable" in sig.detail


def test_targets_reached_counts_only_classes_with_a_target() -> None:
    sig = targets_reached({"cat": 200, "dog": 40}, {"cat": 200, "dog": 50, "bird": 0})
    assert not sig.met and sig.value == pytest.approx(240 / 250)
    assert sig.detail == ("1 of 2 classes short of their target: trusted labels cat 200 of "
                          "200, dog 40 of 50")
    sig = targets_reached({"cat": 230, "dog": 50, "bird": 1}, {"cat": 200, "dog": 50})
    assert sig.met and sig.value == 1.0  # no class counts past its target
    assert sig.detail.startswith("every class reached its target (2 classes)")
    assert not targets_reached({}, {"cat": 1}).met  # a class with no label at all
    none = targets_reached({"cat": 5}, {"cat": 0})
    assert not none.met and none.value is None and none.detail == "no class has a target"


# ------------------------------------------------------------------ decide
def _signals(**met: bool) -> list[Signal]:
    return [Signal(n, met.get(n, False), None, f"{n} detail") for n in SIGNAL_NAMES]


@pytest.mark.parametrize("combo", list(itertools.product([False, True], repeat=6)))
def test_default_rule_truth_table(combo: tuple[bool, ...]) -> None:
    m = dict(zip(SIGNAL_NAMES, combo, strict=True))
    expected = m["budget"] or m["targets"] or m["pool_exhausted"] or (
        m["stabilizing"] and (m["plateau"] or m["human_ceiling"]))
    status = decide(_signals(**m))
    assert status.converged is expected
    assert status.summary.startswith("converged because" if expected else "not converged:")
    if expected:  # every reason is a met signal, and the reasons alone satisfy the rule
        assert all(m[r] for r in status.reasons)
        assert parse_rule(DEFAULT_RULE)({r: True for r in status.reasons})[0]


def test_decide_summaries_and_custom_rules() -> None:
    status = decide(_signals(stabilizing=True, plateau=True, budget=False))
    assert status.reasons == ["stabilizing", "plateau"]
    assert status.summary == ("converged because stabilizing (stabilizing detail) and "
                              "plateau (plateau detail)")
    status = decide(_signals(stabilizing=True))
    assert status.summary.startswith("not converged: stabilizing (stabilizing detail); "
                                     "plateau (plateau detail); human_ceiling")
    assert decide(_signals(budget=True), rule="budget and not pool_exhausted").converged
    assert not decide(_signals(budget=True, pool_exhausted=True),
                      rule="budget and not pool_exhausted").converged
    assert not decide([], rule="budget").converged  # absent signal = not met
    for bad, msg in [("budget or foo", "unknown signal 'foo'"), ("budget or", "not a valid"),
                     ("__import__('os')", "only signal names"), ("budget + 1", "only signal")]:
        with pytest.raises(ConfigError, match=msg):
            decide(_signals(), rule=bad)


# ------------------------------------------------------------------ at round close
def sha(i: int) -> str:
    return hashlib.sha256(f"item-{i}".encode()).hexdigest()


def make_project(root: Path, *, n: int = 60, dim: int = 8, seed: int = 0,
                 **convergence: object) -> tuple[Project, list[int], list[str]]:
    """A project of ``n`` items in three well-separated feature blobs, all embedded.

    Returns the project, the item ids and each item's true class.
    """
    (root / "images").mkdir(parents=True, exist_ok=True)
    project = Project.init(root / "p", classes=CLASSES, images=root / "images",
                           settings=Settings(),
                           convergence=ConvergenceConfig(**convergence).model_dump())
    project.config.embed = TINY
    project.save_config()
    rng = np.random.default_rng(seed)
    truth = [CLASSES[i % 3] for i in range(n)]
    centres = rng.normal(0, 4, (3, dim))
    X = np.stack([centres[CLASSES.index(t)] + rng.normal(0, 1, dim) for t in truth])
    with project.store.session() as s:
        items = [Item(sha256=sha(i), path=f"{i}.png", width=8, height=8) for i in range(n)]
        s.add_all(items)
        s.flush()
        ids = [it.id for it in items]
    key = cache_key_for(project.config.embed, root=project.root)
    FeatureCache(project.features_dir, key).put([sha(i) for i in range(n)], X)
    return project, ids, truth


def run_round(project: Project, picks: list[int], truth: dict[int, str], *,
              wrong: int = 0, annotation_base: int = 0) -> RoundMetrics:
    """Select ``picks``, let three annotators label them (``wrong`` of ann-c's answers
    are off by one class), and close the round."""
    store = project.store
    rnd = create_round(store, strategy="random", batch_size=len(picks), overlap=3)
    with store.session() as s:
        n = annotation_base
        for rank, item in enumerate(picks):
            s.add(Selection(round_id=rnd.id, item_id=item, rank=rank, score=0.0))
            for who in ("ann-a", "ann-b", "ann-c"):
                label = truth[item]
                if who == "ann-c" and rank < wrong:
                    label = CLASSES[(CLASSES.index(label) + 1) % 3]
                n += 1
                s.add(Annotation(ls_annotation_id=n, ls_task_id=n, item_id=item,
                                 round_id=rnd.id, annotator=who, label=label, lead_time=3.0))
    transition(store, rnd.id, PUSHED)
    return close_round(project, rnd.id)


def test_close_records_signals_and_converges_on_budget(tmp_path: Path) -> None:
    project, ids, truth_list = make_project(tmp_path, stop_set_size=20)
    project.config.rounds.label_budget = 72  # two rounds of 12 items x 3 annotators
    truth = dict(zip(ids, truth_list, strict=True))
    assert convergence_status(project).summary == "not assessed: no round closed yet"

    m1 = run_round(project, ids[:12], truth, wrong=2)
    c1 = m1.convergence
    stop = project.store.get_meta(STOP_SET_KEY)["items"]
    assert len(stop) == 20 and not set(stop) & set(ids[:12])  # unlabeled when chosen
    # the stored predictions are those of a head fitted on the trusted labels
    all_ids, X = training.pool_features(project)
    t_ids, t_X, y = training.training_set(project, all_ids, X)
    head = training.make_head(project).fit(t_X, y)
    rows = [all_ids.tolist().index(i) for i in stop]
    assert decode_predictions(c1["stop_predictions"]) == [
        CLASSES.index(c) for c in head.predict(X[rows])]
    assert c1["stop_kappa"] is None and c1["pool_remaining"] == 48 and c1["n_embedded"] == 60
    assert m1.converged is False and c1["summary"].startswith("not converged:")
    sig = {s["name"]: s for s in c1["signals"]}
    assert "targets" not in sig and "targets" not in c1  # no target: signals as before
    assert sig["budget"]["detail"] == "36 of 72 labels spent, budget left"
    assert not sig["stabilizing"]["met"]
    # human ceiling: the head's cv accuracy against the annotators' mean accuracy as the
    # round's consensus estimates it
    assert all(a["model_accuracy"] is not None for a in m1.annotators)
    mean_est = np.mean([a["model_accuracy"] for a in m1.annotators])
    assert sig["human_ceiling"]["met"] is bool(m1.cv_accuracy >= mean_est)
    assert f"annotators' mean {mean_est:.3f}" in sig["human_ceiling"]["detail"]
    # every item here has 3 votes, so the two figures agree; where they do not (adaptive
    # votes), the close's check reads the consensus estimate, not leave-one-out
    with project.store.session() as s:
        rid = s.scalar(select(Round.id).where(Round.number == 1))
    apart = replace(m1, cv_accuracy=0.8, annotators=[
        {"model_accuracy": 0.95, "loo_accuracy": 0.6},
        {"model_accuracy": 0.9, "loo_accuracy": 0.65}])
    ceiling = {s["name"]: s for s in assess_round(project, rid, apart, None)["signals"]}
    assert not ceiling["human_ceiling"]["met"]
    assert "annotators' mean 0.925" in ceiling["human_ceiling"]["detail"]

    m2 = run_round(project, ids[12:24], truth, annotation_base=1000)
    c2 = m2.convergence
    assert project.store.get_meta(STOP_SET_KEY)["items"] == stop  # chosen once
    assert c2["stop_kappa"] == pytest.approx(
        stop_kappa(decode_predictions(c1["stop_predictions"]),
                   decode_predictions(c2["stop_predictions"])))
    assert c2["pool_remaining"] == 36
    assert m2.converged is True and c2["reasons"] == ["budget"]
    assert c2["summary"] == "converged because budget (72 of 72 labels spent, budget spent)"
    assert convergence_status(project).summary == c2["summary"]
    assert project_status(project)["convergence"]["summary"] == c2["summary"]


def test_stable_heads_converge_with_a_stabilizing_rule(tmp_path: Path) -> None:
    project, ids, truth_list = make_project(tmp_path, stop_set_size=30, rule="stabilizing",
                                            stability_rounds=1, stability_threshold=0.95)
    truth = dict(zip(ids, truth_list, strict=True))
    assert run_round(project, ids[:12], truth).converged is False  # no earlier head
    m2 = run_round(project, ids[12:24], truth, annotation_base=1000)
    # separable blobs: both heads predict the true class of every stop-set item
    stop = project.store.get_meta(STOP_SET_KEY)["items"]
    assert decode_predictions(m2.convergence["stop_predictions"]) == [
        CLASSES.index(truth[i]) for i in stop]
    assert m2.convergence["stop_kappa"] == 1.0 and m2.converged is True
    assert m2.convergence["summary"].startswith("converged because stabilizing "
                                                   "(stop-set Cohen's kappa 1.000 >= 0.95")


def test_a_bad_rule_does_not_stop_the_close(tmp_path: Path) -> None:
    project, ids, truth_list = make_project(tmp_path, rule="budget or nonsense")
    m = run_round(project, ids[:6], dict(zip(ids, truth_list, strict=True)))
    assert m.converged is False
    assert m.convergence["summary"].startswith("not assessed: convergence.rule")
    assert project.store.trusted_labels()  # the close itself went through


def test_no_features_yet(tmp_path: Path) -> None:
    project, ids, truth_list = make_project(tmp_path, n=6)
    for f in project.features_dir.rglob("*.npz"):
        f.unlink()
    c = run_round(project, ids, dict(zip(ids, truth_list, strict=True))).convergence
    assert c["n_embedded"] == 0 and c["stop_predictions"] is None
    sig = {s["name"]: s for s in c["signals"]}
    assert sig["pool_exhausted"]["detail"] == "no embedded items yet"
    assert not c["converged"]


def test_close_reports_targets_and_converges_when_every_target_is_reached(
        tmp_path: Path) -> None:
    project, ids, truth_list = make_project(tmp_path, stop_set_size=20)
    cfg = project.config
    project.config = ProjectConfig.model_validate({**cfg.model_dump(), "classes": {
        "cat": {"target": 4}, "dog": {"target": 5}, "bird": {}}})
    truth = dict(zip(ids, truth_list, strict=True))

    m1 = run_round(project, ids[:12], truth)  # 4 of each class, all trusted
    c1 = m1.convergence
    assert c1["targets"] == {"cat": {"trusted": 4, "target": 4},
                             "dog": {"trusted": 4, "target": 5}}
    sig = {s["name"]: s for s in c1["signals"]}["targets"]
    assert not sig["met"] and sig["detail"] == (
        "1 of 2 classes short of their target: trusted labels cat 4 of 4, dog 4 of 5")
    assert m1.converged is False

    m2 = run_round(project, ids[12:15], truth, annotation_base=1000)  # a cat, dog, bird
    assert m2.convergence["targets"]["dog"] == {"trusted": 5, "target": 5}
    assert m2.converged is True and m2.convergence["reasons"] == ["targets"]
    assert m2.convergence["summary"].startswith("converged because targets (every class")
