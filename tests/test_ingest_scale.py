"""Ingest at scale: worker processes, batched writes, and re-ingest by (path, size, mtime).

Worker processes are real (spawned); ``processes_now`` makes the driver start them after
its first few files instead of only for a long run, so a few hundred files exercise them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import wait as futures_wait
from pathlib import Path
from typing import Any

import pytest
from factories import make_project, run_cli, write_image
from ingest_workers import dies_on_poison, init_fails
from sqlalchemy import select

import alearn.ingestion.driver as ingest_mod
import alearn.ingestion.parallel as parallel
import alearn.ingestion.records as records_mod
from alearn.exceptions import IngestError
from alearn.ingestion.decode import CRASH_REASON, Decoded, decode_image
from alearn.ingestion.driver import ingest
from alearn.project import Project
from alearn.store import FileRecord, Item

N = 240
MakeProject = Callable[..., Project]


def tree(root: Path, n: int = N) -> Path:
    """``n`` distinct 8x8 PNGs, 40 per folder, plus a few bad files and byte copies."""
    for i in range(n):
        write_image(root / f"d{i // 40}" / f"{i:04d}.png", seed=1000 + i, size=(8, 8))
    (root / "bad").mkdir()
    (root / "bad" / "empty.png").write_bytes(b"")
    (root / "bad" / "text.jpg").write_text("not an image")
    good = (root / "d0" / "0000.png").read_bytes()
    (root / "bad" / "truncated.png").write_bytes(good[: len(good) // 2])
    shutil.copy(root / "d1" / "0041.png", root / "copy-of-41.png")
    shutil.copy(root / "d5" / "0200.png", root / "d0" / "zz-copy-of-200.png")
    return root


def snapshot(project: Project) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The store's files (with their item's path) and items, in a comparable form."""
    with project.store.session() as s:
        paths = {id_: path for id_, path in s.execute(select(Item.id, Item.path))}
        files = sorted((f.path, f.status, f.reason, f.size, f.mtime_ns, paths.get(f.item_id))
                       for f in s.scalars(select(FileRecord)))
        items = sorted((i.sha256, i.path, i.width, i.height, i.extra)
                       for i in s.scalars(select(Item)))
    return files, items


@pytest.fixture
def new_project() -> Iterator[MakeProject]:
    """make_project, with every store it opened disposed of at the end."""
    made: list[Project] = []

    def make(root: Path, images: Path, **kw: Any) -> Project:
        made.append(make_project(root, images, **kw))
        return made[-1]

    yield make
    for project in made:
        project.store.dispose()


