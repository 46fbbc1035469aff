"""Label-error ranking: planted wrong labels come first, confident learning's flags are
cleanlab's own, and in a project the wrong consensus labels of a round are ranked first
from the store, the votes and the real head's cross-validated probabilities."""

from __future__ import annotations

import numpy as np
import pytest
from cleanlab.filter import find_label_issues
from factories import CLASSES, voted_round
from sklearn.metrics import roc_auc_score

from alearn.config_sections import HeadConfig
from alearn.exceptions import ConfigError
from alearn.features.backbone import cache_key_for
from alearn.features.cache import FeatureCache
from alearn.model.out_of_sample import out_of_sample_proba
from alearn.model.training import head_from_settings
from alearn.rounds.label_errors import project_label_errors, rank_label_errors
from alearn.store import Item, Label


def blobs(n: int, k: int, seed: int, sep: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = np.arange(n) % k
    X = rng.normal(size=(n, 10))
    X[:, :k] += sep * np.eye(k)[truth]
    return X, truth


def planted(n: int = 400, k: int = 4, n_wrong: int = 24, seed: int = 0):  # noqa: ANN201
    X, truth = blobs(n, k, seed)
    rng = np.random.default_rng(seed + 1)
    wrong = rng.choice(n, n_wrong, replace=False)
    y = truth.copy()
    y[wrong] = (truth[wrong] + rng.integers(1, k, n_wrong)) % k
    got = out_of_sample_proba(lambda: head_from_settings(HeadConfig(C=0.1), None), X, y, k)
    assert got is not None
    return y, truth, got[0], wrong


def test_ranking_finds_planted_errors() -> None:
    y, truth, P, wrong = planted()
    r = rank_label_errors(y, P)
    top = set(r.order[: len(wrong)].tolist())
    assert len(top & set(wrong.tolist())) >= 0.75 * len(wrong)
    assert roc_auc_score(y != truth, r.score) >= 0.95
    assert r.flagged.sum() >= len(wrong) // 2 and (r.suggested[wrong] == truth[wrong]).mean() > 0.8
    # the flags are cleanlab's confident learning, unchanged
    assert (r.flagged == find_label_issues(y, P / P.sum(1, keepdims=True), n_jobs=1)).all()
    # flagged labels rank above every unflagged one
    ranks = np.empty(len(y), dtype=int)
    ranks[r.order] = np.arange(len(y))
    assert ranks[r.flagged].max() < ranks[~r.flagged].min()


def test_consensus_posterior_adds_what_the_votes_say() -> None:
    y, truth, P, wrong = planted(seed=3)
    # a consensus that doubts the wrong labels (the votes were split on them)
    C = np.full(P.shape, 0.01)
    C[np.arange(len(y)), y] = 0.97
    C[wrong] = 0.25
    C /= C.sum(1, keepdims=True)
    alone = roc_auc_score(y != truth, rank_label_errors(y, P).score)
    both = rank_label_errors(y, P, consensus_posteriors=C)
    assert roc_auc_score(y != truth, both.score) >= alone
    assert both.consensus_quality is not None and both.consensus_quality.shape == y.shape
    # with a posterior, the score is 1 - the posterior of the label (flags break ties) and
    # a label is doubtful below the settled mark: here exactly the planted wrong ones
    rows = np.arange(len(y))
    assert np.allclose(both.score, 1.0 - C[rows, y])
    assert set(np.flatnonzero(both.doubtful).tolist()) == set(wrong.tolist())
    assert set(both.order[: len(wrong)].tolist()) == set(wrong.tolist())
    lax = rank_label_errors(y, P, consensus_posteriors=C, settled_at=0.2)
    assert not lax.doubtful.any()
    # without one: flagged, or the model's most probable class is another
    assert (rank_label_errors(y, P).doubtful == (both.flagged | (P.argmax(1) != y))).all()


def test_a_label_the_votes_and_model_settle_is_not_doubtful_though_flagged() -> None:
    """Confident learning flags labels on the model alone; the consensus posterior holds
    the model and the votes, and a settled posterior is not worth a reviewer's click."""
    y, truth, P, wrong = planted(seed=5)
    flagged = rank_label_errors(y, P).flagged
    assert flagged.any()
    C = np.full(P.shape, 0.001)
    C[np.arange(len(y)), y] = 1.0  # every label settled by its votes
    r = rank_label_errors(y, P, consensus_posteriors=C)
    assert not r.doubtful.any()
    # equal posteriors: the flagged labels come first
    ranks = np.empty(len(y), dtype=int)
    ranks[r.order] = np.arange(len(y))
    assert ranks[r.flagged].max() < ranks[~r.flagged].min()


def test_edge_cases() -> None:
    # one class: nothing for confident learning to compare; the model's view still ranks
    P = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    r = rank_label_errors([0, 0, 0], P)
    assert not r.flagged.any() and r.order.tolist() == [1, 2, 0]
    empty = rank_label_errors(np.zeros(0, dtype=int), np.zeros((0, 3)))
    assert empty.order.size == 0
    with pytest.raises(ConfigError, match="need labels"):
        rank_label_errors([0, 3], P[:2])
    with pytest.raises(ConfigError, match="consensus_posteriors"):
        rank_label_errors([0, 1], P[:2], consensus_posteriors=np.ones((2, 3)))


def test_project_ranks_its_wrong_consensus_labels_first(project) -> None:
    X, truth = blobs(60, 3, seed=2, sep=5.0)
    shas = [f"{2000 + i:064x}" for i in range(40)] + [f"{k:064x}" for k in range(40, 60)]
    with project.store.session() as s:
        for i in range(40):  # earlier trusted labels, without votes in the store
            s.add(Item(id=2000 + i, sha256=shas[i], path=f"e/{i}.png", width=8, height=8))
            s.add(Label(item_id=2000 + i, label=CLASSES[truth[i]], origin="consensus"))
    FeatureCache(project.features_dir, cache_key_for(project.config.embed, root=project.root)
                 ).put(shas, X.astype(np.float32))
    assert project_label_errors(project) == []  # no votes, nothing to rank
    # keys 40..59 get two votes each; on 40, 41, 42 both annotators were wrong
    bad = {40, 41, 42}
    said = {k: CLASSES[(truth[k] + (k in bad)) % 3] for k in range(40, 60)}
    _, ids = voted_round(project, {k: [said[k], said[k]] for k in said})
    with project.store.session() as s:
        for k, label in said.items():
            s.add(Label(item_id=ids[k], label=label, origin="consensus"))
    ranked = project_label_errors(project)
    assert len(ranked) == 20 and {r.item_id for r in ranked} == set(ids.values())
    assert {r.item_id for r in ranked[:3]} == {ids[k] for k in bad}
    top = ranked[0]
    k = next(k for k, v in ids.items() if v == top.item_id)
    assert top.suggested == CLASSES[truth[k]] and top.label == said[k]
    assert set(top.votes.values()) == {said[k]} and len(top.votes) == 2
    assert len(project_label_errors(project, limit=2)) == 2
