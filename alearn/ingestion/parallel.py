"""Decoding many files: in the calling process, or over worker processes.

Decoding is CPU-bound Python and C (Pillow holds the GIL for much of a small image), so
threads do not scale; ``workers >= 1`` starts that many processes (``spawn``: no fork of a
process that may hold threads or open database connections). Files go to the workers in
chunks of paths and come back as :class:`~alearn.ingestion.decode.Decoded` records (sent
as plain tuples), in order, so the caller writes the store as results arrive while the
workers decode on. A spawned worker imports only what decoding needs, not the main
script of the ingesting process (a CLI's imports all of alearn).

A worker that dies (a codec that crashes on a hostile file, the OOM killer) loses
nothing: the files of the chunks in flight are decoded again, one per task, in a fresh
process, and only a file that kills its worker again is rejected, with
:data:`CRASH_REASON` (ingest retries such a file on its next run).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager

from PIL import Image

from alearn.exceptions import IngestError
from alearn.ingestion.decode import CRASH_REASON, Decoded
from alearn.ingestion.scan import Candidate

logger = logging.getLogger(__name__)

#: About what starting the worker processes costs (each imports Python, Pillow and
#: the decoder: some 0.5 s of CPU), in seconds. Processes start only once decoding here has
#: shown that the rest would take several times that.
PROCESS_START_S = 1.0
#: Files decoded here between two looks at the clock, before processes start.
PROBE_FILES = 32

DecodeFn = Callable[..., Decoded]


def decode_batches(todo: list[Candidate], decode: DecodeFn, *, workers: int, batch_size: int,
                   max_pixels: int, max_bytes: int,
                   ) -> Iterator[tuple[list[Candidate], list[Decoded]]]:
    """Decode ``todo`` in order, yielding (files, results) pieces of at most ``batch_size``.

    With ``workers`` 0 this process decodes everything. Otherwise it decodes the first
    files itself and times them; once the rest would take more than ``3 *
    PROCESS_START_S`` here, ``workers`` processes decode the rest (a few hundred small
    files, or a handful of large photos, never start a process). ``decode`` is called as
    ``decode(path, max_pixels=, max_bytes=)``; with processes it must be picklable (a
    module-level function).
    """
    step = batch_size if workers < 1 else min(batch_size, PROBE_FILES)
    done, spent = 0, 0.0
    while done < len(todo):
        piece = todo[done:done + step]
        began = time.perf_counter()
        results = [decode(c.path, max_pixels=max_pixels, max_bytes=max_bytes) for c in piece]
        spent += time.perf_counter() - began
        yield piece, results
        done += len(piece)
        if workers >= 1 and spent / done * (len(todo) - done) > 3 * PROCESS_START_S:
            break
    rest = todo[done:]
    if not rest:
        return
    # several chunks per worker keep every worker busy while the caller writes
    chunk = max(1, min(batch_size, 256, len(rest) // (workers * 4)))
    pieces = [rest[i:i + chunk] for i in range(0, len(rest), chunk)]
    yield from _over_processes(pieces, decode, workers, max_pixels, max_bytes)


def _over_processes(pieces: list[list[Candidate]], decode: DecodeFn, workers: int,
                    max_pixels: int, max_bytes: int,
                    ) -> Iterator[tuple[list[Candidate], list[Decoded]]]:
    window = 4 * workers  # chunks in flight: bounded memory, workers never idle
    nxt = 0
    while nxt < len(pieces):
        pool = _pool(workers)
        inflight: deque[tuple[list[Candidate], Future[list[tuple[object, ...]]]]] = deque()
        try:
            while nxt < len(pieces) or inflight:
                try:
                    while nxt < len(pieces) and len(inflight) < window:
                        paths = [c.path for c in pieces[nxt]]
                        # a worker that died since the last submit breaks the pool here
                        inflight.append((pieces[nxt], pool.submit(
                            decode_chunk, decode, paths, max_pixels, max_bytes)))
                        nxt += 1
                    batch, future = inflight[0]
                    results = _decoded(future.result())
                except BrokenProcessPool:
                    break
                inflight.popleft()
                yield batch, results
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if inflight:  # a worker died: find the file that killed it, lose nothing else
            logger.warning("ingest: a decode worker died; decoding %d chunks again, one "
                           "file at a time", len(inflight))
            yield from _one_by_one(inflight, decode, max_pixels, max_bytes)


def _one_by_one(inflight: deque[tuple[list[Candidate], Future[list[tuple[object, ...]]]]],
                decode: DecodeFn, max_pixels: int, max_bytes: int,
                ) -> Iterator[tuple[list[Candidate], list[Decoded]]]:
    """The chunks in flight when a worker died: those that finished as they are, the
    others one file per task in a single fresh worker, so a death names its file."""
    pool: ProcessPoolExecutor | None = None
    try:
        for batch, future in inflight:
            if future.done() and not future.cancelled() and future.exception() is None:
                yield batch, _decoded(future.result())  # finished before the pool broke
                continue
            results = []
            for c in batch:
                pool = pool or _pool(1)
                try:
                    results += _decoded(pool.submit(decode_chunk, decode, [c.path],
                                                    max_pixels, max_bytes).result())
                except BrokenProcessPool:
                    logger.warning("ingest: the decoder's worker died on path=%r", c.rel)
                    pool.shutdown(wait=True)
                    pool = None
                    results.append(Decoded(None, error=CRASH_REASON))
            yield batch, results
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _pool(workers: int) -> ProcessPoolExecutor:
    """A started pool; IngestError if its processes cannot start (not a file's fault)."""
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker)
    try:
        with _main_not_imported():  # processes start on demand: start them all now
            started = [pool.submit(_ready) for _ in range(workers)]
        for ready in started:
            ready.result()
    except BrokenProcessPool as exc:
        pool.shutdown(wait=True)
        raise IngestError(
            f"could not start the decode worker processes ({exc}). Ingest with workers=0 "
            "(decode in this process).") from None
    return pool


def _ready() -> bool:
    return True


@contextmanager
def _main_not_imported() -> Iterator[None]:
    """Processes spawned in here do not import this process's main script or module.

    A spawned process imports the main script first, so that it can unpickle functions
    defined there; the decode tasks are module-level functions of importable modules,
    and a main script (the CLI's, a benchmark's) would cost each worker a second of
    imports, or run unguarded code a second time.
    """
    main = sys.modules.get("__main__")
    saved: dict[str, object] = {k: main.__dict__[k] for k in ("__file__", "__spec__")
             if main is not None and k in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__dict__["__spec__"] = None
        yield
    finally:
        if main is not None:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


def _init_worker() -> None:
    # Ctrl-C stops the ingest in the parent, which shuts the pool down; a worker that
    # raised KeyboardInterrupt itself would only break the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def decode_chunk(decode: DecodeFn, paths: list[str], max_pixels: int,
                 max_bytes: int) -> list[tuple[object, ...]]:
    """Decode ``paths`` in a worker process (the task each chunk is); plain tuples go
    back (a third of the pickling of named ones)."""
    return [tuple(decode(p, max_pixels=max_pixels, max_bytes=max_bytes)) for p in paths]


def _decoded(rows: list[tuple[object, ...]]) -> list[Decoded]:
    return [Decoded._make(r) for r in rows]
