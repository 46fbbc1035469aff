"""The embed mark: a run with nothing to do looks at no item it saw before, and stays
correct when items are added (also late, below the mark), the cache is compacted or
deleted, and with shards. Real store, real cache, a tiny real backbone."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from redis import Redis

import alearn.features.pipeline as features
from alearn.cli import cli
from alearn.config import EmbedConfig
from alearn.features.backbone import Backbone, load_backbone
from alearn.features.cache import FeatureCache
from alearn.features.embedded_mark import read_mark
from alearn.features.pipeline import (
    choose_embed_shards,
    embed_project,
    load_pool_features,
    pending_items,
)
from alearn.project import Project
from alearn.store import Item
from tests.test_features import TINY, add_items


@pytest.fixture
def tiny(project: Project) -> Project:
    project.config.embed = EmbedConfig(**TINY)
    project.save_config()
    return project


@pytest.fixture(scope="module")
def tiny_backbone() -> Backbone:
    return load_backbone(EmbedConfig(**TINY))


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many hashes each FeatureCache.missing() call was asked about (the real one runs)."""
    sizes: list[int] = []
    real = FeatureCache.missing

    def spy(self: FeatureCache, sha256s: list[str]) -> list[str]:
        sizes.append(len(sha256s))
        return real(self, sha256s)

    monkeypatch.setattr(FeatureCache, "missing", spy)
    yield sizes


def _embed(project: Project, bb: Backbone, **kw: object) -> features.EmbedSummary:
    return embed_project(project, backbone=bb, progress=False, **kw)  # type: ignore[arg-type]


def test_a_noop_run_asks_the_cache_about_nothing(tiny: Project, tiny_backbone: Backbone,
                                                  asked: list[int]) -> None:
    ids = add_items(tiny, ["a/img0.png", "a/img1.png", "a/img2.png"])
    first = _embed(tiny, tiny_backbone)
    assert (first.computed, first.items, asked) == (3, 3, [3])
    again = _embed(tiny, tiny_backbone)
    assert (again.computed, again.cached, again.items, asked[1:]) == (0, 3, 3, [])
    assert pending_items(tiny) == 0

    new = add_items(tiny, ["b/img3.jpg", "b/img4.jpg"])
    assert pending_items(tiny) == 2
    more = _embed(tiny, tiny_backbone)
    assert (more.computed, more.cached, more.items) == (2, 3, 5) and asked[-1] == 2
    mark = read_mark(FeatureCache(tiny.features_dir, tiny_backbone.cache_key).path, (0, 1))
    assert mark is not None and (mark.upto, mark.count) == (max(new.values()), 5)

    # compaction keeps every vector: the mark still holds
    FeatureCache(tiny.features_dir, tiny_backbone.cache_key).compact()
    n_asked = len(asked)
    assert _embed(tiny, tiny_backbone).computed == 0 and len(asked) == n_asked
    assert load_pool_features(tiny, backbone_key=tiny_backbone.cache_key)[0].tolist() == \
        sorted([*ids.values(), *new.values()])
    # --check looks at every item
    full = _embed(tiny, tiny_backbone, full=True)
    assert (full.computed, full.cached, asked[-1]) == (0, 5, 5)


def test_deleted_cache_and_late_items_are_found(tiny: Project, tiny_backbone: Backbone) -> None:
    add_items(tiny, ["a/img0.png", "a/img1.png"])
    _embed(tiny, tiny_backbone)
    shutil.rmtree(FeatureCache(tiny.features_dir, tiny_backbone.cache_key).path)
    assert _embed(tiny, tiny_backbone).computed == 2  # the mark went with the cache
    cache_dir = FeatureCache(tiny.features_dir, tiny_backbone.cache_key).path
    for f in [*cache_dir.glob("chunk-*"), *cache_dir.glob("base-*")]:
        f.unlink()  # the vectors deleted by hand, the marks left behind
    assert _embed(tiny, tiny_backbone).computed == 2

    # an item committed late, with an id below the mark (concurrent ingests on PostgreSQL)
    with tiny.store.session() as s:
        s.add(Item(id=100, sha256="f" * 64, path="b/img3.jpg", width=1, height=1))
    assert _embed(tiny, tiny_backbone).computed == 0  # sha 'fff..' is not the file: failed
    real = add_items(tiny, ["b/img4.jpg"])  # gets id 101
    _embed(tiny, tiny_backbone)
    with tiny.store.session() as s:
        sha = hashlib.sha256((tiny.image_root / "b/img5.jpg").read_bytes()).hexdigest()
        s.add(Item(id=50, sha256=sha, path="b/img5.jpg", width=1, height=1))
    summary = _embed(tiny, tiny_backbone)
    assert summary.computed == 1 and not {50, *real.values()} - set(
        load_pool_features(tiny, backbone_key=tiny_backbone.cache_key)[0].tolist())


def test_failed_items_are_retried_alone(tiny: Project, tiny_backbone: Backbone,
                                        asked: list[int]) -> None:
    ids = add_items(tiny, ["a/img0.png", "a/img1.png", "a/img2.png"])
    (tiny.image_root / "a/img1.png").unlink()
    first = _embed(tiny, tiny_backbone)
    assert (first.computed, [i for i, _ in first.failed]) == (2, [ids["a/img1.png"]])
    again = _embed(tiny, tiny_backbone)  # only the failed one is looked at again
    assert (again.computed, again.cached, len(again.failed), asked[-1]) == (0, 2, 1, 1)


