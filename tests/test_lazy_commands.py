"""Commands import what they use: ``round plan`` with nothing to embed loads no backbone
(timm, torchvision), and none of torch when the select of the same head already scored
the pool; the remembered feature-cache key and pool scores are exactly what computing
them gives, and are not used once anything they depend on changes."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from factories import TINY_EMBED, ingested_project
from factories import run_cli as run
from sqlalchemy import insert

import alearn.features.backbone as backbone_mod
import alearn.features.cache_key as cache_key_mod
import alearn.query.scoring as scoring
from alearn.config import EmbedConfig
from alearn.features.cache_key import MEMO_NAME, project_cache_key
from alearn.features.pool import derived_dir, open_pool
from alearn.model.current import head_of
from alearn.project import Project
from alearn.query.scoring import pool_scores, score_pool
from alearn.query.selection import plan_batch
from alearn.store import Label
from tests.test_scoring import _label, big  # noqa: F401  (``big``: a fixture)

ROOT = Path(__file__).resolve().parents[1]


def _no_backbone(*_a: object, **_k: object) -> str:
    raise AssertionError("the key is remembered: the backbone module is not asked")


# --------------------------------------------------------------------- the cache key
def test_the_cache_key_is_remembered_and_equals_the_computed_one(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    project.config.embed = EmbedConfig(**TINY_EMBED)
    want = backbone_mod.cache_key_for(project.config.embed, root=project.root)
    assert project_cache_key(project) == want
    assert (project.features_dir / MEMO_NAME).is_file()

    monkeypatch.setattr(backbone_mod, "cache_key_for", _no_backbone)
    assert project_cache_key(project) == want  # remembered

    # another image size is another key: computed, not taken from the memo
    monkeypatch.undo()
    project.config.embed = EmbedConfig(**{**TINY_EMBED, "image_size": 48})
    other = project_cache_key(project)
    assert other == backbone_mod.cache_key_for(project.config.embed, root=project.root)
    assert other != want


def test_a_new_timm_or_a_weights_file_is_not_answered_from_the_memo(
        project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project.config.embed = EmbedConfig(**TINY_EMBED)
    project_cache_key(project)
    calls: list[str] = []
    real = backbone_mod.cache_key_for

    def counted(cfg: EmbedConfig, *, root: Path | None = None) -> str:
        calls.append(cfg.weights)
        return real(cfg, root=root)

    monkeypatch.setattr(backbone_mod, "cache_key_for", counted)
    version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda d: "999.0" if d == "timm" else version(d))
    cache_key_mod._version.cache_clear()  # versions are read once per process
    try:
        project_cache_key(project)  # timm changed: its preprocessing defaults may have too
    finally:
        monkeypatch.setattr(importlib.metadata, "version", version)
        cache_key_mod._version.cache_clear()
    assert calls == ["none"]

    weights = tmp_path / "w.pth"
    import timm
    import torch

    torch.save(timm.create_model("test_efficientnet").state_dict(), weights)
    project.config.embed = EmbedConfig(**{**TINY_EMBED, "weights": str(weights)})
    first, second = project_cache_key(project), project_cache_key(project)
    assert first == second and calls[1:] == [str(weights), str(weights)]  # never remembered


# --------------------------------------------------------------- remembered scores
def test_plan_reads_the_remembered_scores_and_picks_as_if_it_scored(
        project: Project, big: dict, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    _label(project, range(1, 91), big["truth"])
    first = plan_batch(project, batch_size=12, strategy="margin")
    kept = list(derived_dir(project, open_pool(project).key).glob("scores-*.npz"))
    assert len(kept) == 1 and first.model_version in kept[0].name

    def no_scoring(*_a: object, **_k: object) -> None:
        raise AssertionError("the scores of this head and pool are remembered")

    monkeypatch.setattr(scoring, "score_pool", no_scoring)
    assert plan_batch(project, batch_size=12, strategy="margin") == first
    # the select recorded its batch: the next plan leaves those items out, after scoring
    taken = [it.item_id for it in first.items]
    again = plan_batch(project, batch_size=12, strategy="margin", exclude=taken)
    monkeypatch.undo()
    kept[0].unlink()
    fresh = plan_batch(project, batch_size=12, strategy="margin", exclude=taken)
    assert again == fresh and not set(taken) & {it.item_id for it in again.items}


def test_remembered_scores_are_the_scores_and_a_new_head_is_scored_anew(
        project: Project, big: dict, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    _label(project, range(1, 61), big["truth"])
    version = plan_batch(project, batch_size=5, strategy="margin").model_version
    assert version is not None
    pool, head = open_pool(project), head_of(project, version).head
    got = pool_scores(project, pool, head, "margin", version)
    want = score_pool(pool, head, "margin")
    for name in ("ids", "utility", "predicted"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))

    scored: list[str] = []
    real = scoring.score_pool

    def counted(pool_: object, head_: object, utility: str) -> object:
        scored.append(utility)
        return real(pool_, head_, utility)  # type: ignore[arg-type]

    monkeypatch.setattr(scoring, "score_pool", counted)
    plan_batch(project, batch_size=5, strategy="entropy")  # another utility
    with project.store.session() as s:  # more labels: another head version
        s.execute(insert(Label), [{"item_id": i, "label": str(big["truth"][i - 1]),
                                   "origin": "consensus"} for i in range(61, 71)])
    newer = plan_batch(project, batch_size=5, strategy="margin")
    assert newer.model_version != version and scored == ["entropy", "margin"]

    for path in derived_dir(project, open_pool(project).key).glob("scores-*"):
        path.write_bytes(b"not an npz")  # unreadable: scored again, same plan
    assert plan_batch(project, batch_size=5, strategy="margin") == newer
    assert scored == ["entropy", "margin", "margin"]


# ------------------------------------------------- round plan in a process of its own
_CHILD = """
import json, sys
from alearn.cli import main
try:
    main(sys.argv[1:])
