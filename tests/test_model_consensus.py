"""Model-aware consensus: Dawid-Skene with the head's out-of-sample probabilities as each
item's prior. Checked against cleanlab's CROWDLAB (the reference for consensus that uses
a model) and Dawid-Skene on simulated annotators, for calibration of its posterior (the
adaptive-votes rule thresholds it), and on the edge cases; then in a project, through
the configured method and the real head's out-of-sample probabilities."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from cleanlab.multiannotator import get_label_quality_multiannotator
from factories import CLASSES, voted_round

from alearn.config_sections import AgreementConfig, HeadConfig
from alearn.exceptions import ConfigError, UnknownNameError
from alearn.features.backbone import cache_key_for
from alearn.features.cache import FeatureCache
from alearn.model.out_of_sample import out_of_sample_proba, project_proba
from alearn.model.training import head_from_settings
from alearn.rounds.votes import consensus, tally
from alearn.stats.consensus import dawid_skene, get_consensus, majority_vote, model_aware
from alearn.store import Item, Label

PANEL = [0.95, 0.9, 0.8, 0.65, None]  # None answers at random
BIASED = (2, 3)  # swap classes 0 and 1 when wrong, 80% of the time


def simulate(n: int, votes: int, seed: int, k: int = 6, model_strength: float = 2.0,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ratings (n, 5), truth (n,) and a model's probabilities (n, k) about 75% accurate."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    R = np.full((n, len(PANEL)), -1)
    order = np.argsort(rng.random((n, len(PANEL))), axis=1)[:, :votes]
    for i in range(n):
        for j in order[i]:
            acc, t = PANEL[j], truth[i]
            if acc is None:
                R[i, j] = rng.integers(k)
            elif rng.random() < acc:
                R[i, j] = t
            elif j in BIASED and t in (0, 1) and rng.random() < 0.8:
                R[i, j] = 1 - t
            else:
                R[i, j] = rng.choice([c for c in range(k) if c != t])
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), truth] += model_strength
    P = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return R, truth, P


def crowdlab(R: np.ndarray, P: np.ndarray) -> np.ndarray:
    Rn = np.where(R >= 0, R, np.nan).astype(float)
    with warnings.catch_warnings():  # cleanlab warns about classes no consensus label has
        warnings.simplefilter("ignore")
        out = get_label_quality_multiannotator(Rn, P, verbose=False,
                                               return_detailed_quality=False,
                                               return_annotator_stats=False)
    return out["label_quality"]["consensus_label"].to_numpy()


@pytest.mark.parametrize("votes", [2, 3])
def test_at_least_as_accurate_as_cleanlab_crowdlab_and_beats_dawid_skene(votes: int) -> None:
    ours, ref, ds = [], [], []
    for seed in range(3):
        R, truth, P = simulate(600, votes, seed)
        ma = model_aware(R, n_classes=6, pred_probs=P, tie_policy="first")
        ours.append(np.mean(ma.labels == truth))
        ref.append(np.mean(crowdlab(R, P) == truth))
        ds.append(np.mean(dawid_skene(R, n_classes=6, tie_policy="first").labels == truth))
        assert ma.method == "model_aware" and ma.note == "" and ma.converged
    assert np.mean(ours) >= np.mean(ref) - 0.005, (ours, ref)
    assert np.mean(ours) >= np.mean(ds) + 0.02, (ours, ds)


def test_one_vote_per_item_uses_the_model_where_cleanlab_refuses() -> None:
    R, truth, P = simulate(600, 1, seed=5)
    with pytest.raises(ValueError, match="only has one label"):
        crowdlab(R, P)
    ma = model_aware(R, n_classes=6, pred_probs=P, tie_policy="first")
    mv = majority_vote(R, n_classes=6, tie_policy="first")
    assert np.mean(ma.labels == truth) >= np.mean(mv.labels == truth) + 0.05
    assert np.mean(ma.labels == truth) > np.mean(P.argmax(1) == truth)


def test_posterior_is_calibrated_enough_for_a_confidence_target() -> None:
    R, truth, P = simulate(3000, 2, seed=7)
    ma = model_aware(R, n_classes=6, pred_probs=P, tie_policy="first")
    sure = ma.confidence >= 0.95
    assert sure.sum() > 600
    assert np.mean(ma.labels[sure] == truth[sure]) >= 0.93
    # and the unsure ones are where the errors are
    assert np.mean(ma.labels[~sure] == truth[~sure]) < np.mean(ma.labels[sure] == truth[sure])


def test_model_weight_follows_how_good_the_model_is() -> None:
    R, truth, _ = simulate(800, 2, seed=3)
    rng = np.random.default_rng(0)
    noise = rng.dirichlet(np.ones(6), size=800)
    perfect = np.full((800, 6), 0.02)
    perfect[np.arange(800), truth] = 0.9
    w_noise = model_aware(R, n_classes=6, pred_probs=noise).model_weight
    w_good = model_aware(R, n_classes=6, pred_probs=perfect).model_weight
    assert w_noise < 0.3 < 1.0 < w_good
    uniform = model_aware(R, n_classes=6, pred_probs=np.full((800, 6), 1 / 6),
                          tie_policy="first")
    ds = dawid_skene(R, n_classes=6, tie_policy="first")
    assert np.mean(uniform.labels == ds.labels) >= 0.95  # no model opinion: the votes decide


def test_biased_pair_is_learned_from_gold() -> None:
    R, truth, P = simulate(900, 2, seed=11)
    gold = np.where(np.arange(900) < 150, truth, -1)
    ma = model_aware(R, n_classes=6, pred_probs=P, gold=gold, tie_policy="first")
    assert (ma.labels[:150] == truth[:150]).all()  # gold keeps its class
    # annotators 2 and 3 say 1 for a true 0 far more often than another wrong class
    for j in BIASED:
        assert ma.confusion[j, 0, 1] > 3 * ma.confusion[j, 0, 2:].mean()
        assert ma.confusion[j, 0, 0] > 0.5


def test_no_model_falls_back_to_dawid_skene_with_a_reason() -> None:
    R, _, _ = simulate(200, 3, seed=2)
    ma = model_aware(R, n_classes=6, tie_policy="first")
    ds = dawid_skene(R, n_classes=6, tie_policy="first")
    assert ma.method == "dawid_skene" and "no model" in ma.note
    assert (ma.labels == ds.labels).all()
    assert np.allclose(ma.posteriors, ds.posteriors)


def test_edge_cases() -> None:
    # one annotator: the model and that annotator's estimated confusion decide
    R = np.array([[0], [1], [1], [0]])
    P = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4]])
    one = model_aware(R, n_classes=2, pred_probs=P)
    assert one.labels.tolist()[:2] == [0, 1] and np.allclose(one.posteriors.sum(1), 1)
    # one class: everything is that class, with certainty
    single = model_aware(np.zeros((3, 2), dtype=int), n_classes=1, pred_probs=np.ones((3, 1)))
    assert single.labels.tolist() == [0, 0, 0] and np.allclose(single.confidence, 1)
    # an item without votes stays 'no_votes', one without features (NaN row) is votes-only
    R = np.array([[0, 0], [-1, -1], [1, 1]])
    P = np.array([[0.9, 0.1], [0.5, 0.5], [np.nan, np.nan]])
    res = model_aware(R, n_classes=2, pred_probs=P)
    assert res.status.tolist()[1] == "no_votes" and res.labels.tolist() == [0, -1, 1]
    # a class the head never saw (probability 0) can still win on the votes
    R = np.array([[2, 2, 2]] + [[0, 0, 0]] * 5 + [[1, 1, 1]] * 5)
    P = np.array([[0.5, 0.5, 0.0]] + [[0.9, 0.1, 0.0]] * 5 + [[0.1, 0.9, 0.0]] * 5)
    assert model_aware(R, n_classes=3, pred_probs=P).labels[0] == 2
    with pytest.raises(ConfigError, match="pred_probs has shape"):
        model_aware(np.array([[0, 1]]), n_classes=2, pred_probs=np.ones((2, 2)))
    with pytest.raises(UnknownNameError, match="tie policy"):
        model_aware(np.array([[0, 1]]), tie_policy="coin", pred_probs=np.ones((1, 2)))
    assert get_consensus("model_aware") is model_aware
    assert AgreementConfig(consensus="model_aware").consensus == "model_aware"
    with pytest.raises(ValueError, match="'model_aware'"):
        AgreementConfig(consensus="crowd")


def test_out_of_sample_probabilities_never_saw_their_own_label() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    y = (X[:, 0] > 0).astype(int)
    y[0] = 1 - y[0]  # a wrong label: cross-validated, the head does not echo it
    got = out_of_sample_proba(lambda: head_from_settings(HeadConfig(C=1.0), None), X, y, 3,
                              X_other=X[:2])
    assert got is not None
    P_lab, P_other = got
    assert P_lab.shape == (60, 3) and P_other.shape == (2, 3)
    assert np.allclose(P_lab[:, 2], 0) and np.allclose(P_lab.sum(1), 1)
    assert P_lab[0].argmax() != y[0]
    assert out_of_sample_proba(lambda: head_from_settings(HeadConfig(), None), X[:5],
                               np.zeros(5, dtype=int), 3) is None  # one class: no head


@pytest.fixture
def blobs(project):
    """Three well-separated Gaussian blobs: items 0..44 in the store with a trusted
    consensus label (the truth), features for them and for the keys 45..59 (the items
    ``voted_round`` adds, sha256 = the key in hex)."""
    rng = np.random.default_rng(1)
    truth = np.arange(60) % 3
    X = rng.normal(size=(60, 8)).astype(np.float32)
    X[:, :3] += 4 * np.eye(3, dtype=np.float32)[truth]
    shas = [f"{1000 + i:064x}" for i in range(45)] + [f"{k:064x}" for k in range(45, 60)]
    with project.store.session() as s:
        for i in range(45):
            s.add(Item(id=1000 + i, sha256=shas[i], path=f"b/{i}.png", width=8, height=8))
            s.add(Label(item_id=1000 + i, label=CLASSES[truth[i]], origin="consensus"))
    FeatureCache(project.features_dir, cache_key_for(project.config.embed, root=project.root)
                 ).put(shas, X.astype(np.float16))
    return truth


def test_project_round_with_model_aware_consensus(project, blobs,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # items 45..59 are voted on now by two annotators: they agree on the first ten, and
    # on the last five the second says the next class; only the head (trained on the 45
    # trusted labels) can tell which of the two is right there
    votes = {k: [CLASSES[blobs[k]], CLASSES[(blobs[k] + (k >= 55)) % 3]] for k in range(45, 60)}
    rnd, ids = voted_round(project, votes)
    new = [ids[k] for k in range(45, 60)]
    P = project_proba(project, [1000, 1001, *new, 99999])
    assert P is not None and P.shape == (18, 3)
    assert np.isnan(P[-1]).all() and not np.isnan(P[:-1]).any()  # 99999: no features
    assert P[0].argmax() == blobs[0] and P[2].argmax() == blobs[45]
    # none of them labeled (a round being voted on): the saved current head's own view
    from alearn.model.current import current_head
    from alearn.model.training import features_for

    head = current_head(project)
    assert head is not None
    got_ids, X_new = features_for(project, set(new))
    ref = np.zeros((len(X_new), 3))  # columns in the project's class order
    ref[:, [CLASSES.index(str(c)) for c in head.head.classes_]] = head.head.predict_proba(X_new)
    alone = project_proba(project, got_ids.tolist())
    assert alone is not None and np.allclose(alone, ref)

    def unsaved(*_args: object) -> None:
        raise OSError("models folder is read-only")

    import alearn.model.out_of_sample as oos
    monkeypatch.setattr(oos, "_current_head_proba", unsaved)
    fitted = project_proba(project, got_ids.tolist())  # fitted here instead: same classes
    assert fitted is not None and (fitted.argmax(1) == alone.argmax(1)).mean() >= 0.8
    project.config.agreement.consensus = "model_aware"
    t = tally(project, [rnd])
    cons = consensus(project, t.ratings, tie_policy="first")
    assert cons.method == "model_aware" and cons.model_weight is not None
    row = {item: r for r, item in enumerate(t.items)}
    truth = {ids[k]: blobs[k] for k in votes}
    assert all(cons.labels[row[i]] == truth[i] for i in truth)
    assert all(cons.status[row[i]] == "agreed" for i in truth)
    project.config.agreement.consensus = "majority"
    mv = consensus(project, t.ratings)  # the votes alone tie on the last five
    assert [str(mv.status[row[ids[k]]]) for k in range(55, 60)] == ["tie"] * 5
