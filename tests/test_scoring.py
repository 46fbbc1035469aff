"""Scoring at scale: the head's folded fast path, the streamed pool, chunked statistics,
the cached projection, and plan_batch's streamed strategies against the array ones.

Synthetic embeddings go into the project's real feature cache (several chunks and a
memory-mapped base); the store, the head and the strategies are real.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sqlalchemy import insert

import alearn.features.cache as fc_mod
import alearn.features.pool as pool_mod
import alearn.query.pool_select as pool_select
import alearn.query.projection as projection
import alearn.query.scoring as scoring
from alearn.features.backbone import cache_key_for
from alearn.features.cache import FeatureCache
from alearn.features.pool import open_pool
from alearn.model import training
from alearn.model.head import EmbeddingClassifier
from alearn.query.scoring import score_pool, top_k
from alearn.query.selection import plan_batch
from alearn.query.strategies import STRATEGIES
from alearn.query.utilities import UTILITIES, top_n
from alearn.store import Item, Label

CLASSES = ["cat", "dog", "bird"]


def _blobs(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    X = rng.normal(size=(n, dim)).astype(np.float32)
    X[:, :3] += 2.5 * np.eye(3, dtype=np.float32)[y]
    X[:, 3:] += 0.7  # a mean far from 0, as real embeddings have
    return X.astype(np.float16).astype(np.float32), y


@pytest.fixture
def big(project, monkeypatch):
    """3,000 items (64-d) in three chunks and a base, plus one cached row with no item."""
    monkeypatch.setattr(fc_mod, "COMPACT_CHUNK_ROWS", 1000)
    monkeypatch.setattr(pool_mod, "BLOCK_ROWS", 128)
    monkeypatch.setattr(scoring, "GROUP_ROWS", 700)  # several groups, some blocks split
    n, dim = 3000, 80
    X, y = _blobs(n, dim)
    shas = [f"{i:064x}" for i in range(n + 1)]
    cache = FeatureCache(project.features_dir, cache_key_for(project.config.embed,
                                                             root=project.root))
    cache.put(shas[:2000], X[:2000])  # more than COMPACT_CHUNK_ROWS: becomes a base
    for a in (2000, 2500, 2900):
        cache.put(shas[a: a + 500 if a < 2900 else n], X[a: a + 500 if a < 2900 else n])
    cache.put([shas[n]], np.full((1, dim), 5.0))  # a row no item owns
    with project.store.session() as s:
        s.execute(insert(Item), [{"id": i + 1, "sha256": shas[i], "path": f"img/{i}.png",
                                  "width": 8, "height": 8} for i in range(n)])
    truth = np.array(CLASSES)[y]
    return {"X": X, "truth": truth, "ids": np.arange(1, n + 1), "cache": cache}


def _label(project, item_ids, truth):
    with project.store.session() as s:
        s.execute(insert(Label), [{"item_id": int(i), "label": str(truth[i - 1]),
                                   "origin": "consensus"} for i in item_ids])


@pytest.mark.parametrize("n_classes", [2, 3, 5])
@pytest.mark.parametrize("pool_stats", [False, True])
def test_folded_fast_path_equals_predict_proba(n_classes, pool_stats):
    rng = np.random.default_rng(n_classes)
    X = (rng.normal(size=(400, 40)) * 3 + 5).astype(np.float32)
    y = rng.integers(0, n_classes, size=400)
    X[:, 0] += 2 * y
    stats = (X.mean(0) + 0.3, X.std(0) * 1.5) if pool_stats else None
    head = EmbeddingClassifier(C=0.5, pool_stats=stats).fit(X[:300], y[:300])
    want = head.predict_proba(X)
    got = head._proba_fast(X)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    # the reference for the folding: scikit-learn on the standardised copy
    Z = (X - head.mean_) / head.scale_
    ref = LogisticRegression(C=0.5, max_iter=500).fit(Z[:300], y[:300]).predict_proba(Z)
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_top_k_is_top_n_with_ties():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 50, size=5000).astype(float)  # many ties
    for k in (1, 7, 100, 5000):
        assert top_k(scores, k).tolist() == top_n(scores, k).tolist()
        picked = top_k(scores, k, rng=11)
        assert len(set(picked.tolist())) == k
        assert np.sort(scores[picked])[::-1].tolist() == np.sort(scores)[::-1][:k].tolist()


def test_pool_maps_items_onto_every_segment(project, big):
    pool = open_pool(project)
    assert len({s.mapped for s in pool.segments}) == 2  # a memory-mapped base and chunks
    assert pool.ids.tolist() == big["ids"].tolist()  # the orphan row is no item's
    some = np.array([3000, 1, 2001, 2950, 2500])
    np.testing.assert_array_equal(pool.vectors(some), big["X"][some - 1])
    seen = np.concatenate([o[o >= 0] for o, _ in pool.blocks()])
    assert np.sort(seen).tolist() == big["ids"].tolist()
    assert pool.positions(np.array([0, 5, 3001])).tolist() == [-1, 4, -1]
    # the row map is on disk, keyed by the cache version; a fresh process only reads it
    (rows_file,) = (big["cache"].path / "derived").glob("rows-*.npy")
    assert pool.version in rows_file.name
    pool_mod.forget_warm()
    again = open_pool(project)
    assert again is not pool and again.ids.tolist() == pool.ids.tolist()
    assert open_pool(project) is again  # warm: same version, same items
    big["cache"].put([f"{9999:064x}"], np.zeros((1, 80)))
    assert open_pool(project).version != pool.version  # new content: reopened


def test_pool_moments_equal_numpy(project, big):
    mean, std = open_pool(project).moments()
    X64 = big["X"].astype(np.float64)
    np.testing.assert_allclose(mean, X64.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(std, X64.std(0), rtol=1e-6)
    stats = training.pool_stats(project)
    np.testing.assert_allclose(stats[0], X64.mean(0), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("utility", sorted(UTILITIES))
def test_streamed_scores_equal_predict_proba(project, big, utility):
    head = EmbeddingClassifier(pool_stats=(big["X"].mean(0), big["X"].std(0)))
    head.fit(big["X"][:90], big["truth"][:90])
    scores = score_pool(open_pool(project), head, utility)
    assert sorted(scores.ids.tolist()) == big["ids"].tolist()
    P = head.predict_proba(big["X"][scores.ids - 1])
    np.testing.assert_allclose(scores.utility, UTILITIES[utility](P), atol=2e-5)
    assert (scores.predicted == P.argmax(1)).mean() > 0.999


def test_scoring_holds_no_pool_sized_array(project, big):
    head = EmbeddingClassifier().fit(big["X"][:90], big["truth"][:90])
    pool = open_pool(project)
    tracemalloc.start()
    try:
        score_pool(pool, head, "margin")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < big["X"].nbytes / 4  # the pool as float32 would be 960 kB


@pytest.mark.parametrize("name", ["margin", "entropy", "least_confident", "class_balanced",
                                  "random"])
def test_plan_batch_streamed_picks_equal_the_array_strategy(project, big, name):
    _label(project, range(1, 91), big["truth"])
    plan = plan_batch(project, batch_size=12, strategy=name)
    head = training.load_head(project, plan.model_version)
    pool_ids = np.arange(91, 3001)
    P = head.predict_proba(big["X"][pool_ids - 1])
    if name == "random":  # the same draw as the array strategy's on the same pool
        want = pool_ids[STRATEGIES[name](P, 12, rng=_seed(plan, project, name))]
        assert [it.item_id for it in plan.items] == want.tolist()
        return
    want = pool_ids[STRATEGIES[name](P, 12)]
    assert sorted(it.item_id for it in plan.items) == sorted(want.tolist())


def _seed(plan, project, name):
    import zlib

    return zlib.crc32(f"{plan.model_version}:3000:90:{name}".encode())


def test_ranked_batch_and_typiclust_run_on_candidates(project, big, monkeypatch):
    monkeypatch.setattr(pool_select, "CANDIDATES_PER_PICK", 5)
    monkeypatch.setattr(pool_select, "TYPICLUST_SAMPLE", 400)
    monkeypatch.setattr(projection, "PROJECTION_DIM", 16)
    _label(project, range(1, 91), big["truth"])
    plan = plan_batch(project, batch_size=10, strategy="ranked_batch")
    head = training.load_head(project, plan.model_version)
    u = UTILITIES["least_confident"](head.predict_proba(big["X"][90:]))
    cand = set((np.argsort(-u)[:50] + 91).tolist())  # the 5 x 10 most uncertain
    picked = [it.item_id for it in plan.items]
    assert len(set(picked)) == 10 and set(picked) <= cand
    cold = plan_batch(project, batch_size=10, strategy="typiclust")
    assert len({it.item_id for it in cold.items}) == 10
    assert all(it.item_id > 90 for it in cold.items)


def test_projection_is_fitted_once_and_kept(project, big, monkeypatch):
    monkeypatch.setattr(projection, "PROJECTION_DIM", 16)
    monkeypatch.setattr(projection, "FIT_SAMPLE", 500)
    pool = open_pool(project)
    first = projection.pool_projection(project, pool)
    path = big["cache"].path / "derived" / "pca.npz"
    stamp = path.stat().st_mtime_ns
    projection._LOADED.clear()
    again = projection.pool_projection(project, pool)
    assert path.stat().st_mtime_ns == stamp  # read back, not refitted
    np.testing.assert_array_equal(first.components, again.components)
    assert first.components.shape == (80, 16) and first.n_fit == 500
    Z = first(big["X"][:10])
    ref = (big["X"][:10] - first.mean) @ first.components
    np.testing.assert_allclose(Z, ref, rtol=1e-5, atol=1e-5)