@pytest.fixture
def processes_now(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Start worker processes after the first probe; the list of pools' worker counts."""
    monkeypatch.setattr(parallel, "PROCESS_START_S", 0.0)
    started: list[int] = []
    real = parallel._over_processes

    def spy(pieces: Any, decode: Any, workers: int, *args: Any) -> Any:
        started.append(workers)
        return real(pieces, decode, workers, *args)

    monkeypatch.setattr(parallel, "_over_processes", spy)
    return started


def test_worker_processes_write_what_one_process_writes(
        tmp_path: Path, new_project: MakeProject, db_url: str, processes_now: list[int]) -> None:
    root = tree(tmp_path / "images")
    alone = new_project(tmp_path / "alone", root)
    one = ingest(alone, workers=0)
    assert processes_now == []
    pooled = new_project(tmp_path / "pooled", root, database_url=db_url)
    many = ingest(pooled, workers=2, batch_size=64, progress=True)
    assert processes_now == [2]
    assert (many.added, many.duplicate, many.rejected) == (one.added, one.duplicate,
                                                           one.rejected) == (N, 2, 3)
    assert sorted(many.rejections) == sorted(one.rejections)
    assert snapshot(pooled) == snapshot(alone)
    files, _ = snapshot(pooled)
    stats = {p: (size, mtime) for p, _, _, size, mtime, _ in files}
    st = (root / "d3" / "0123.png").stat()
    assert stats["d3/0123.png"] == (st.st_size, st.st_mtime_ns)


def test_a_worker_that_dies_loses_only_the_file_that_killed_it(
        tmp_path: Path, new_project: MakeProject, monkeypatch: pytest.MonkeyPatch,
        processes_now: list[int]) -> None:
    root = tree(tmp_path / "images")
    write_image(root / "d2" / "0100-poison.png", seed=5)
    project = new_project(tmp_path / "p", root)
    monkeypatch.setattr(ingest_mod, "decode_image", dies_on_poison)
    first = ingest(project, workers=2, batch_size=64)
    assert processes_now == [2]
    assert dict(first.rejections)["d2/0100-poison.png"] == CRASH_REASON
    assert (first.added, first.duplicate, first.rejected) == (N, 2, 4)
    # the next run tries it again (with a decoder that copes: it is a good image)
    monkeypatch.setattr(ingest_mod, "decode_image", decode_image)
    again = ingest(project, workers=0)
    assert (again.added, again.rejected, again.skipped) == (1, 0, N + 5)


class BreaksBetweenSubmits:
    """A real pool that lets the poison file's chunk kill its worker before it takes the
    next chunk, so the pool is already broken when ``submit`` is called (what load on the
    machine can do to the order of events)."""

    def __init__(self, pool: Any) -> None:
        self.pool, self.poisoned, self.waited = pool, None, False

    def submit(self, fn: Any, *args: Any) -> Any:
        if self.poisoned is not None and not self.waited:
            self.waited = True
            futures_wait([self.poisoned])  # the worker is dead and the pool broken now
        future = self.pool.submit(fn, *args)
        if fn is parallel.decode_chunk and any("poison" in str(p) for p in args[1]):
            self.poisoned = future
        return future

    def shutdown(self, **kw: Any) -> None:
        self.pool.shutdown(**kw)


def test_a_worker_that_dies_between_two_submits_loses_only_its_file(
        tmp_path: Path, new_project: MakeProject, monkeypatch: pytest.MonkeyPatch,
        processes_now: list[int]) -> None:
    root = tree(tmp_path / "images")
    write_image(root / "d1" / "0040-poison.png", seed=5)  # in the first chunk sent
    project = new_project(tmp_path / "p", root)
    monkeypatch.setattr(ingest_mod, "decode_image", dies_on_poison)
    real_pool, pools = parallel._pool, []

    def pool(workers: int) -> Any:
        pools.append(BreaksBetweenSubmits(real_pool(workers)) if workers == 2
                     else real_pool(workers))
        return pools[-1]

    monkeypatch.setattr(parallel, "_pool", pool)
    first = ingest(project, workers=2, batch_size=64)
    assert pools[0].waited  # the broken pool was handed another chunk
    assert dict(first.rejections)["d1/0040-poison.png"] == CRASH_REASON
    assert (first.added, first.duplicate, first.rejected) == (N, 2, 4)


def test_worker_processes_that_cannot_start_are_one_error(
        tmp_path: Path, new_project: MakeProject, monkeypatch: pytest.MonkeyPatch,
        processes_now: list[int]) -> None:
    project = new_project(tmp_path / "p", tree(tmp_path / "images"))
    monkeypatch.setattr(parallel, "_init_worker", init_fails)
    with pytest.raises(IngestError, match="could not start the decode worker processes"):
        ingest(project, workers=2)
    monkeypatch.undo()
    assert ingest(project, workers=0).added == N  # nothing half-done is in the way


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Spies on the decoder and on re-ingest's hashing reads: the paths each was given."""
    seen: dict[str, list[str]] = {"decoded": [], "hashed": []}
    real_read = records_mod.read_regular_stat

    def decode(path: str, **kw: Any) -> Decoded:
        seen["decoded"].append(str(path))
        return decode_image(path, **kw)

    def read(path: Any, max_bytes: int, **kw: Any) -> Any:
        seen["hashed"].append(str(path))
        return real_read(path, max_bytes, **kw)

    monkeypatch.setattr(ingest_mod, "decode_image", decode)
    monkeypatch.setattr(records_mod, "read_regular_stat", read)
    return seen


def test_reingest_of_an_unchanged_tree_reads_no_file(
        tmp_path: Path, new_project: MakeProject, reads: dict[str, list[str]]) -> None:
    project = new_project(tmp_path / "p", tree(tmp_path / "images"))
    ingest(project)
    assert len(reads["decoded"]) == N + 5 and reads["hashed"] == []
    before = snapshot(project)
    again = ingest(project)
    assert (again.added, again.rejected, again.skipped, again.changed) == (0, 0, N + 5, [])
    assert len(reads["decoded"]) == N + 5 and reads["hashed"] == []  # nothing read
    assert snapshot(project) == before


def test_changes_are_found_by_size_and_time_and_only_moved_files_are_hashed(
        tmp_path: Path, new_project: MakeProject, reads: dict[str, list[str]]) -> None:
    root = tree(tmp_path / "images")
    project = new_project(tmp_path / "p", root)
    ingest(project)
    touched, rewritten, resized, sneaky = (root / "d0" / "0001.png", root / "d0" / "0002.png",
                                           root / "d0" / "0003.png", root / "d0" / "0004.png")
    st = {p: p.stat() for p in (touched, rewritten, resized, sneaky)}
    os.utime(touched, ns=(st[touched].st_atime_ns, st[touched].st_mtime_ns + 10**9))
    data = bytearray(rewritten.read_bytes())
    data[-20] ^= 0xFF  # same size, other bytes, new time
    rewritten.write_bytes(bytes(data))
    resized.write_bytes(resized.read_bytes() + b"\0")  # other size...
    os.utime(resized, ns=(st[resized].st_atime_ns, st[resized].st_mtime_ns))  # ...old time
    data = bytearray(sneaky.read_bytes())
    data[-20] ^= 0xFF  # same size, other bytes, and the old time put back (rsync -t)
    sneaky.write_bytes(bytes(data))
    os.utime(sneaky, ns=(st[sneaky].st_atime_ns, st[sneaky].st_mtime_ns))
    write_image(root / "d9" / "new.png", seed=99, size=(8, 8))
    n_decoded = len(reads["decoded"])
    again = ingest(project)
    assert sorted(p for p, _ in again.changed) == ["d0/0002.png", "d0/0003.png"]
    assert all("bytes changed since it was ingested" in why for _, why in again.changed)
    assert sorted(reads["hashed"]) == sorted(str(p) for p in (touched, rewritten, resized))
    assert reads["decoded"][n_decoded:] == [str(root / "d9" / "new.png")]
    assert (again.added, again.skipped) == (1, N + 5 - 2)
    with project.store.session() as s:
        mtime = s.scalar(select(FileRecord.mtime_ns).where(FileRecord.path == "d0/0001.png"))
    assert mtime == touched.stat().st_mtime_ns  # recorded: the next run skips it unread
    # --rehash reads every known file and finds the change that kept size and time
    reads["hashed"].clear()
    full = ingest(project, rehash=True)
    assert sorted(p for p, _ in full.changed) == ["d0/0002.png", "d0/0003.png", "d0/0004.png"]
    assert len(reads["hashed"]) == N + 3  # every file with an item (the rejected have none)


def test_a_rejected_file_that_becomes_an_image_of_the_same_size_is_read_again(
        tmp_path: Path, new_project: MakeProject) -> None:
    root = tmp_path / "images"
    good = write_image(tmp_path / "elsewhere" / "good.png", seed=3).read_bytes()
    target = root / "late.png"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\0" * len(good))
    project = new_project(tmp_path / "p", root)
    assert ingest(project).rejected == 1
    assert ingest(project).skipped == 1  # unchanged: not read again
    old = target.stat().st_mtime_ns
    target.write_bytes(good)
    os.utime(target, ns=(old + 10**9, old + 10**9))
    again = ingest(project)
    assert (again.added, again.rejected) == (1, 0)
    with project.store.session() as s:
        rec = s.scalars(select(FileRecord).where(FileRecord.path == "late.png")).one()
    assert (rec.status, rec.reason, rec.size) == ("item", None, len(good))


def test_cli_ingest_with_workers_and_rehash(
        tmp_path: Path, new_project: MakeProject, processes_now: list[int],
        capsys: pytest.CaptureFixture[str]) -> None:
    root = tree(tmp_path / "images")
    project = new_project(tmp_path / "p", root)
    at = ["--project", str(project.root)]
    code, out, _ = run_cli([*at, "ingest", "--workers", "2", "--json"], capsys)
    assert code == 0 and processes_now == [2]
    assert (json.loads(out)["added"], json.loads(out)["rejected"]) == (N, 3)
    target = root / "d1" / "0050.png"
    st = target.stat()
    data = bytearray(target.read_bytes())
    data[-20] ^= 0xFF
    target.write_bytes(bytes(data))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    code, out, _ = run_cli([*at, "ingest", "--json"], capsys)
    assert code == 0 and json.loads(out)["changed"] == []
    code, out, _ = run_cli([*at, "ingest", "--rehash", "--json"], capsys)
    assert code == 0 and [c["path"] for c in json.loads(out)["changed"]] == ["d1/0050.png"]