def test_shards_keep_their_own_marks(tiny: Project, tiny_backbone: Backbone,
                                     asked: list[int]) -> None:
    ids = add_items(tiny)
    done = [_embed(tiny, tiny_backbone, shard=(i, 2)).computed for i in (0, 1)]
    assert sum(done) == len(ids)
    n_asked = len(asked)
    assert [_embed(tiny, tiny_backbone, shard=(i, 2)).computed for i in (0, 1)] == [0, 0]
    assert len(asked) == n_asked  # both shards: nothing looked up
    # the pool's mark made of the shards' (the lower: 5): only item 6 is looked up
    assert pending_items(tiny) == 0 and asked[n_asked:] == [1]
    whole = _embed(tiny, tiny_backbone)
    assert (whole.computed, whole.cached, asked[n_asked:]) == (0, len(ids), [1, 1])
    assert _embed(tiny, tiny_backbone).cached == len(ids) and len(asked) == n_asked + 2
    _fake_items(tiny, 0, 1)  # a new item, not cached: the marks do not cover it
    assert pending_items(tiny) == 1 and asked[-1] == 1
    every = [*ids.values(), 7]
    assert [_embed(tiny, tiny_backbone, shard=(i, 3)).items for i in range(3)] == \
        [sum(v % 3 == i for v in every) for i in range(3)]  # by the pool's mark


@pytest.mark.parametrize("live,pending,want", [
    (4, 0, 1), (4, 2047, 1), (4, 2048, 2), (4, 3 * 1024, 3), (4, 10**6, 4),
    (0, 10**6, 1), (1, 10**6, 1), (8, 5000, 4)])
def test_choose_embed_shards(live: int, pending: int, want: int) -> None:
    assert choose_embed_shards(live, pending, chunk=1024) == want


def _fake_items(project: Project, start: int, stop: int) -> None:
    """Items whose files were never embedded (their hashes are not in the cache)."""
    with project.store.session() as s:
        s.add_all(Item(sha256=f"{k:064x}", path=f"x/{k}.png", width=1, height=1)
                  for k in range(start, stop))


@pytest.mark.services
def test_round_start_shards_over_the_live_embed_workers(tiny: Project, redis_conn: Redis) -> None:
    from rq import Worker

    from workers import queues
    from workers.orchestrate import auto_embed_shards

    assert auto_embed_shards(tiny, redis_conn) == 1  # no worker at all
    q = queues.get_queue(redis_conn, tiny.settings, "embed")
    other = queues.get_queue(redis_conn, tiny.settings, "train")
    for k in range(3):
        Worker([q], connection=redis_conn, name=f"embed-{k}").register_birth()
    Worker([other], connection=redis_conn, name="train-0").register_birth()
    _fake_items(tiny, 0, 1500)
    assert auto_embed_shards(tiny, redis_conn) == 1  # < 2 chunks to embed: not worth it
    _fake_items(tiny, 1500, 3000)
    assert auto_embed_shards(tiny, redis_conn) == 2  # 3000 new: two chunks' worth
    _fake_items(tiny, 3000, 10000)
    assert auto_embed_shards(tiny, redis_conn) == 3  # one per live embed worker
    result = CliRunner().invoke(cli, ["--project", str(tiny.root), "round", "start",
                                      "--embed-shards", "5", "--json"])
    assert result.exit_code == 0, result.output
    assert len(q.job_ids) == 5  # an explicit --embed-shards wins


def test_cli_embed_check_looks_at_every_item(tiny: Project, asked: list[int]) -> None:
    add_items(tiny, ["a/img0.png", "a/img1.png"])
    run = CliRunner()
    args = ["--project", str(tiny.root), "embed", "--json"]
    assert run.invoke(cli, args).exit_code == 0 and asked == [2]
    assert run.invoke(cli, args).exit_code == 0 and asked == [2]  # nothing new: no lookup
    out = run.invoke(cli, [*args, "--check"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["cached"] == 2 and asked == [2, 2]


def test_a_killed_run_loses_only_its_unfinished_chunk(tiny: Project, tiny_backbone: Backbone,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    tiny.config.embed = EmbedConfig(**{**TINY, "batch_size": 1})
    add_items(tiny, ["a/img0.png", "a/img1.png"])
    _embed(tiny, tiny_backbone)  # a mark at the first two
    add_items(tiny, ["a/img2.png", "b/img3.jpg", "b/img4.jpg", "b/img5.jpg"])
    cache_dir = FeatureCache(tiny.features_dir, tiny_backbone.cache_key).path
    before = read_mark(cache_dir, (0, 1))
    real_put, puts = FeatureCache.put, [0]

    def put_then_die(self: FeatureCache, shas: list[str], X: object) -> None:
        if puts[0] == 1:  # the second chunk: the process dies before it is written
            raise KeyboardInterrupt
        puts[0] += 1
        real_put(self, shas, X)  # type: ignore[arg-type]

    monkeypatch.setattr(FeatureCache, "put", put_then_die)
    with pytest.raises(KeyboardInterrupt):
        _embed(tiny, tiny_backbone, chunk_size=2)
    assert read_mark(cache_dir, (0, 1)) == before  # a killed run moves no mark
    monkeypatch.setattr(FeatureCache, "put", real_put)
    again = _embed(tiny, tiny_backbone, chunk_size=2)
    assert (again.computed, again.cached, again.items) == (2, 4, 6)  # the unfinished chunk


def test_many_failed_items_are_retried(tiny: Project, tiny_backbone: Backbone) -> None:
    add_items(tiny, ["a/img0.png"])
    _fake_items(tiny, 0, 600)  # files that do not exist: more failed ids than SQL parameters
    first = _embed(tiny, tiny_backbone)
    assert (first.computed, len(first.failed)) == (1, 600)
    again = _embed(tiny, tiny_backbone)
    assert (again.computed, again.cached, len(again.failed), again.items) == (0, 1, 600, 601)