except SystemExit as stop:
    assert not stop.code, stop.code
heavy = ("torch", "timm", "torchvision")
print(json.dumps(sorted(m for m in heavy if m in sys.modules)), file=sys.stderr)
"""


def _plan_in_new_process(argv: list[str]) -> tuple[dict, list[str]]:
    done = subprocess.run([sys.executable, "-c", _CHILD, *argv], capture_output=True,
                          text=True, cwd=ROOT, check=True, timeout=300)
    return json.loads(done.stdout), json.loads(done.stderr.strip().splitlines()[-1])


@pytest.mark.slow
def test_round_plan_loads_the_backbone_only_when_there_is_something_to_embed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = ingested_project(tmp_path, 12, seed=700)
    with project.store.session() as s:
        s.execute(insert(Label), [{"item_id": i, "label": ["cat", "dog", "bird"][i % 3],
                                   "origin": "manifest"} for i in range(1, 7)])
    argv = ["--project", str(project.root), "round", "plan", "--json", "--batch-size", "4",
            "--strategy", "margin"]
    code, out, err = run(argv, capsys)  # embeds the 12 images first, then plans
    assert code == 0 and "Embedded 12 new images first" in err
    embedded_first = json.loads(out)

    plan, heavy = _plan_in_new_process(argv)  # nothing to embed; the pool scored above
    assert plan == embedded_first and heavy == []

    for path in project.features_dir.rglob("scores-*.npz"):
        path.unlink()
    plan, heavy = _plan_in_new_process(argv)  # scores the pool itself: torch, no timm
    assert plan == embedded_first and heavy == ["torch"]


# ------------------------------------------------------------------ the worker preload
_PRELOAD = """
import gc, json, sys
from workers.worker import preload
preload(sys.argv[1].split(","))
print(json.dumps({"timm": "timm" in sys.modules, "torch": "torch" in sys.modules,
                  "sklearn": "sklearn.neighbors" in sys.modules, "frozen": gc.get_freeze_count()}))
"""


@pytest.mark.parametrize(("queues", "timm"), [("train,sync,round", False),
                                              ("embed,train,sync,round", True)])
def test_a_worker_preloads_what_its_jobs_import_and_freezes_it(queues: str, timm: bool) -> None:
    """Round modules import torch and scikit-learn inside their functions; a worker
    imports them once before forking, so no job does, and only an embed worker loads the
    backbone's libraries. The heap is then frozen out of the collector's passes."""
    got = json.loads(subprocess.run([sys.executable, "-c", _PRELOAD, queues], check=True,
                                    capture_output=True, text=True, cwd=ROOT).stdout)
    assert got["torch"] and got["sklearn"] and got["timm"] is timm
    assert got["frozen"] > 10_000
