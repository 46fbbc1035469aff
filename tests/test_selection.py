"""Training the head and planning a batch on a tiny project.

Synthetic embeddings go into the project's real feature cache (no backbone is run);
the store, the head and the strategies are real.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sqlalchemy import select

from alearn.cli import cli
from alearn.exceptions import EmptyPoolError, UnknownNameError
from alearn.features.backbone import cache_key_for
from alearn.features.cache import FeatureCache
from alearn.model import training
from alearn.query.selection import plan_batch
from alearn.query.utilities import uncertainty_margin
from alearn.store import Item, Label, ModelRecord, Round, Selection

CLASSES = ["cat", "dog", "bird"]
N_ITEMS = 60


@pytest.fixture
def pool(project):
    """60 items in three Gaussian blobs (true class = blob), in the feature cache."""
    rng = np.random.default_rng(0)
    truth = np.array(CLASSES)[np.arange(N_ITEMS) % 3]
    X = rng.normal(size=(N_ITEMS, 8)).astype(np.float32)
    X[:, :3] += 3 * np.eye(3, dtype=np.float32)[np.arange(N_ITEMS) % 3]
    X = X.astype(np.float16).astype(np.float32)  # what the cache gives back
    shas = [f"{i:064x}" for i in range(N_ITEMS + 1)]
    with project.store.session() as s:
        for i in range(N_ITEMS + 1):  # the last item has no features: never in the pool
            s.add(Item(id=i + 1, sha256=shas[i], path=f"img/{i}.png", width=8, height=8))
    key = cache_key_for(project.config.embed, root=project.root)
    FeatureCache(project.features_dir, key).put(shas[:N_ITEMS], X)
    ids = np.arange(1, N_ITEMS + 1, dtype=np.int64)
    return {"ids": ids, "X": X, "truth": truth}


def _label(project, item_ids, truth):
    with project.store.session() as s:
        for i in item_ids:
            s.add(Label(item_id=int(i), label=str(truth[i - 1]), origin="consensus"))


def test_no_head_before_two_classes_and_cold_start_fallback(project, pool):
    assert training.train_head(project) is None
    _label(project, [1, 4, 7], pool["truth"])  # all 'cat'
    assert training.train_head(project) is None
    plan = plan_batch(project, batch_size=6, strategy="margin")
    assert plan.strategy == "typiclust" and plan.model_version is None
    assert [it.rank for it in plan.items] == list(range(6))
    assert [it.score for it in plan.items] == sorted(it.score for it in plan.items)
    assert all(it.predicted is None for it in plan.items)
    assert {1, 4, 7}.isdisjoint(it.item_id for it in plan.items)


def test_train_head_records_deterministic_version_and_cv(project, pool):
    labeled = list(range(1, 31))
    _label(project, labeled, pool["truth"])
    rec = training.train_head(project, round_id=None)
    assert rec.n_train == 30 and rec.version.startswith("m-") and len(rec.version) == 12
    X, y = pool["X"][:30], pool["truth"][:30]
    # reference: standardise with the whole pool's statistics, then logistic regression
    mean, std = pool["X"].mean(axis=0), pool["X"].std(axis=0)
    ref = make_pipeline(FunctionTransformer(lambda A: (A - mean) / std),
                        LogisticRegression(C=project.config.head.C, max_iter=500))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    assert rec.cv_accuracy == pytest.approx(cross_val_score(ref, X, y, cv=folds).mean())
    assert training.train_head(project).version == rec.version  # same labels, same head
    with project.store.session() as s:
        assert s.scalar(select(ModelRecord.id).where(ModelRecord.version == rec.version))
    loaded = training.load_head(project, rec.version)
    np.testing.assert_allclose(loaded.predict_proba(pool["X"]),
                               ref.fit(X, y).predict_proba(pool["X"]), atol=1e-5)
    assert not list(project.models_dir.glob(".tmp-*"))
    assert len(list(project.models_dir.glob("pool-stats-*.npz"))) == 1
    _label(project, [31], pool["truth"])
    assert training.train_head(project).version != rec.version


def test_a_head_fitted_outside_a_round_is_claimed_by_the_next_round(project, pool):
    # close and the report fit through current_head with no round; the round's train job
    # that reuses that fit records its round, so a head's provenance is kept
    _label(project, range(1, 13), pool["truth"])
    first = training.train_head(project)
    assert first.round_id is None
    with project.store.session() as s:
        s.add(Round(id=7, number=1, status="planned", strategy="margin", batch_size=5,
                    overlap=3))
    again = training.train_head(project, round_id=7)
    assert again.version == first.version and again.round_id == 7
    with project.store.session() as s:
        assert s.scalars(select(ModelRecord.round_id)).all() == [7]


def test_new_embeddings_change_the_pool_stats_and_the_version(project, pool):
    _label(project, range(1, 13), pool["truth"])
    before = training.train_head(project).version
    with project.store.session() as s:
        s.add(Item(id=100, sha256=f"{100:064x}", path="img/new.png", width=8, height=8))
    key = cache_key_for(project.config.embed, root=project.root)
    FeatureCache(project.features_dir, key).put([f"{100:064x}"], np.full((1, 8), 9.0))
    mean, _ = training.pool_stats(project)
    np.testing.assert_allclose(mean, np.vstack([pool["X"], np.full((1, 8), 9.0)]).mean(0),
                               rtol=1e-6)
    assert training.train_head(project).version != before
    assert len(list(project.models_dir.glob("pool-stats-*.npz"))) == 1


def test_cv_accuracy_none_when_a_class_has_one_label(project, pool):
    _label(project, [1, 4, 2, 5, 3], pool["truth"])  # cat x2, dog x2, bird x1
    rec = training.train_head(project)
    assert rec.n_train == 5 and rec.cv_accuracy is None


def test_plan_excludes_labeled_selected_and_excluded_items(project, pool):
    _label(project, range(1, 13), pool["truth"])  # 4 per class: past cold start
    with project.store.session() as s:
        s.add(Round(id=1, number=1, status="closed", strategy="margin", batch_size=2,
                    overlap=1))
        s.add_all([Selection(round_id=1, item_id=i, rank=0, score=0.0) for i in (20, 21)])
    plan = plan_batch(project, batch_size=5, exclude=[30])
    assert plan.strategy == "margin" and plan.model_version.startswith("m-")
    assert plan.n_pool == N_ITEMS - 12 - 2 - 1 and plan.n_train == 12  # item 61: no features
    chosen = [it.item_id for it in plan.items]
    assert len(chosen) == 5 and not set(chosen) & ({20, 21, 30} | set(range(1, 13)))
    # lower score = more uncertain: the picks are the pool's smallest margins, ascending
    head = training.load_head(project, plan.model_version)
    pool_ids = [i for i in range(13, N_ITEMS + 1) if i not in (20, 21, 30)]
    m = 1 - uncertainty_margin(head.predict_proba(pool["X"][np.array(pool_ids) - 1]))
    assert [it.score for it in plan.items] == pytest.approx(np.sort(m)[:5].tolist())
    assert plan.items[0].path == f"img/{chosen[0] - 1}.png"
    assert {it.predicted for it in plan.items} <= set(CLASSES)


def test_plan_auto_uses_cold_start_until_every_class_has_enough(project, pool):
    _label(project, [1, 2, 3, 4, 5, 6], pool["truth"])  # 2 per class < min 3
    assert plan_batch(project, batch_size=3).strategy == "typiclust"
    _label(project, [7, 8, 9], pool["truth"])
    assert plan_batch(project, batch_size=3).strategy == project.config.rounds.uncertainty_strategy


def test_plan_errors(project, pool):
    with pytest.raises(UnknownNameError, match="Valid names"):
        plan_batch(project, strategy="bogus")
    with pytest.raises(ValueError, match="batch_size"):
        plan_batch(project, batch_size=0)
    with pytest.raises(EmptyPoolError, match="1 of 61 ingested items are not embedded.*'alearn "
                       "embed'"):  # the one item without features could still be embedded
        plan_batch(project, exclude=pool["ids"].tolist())


def test_cli_round_plan(project, pool):
    runner = CliRunner()
    args = ["--project", str(project.root), "round", "plan"]
    result = runner.invoke(cli, [*args, "--batch-size", "4", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # stderr: item 61, not in the cache, has no file to embed
    assert data["strategy"] == "typiclust" and len(data["items"]) == 4
    result = runner.invoke(cli, [*args, "--batch-size", "3"])
    assert result.exit_code == 0 and "Planned batch" in result.output
    result = runner.invoke(cli, [*args, "--strategy", "bogus"])
    assert result.exit_code == 2
    assert "--strategy" in result.output and "margin" in result.output
