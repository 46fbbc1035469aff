"""Round jobs cost O(batch), not O(pool): a no-op embed job reads nothing of the pool, and
a close builds no key index over the feature cache while its figures (embedded count,
pool remaining, the stop set) stay what a look at every item gives."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from redis import Redis

import alearn.features.pipeline as pipeline
from alearn.config import EmbedConfig
from alearn.features.backbone import cache_key_for, load_backbone
from alearn.features.cache import FeatureCache
from alearn.features.keyindex import KeyIndex
from alearn.features.pool import forget_warm
from alearn.project import Project
from alearn.rounds.convergence import STOP_SET_KEY
from alearn.store import Item, Selection
from tests.test_convergence import make_project, run_round
from tests.test_features import TINY, add_items


@pytest.fixture
def key_indexes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The sizes of the feature cache key indexes built (an empty one costs nothing)."""
    sizes: list[int] = []
    real = KeyIndex.__init__

    def spy(self: KeyIndex, segments: Any) -> None:
        real(self, segments)
        if len(self.keys):
            sizes.append(len(self.keys))

    monkeypatch.setattr(KeyIndex, "__init__", spy)
    yield sizes


def _by_every_item(project: Project) -> tuple[int, int, list[int]]:
    """What a look at every item gives: (embedded items, embedded items neither labeled
    nor selected, the stop set as chosen over every item id in the store)."""
    cache = FeatureCache(project.features_dir, cache_key_for(project.config.embed,
                                                            root=project.root))
    with project.store.session() as s:
        rows = s.query(Item.id, Item.sha256).order_by(Item.id).all()
        selected = {i for (i,) in s.query(Selection.item_id)}
    gone = set(cache.missing([h for _, h in rows]))
    embedded = [i for i, h in rows if h not in gone]
    labels = project.store.trusted_labels()
    taken = selected | set(labels)
    cfg = project.config.convergence
    ids = np.array([i for i, _ in rows], dtype=np.int64)
    order = ids[np.random.default_rng(cfg.stop_set_seed).permutation(len(ids))].tolist()
    stop = [i for i in order if i in set(embedded) and i not in labels][:cfg.stop_set_size]
    return len(embedded), len([i for i in embedded if i not in taken]), sorted(stop)


@pytest.mark.parametrize("unembedded", [0, 7])
def test_close_builds_no_key_index_and_keeps_its_figures(
        tmp_path: Path, key_indexes: list[int], unembedded: int) -> None:
    forget_warm()
    project, ids, truth_list = make_project(tmp_path, stop_set_size=20)
    with project.store.session() as s:  # items whose files were never embedded
        s.add_all(Item(sha256=f"{k:064x}", path=f"x/{k}.png", width=1, height=1)
                  for k in range(unembedded))
    truth = dict(zip(ids, truth_list, strict=True))
    c1 = run_round(project, ids[:12], truth, wrong=2).convergence
    n_embedded, remaining, stop = _by_every_item(project)
    assert (c1["n_embedded"], c1["pool_remaining"]) == (n_embedded, remaining) == (60, 48)
    assert project.store.get_meta(STOP_SET_KEY)["items"] == stop
    built = list(key_indexes)

    forget_warm()  # a fresh process: the pool opens from its saved item map
    c2 = run_round(project, ids[12:24], truth, annotation_base=1000).convergence
    assert key_indexes == built  # the second close built no key index at all
    assert (c2["n_embedded"], c2["pool_remaining"]) == _by_every_item(project)[:2] == (60, 36)
    assert project.store.get_meta(STOP_SET_KEY)["items"] == stop  # the same items


@pytest.mark.services
def test_noop_embed_job_reads_nothing_of_the_pool(project: Project, redis_conn: Redis,
                                                   key_indexes: list[int],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.jobs import embed_job

    project.config.embed = EmbedConfig(**TINY)
    project.save_config()
    ids = add_items(project)
    pipeline.embed_project(project, backbone=load_backbone(project.config.embed),
                           progress=False)  # as 'alearn embed' after an ingest
    looked: list[int] = []
    real = pipeline._candidates

    def candidates(*args: Any, **kw: Any) -> Any:
        mark, rows = real(*args, **kw)
        looked.append(len(rows))
        return mark, rows

    def refuse(*args: Any, **kw: Any) -> Any:
        raise AssertionError("a no-op embed opened the feature cache's segments")

    monkeypatch.setattr(pipeline, "_candidates", candidates)
    monkeypatch.setattr(FeatureCache, "_refresh", refuse)
    monkeypatch.setattr(pipeline, "load_backbone", refuse)
    built = list(key_indexes)
    out = embed_job(str(project.root), 0, 1)
    assert isinstance(out, dict)
    assert (out["computed"], out["cached"], out["items"]) == (0, len(ids), len(ids))
    assert looked == [0] and key_indexes == built  # no item row, no key index
