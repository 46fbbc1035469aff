"""The one place tests build what they need: images, projects, items, rounds and votes.

Fixtures in conftest.py call these; a test that needs its own shape calls them directly
(``from factories import ...``). Nothing here reaches Redis, PostgreSQL or Label Studio:
the store is whatever ``project.settings`` points at.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alearn.config import EmbedConfig, Settings
from alearn.ingestion.driver import ingest
from alearn.project import Project
from alearn.rounds.lifecycle import PUSHED, create_round, transition
from alearn.store import Annotation, Item, Label, Selection, Store

CLASSES = ["cat", "dog", "bird"]
ANNOTATORS = ("ann-a", "ann-b", "ann-c")
# timm's tiny test network, untrained: embeds a few images in well under a second
TINY_EMBED = {"backbone": "test_efficientnet", "weights": "none", "image_size": 32,
              "batch_size": 8, "num_workers": 0}
# in a voted_round, item ``k``'s Label Studio task id is FIRST_TASK_ID + k
FIRST_TASK_ID = 700


def write_image(path: Path, seed: int = 0, size: tuple[int, int] = (32, 24), mode: str = "RGB",
                fmt: str | None = None) -> Path:
    """Write a small random image (distinct per seed)."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    arr = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(arr.squeeze() if channels == 1 else arr, mode=mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def image_tree(root: Path) -> Path:
    """Six distinct small images in nested folders: a/img0-2.png and b/img3-5.jpg."""
    for i in range(3):
        write_image(root / "a" / f"img{i}.png", seed=i)
    for i in range(3, 6):
        write_image(root / "b" / f"img{i}.jpg", seed=i)
    return root


def make_project(root: Path, images: Path, *, classes: list[str] | None = None,
                 database_url: str | None = None) -> Project:
    """An initialised project at ``root`` over ``images``; SQLite in the project unless
    ``database_url`` is given."""
    settings = Settings(database_url=database_url) if database_url else Settings()
    return Project.init(root, classes=classes or CLASSES, images=images, settings=settings)


def ingested_project(tmp_path: Path, n_images: int, *, seed: int,
                     size: tuple[int, int] = (20, 20), classes: list[str] | None = None,
                     embed: dict[str, object] | None = None, **rounds: object) -> Project:
    """A project at ``tmp_path/proj`` over ``n_images`` distinct PNGs (``000.png``...) in
    ``tmp_path/images``, embedding with the tiny test network, all ingested.

    ``embed`` overrides fields of :data:`TINY_EMBED`; ``rounds`` sets fields of the
    ``[rounds]`` config (batch_size=..., overlap=...).
    """
    root = tmp_path / "images"
    for i in range(n_images):
        write_image(root / f"{i:03d}.png", seed=seed + i, size=size)
    project = Project.init(tmp_path / "proj", classes=classes or CLASSES, images=root,
                           settings=Settings())
    project.config.embed = EmbedConfig(**{**TINY_EMBED, **(embed or {})})
    for name, value in rounds.items():
        setattr(project.config.rounds, name, value)
    project.save_config()
    assert ingest(project).added == n_images
    return project


def add_items(store: Store, keys: list[int]) -> dict[int, int]:
    """One store item per key ``k`` (sha256 ``k`` in hex, path ``k.png``); key -> item id."""
    with store.session() as s:
        items = [Item(sha256=f"{k:064x}", path=f"{k}.png", width=1, height=1) for k in keys]
        s.add_all(items)
        s.flush()
        return {k: it.id for k, it in zip(keys, items, strict=True)}


def voted_round(project: Project, votes: dict[int, list[str]], *,
                gold: dict[int, str] | None = None) -> tuple[int, dict[int, int]]:
    """A pushed round over new items, one per key of ``votes``, each voted on by the first
    ``len(labels)`` of :data:`ANNOTATORS` (annotation ids 1, 2, ... in order, lead times
    2.0 s, 3.0 s, ...). Item ``k`` is task ``FIRST_TASK_ID + k``; each item in ``gold`` is
    selected as gold and has that manifest gold label.

    Returns the round id and the item id of each key.
    """
    gold = gold or {}
    store = project.store
    ids = add_items(store, list(votes))
    rnd = create_round(store, strategy="random", batch_size=len(votes), overlap=3)
    with store.session() as s:
        n = 0
        for rank, (k, labels) in enumerate(votes.items()):
            assert len(labels) <= len(ANNOTATORS), labels
            task = FIRST_TASK_ID + k
            s.add(Selection(round_id=rnd.id, item_id=ids[k], rank=rank, score=0.0,
                            ls_task_id=task, is_gold=k in gold))
            for who, label in zip(ANNOTATORS, labels, strict=False):
                n += 1
                s.add(Annotation(ls_annotation_id=n, ls_task_id=task, item_id=ids[k],
                                 round_id=rnd.id, annotator=who, label=label,
                                 lead_time=1.0 + n))
        for k, label in gold.items():
            s.add(Label(item_id=ids[k], label=label, origin="manifest", is_gold=True))
    transition(store, rnd.id, PUSHED)
    return rnd.id, ids


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``alearn ARGV`` in this process: (exit code, stdout, stderr)."""
    from alearn.cli import main

    with pytest.raises(SystemExit) as stop:
        main(argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(stop.value.code or 0), out.out, out.err
