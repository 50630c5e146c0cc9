"""What both GPU modes (portrait, scene) do with a batch around the diffusion call.

- ``generate_in_chunks``: the batch's images ``limit.max_batch`` at a time, through
  ``largest_chunk``, the one out-of-memory path (halve, remember, go on). While chunk k
  generates, chunk k+1's sampler noise is built on the ``noise_pool`` thread (``prepare``), and
  chunk k-1's images are encoded and uploaded on the ``io_pool`` threads (``Uploads``).
- ``Uploads``: at most one chunk's images wait for storage while the next chunk generates (the
  bound on memory held for uploads); every image's outcome is kept, none is dropped.
- ``settle_store``: the one store-retry path (a transient upload failure retried here per
  ``RETRY_POLICY`` when the caller asks, else handed back), and ``finished``: the one mapping
  from a store outcome to a key's ``Finished``.

Nothing here depends on the mode; ``workers.gpu.stage`` (portraits) and ``workers.gpu.scene``
use it, and neither imports the other's internals.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import numpy as np
import torch

from shared.errors import DeviceOutOfMemoryError, TransientError, call_with_retries
from shared.imageio import content_type, encode_image
from shared.messages import PromptTask, ResultRecord
from shared.results import error_record
from shared.storage import Storage, check_output_uri

log = logging.getLogger(__name__)


class BatchLimit(Protocol):
    #: the largest batch known to fit; lowered when the device runs out of memory
    max_batch: int | None


@dataclass
class Finished:
    """What became of one key of a batch: a record to publish, or a transient failure that the
    caller retries its own way (the Celery task re-sends the message)."""

    task: PromptTask  # with the GPU models' digests merged into ``models``
    record: ResultRecord | None
    transient: TransientError | None = None


# -- the one out-of-memory path ---------------------------------------------------------------


def largest_chunk(start: int, stop: int, run: Callable[[int, int], list], limit: BatchLimit) -> list:
    """``run(start, start + n)`` for the largest ``n`` up to ``limit.max_batch`` that fits. On
    OOM the cache is emptied, ``limit.max_batch`` halved and the call tried again; at one image it
    raises ``DeviceOutOfMemoryError`` (transient: another worker may have a bigger device)."""
    while True:
        size = min(limit.max_batch or stop - start, stop - start)
        try:
            return run(start, start + size)
        except torch.OutOfMemoryError as exc:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if size == 1:
                raise DeviceOutOfMemoryError("one image does not fit on the device") from exc
            limit.max_batch = size // 2
            log.warning("out of memory at batch %d; batches capped at %d", size, limit.max_batch)


#: ``run(start, stop, noise)``: the images of items ``start:stop``; ``noise`` is what
#: ``prepare(start, stop)`` built ahead for them, or None (then ``run`` builds its own)
RunChunk = Callable[[int, int, Any], list]


def generate_in_chunks(
    count: int,
    run: RunChunk,
    limit: BatchLimit,
    *,
    prepare: Callable[[int, int], Any] | None = None,
    on_chunk: Callable[[int, list], None] | None = None,
) -> list:
    """The images of ``count`` items in chunks of at most ``limit.max_batch`` (``largest_chunk``).
    When a chunk starts, the next chunk's ``prepare`` is submitted to ``noise_pool`` so that it is
    built while this one generates; ``on_chunk(start, images)`` is called after each chunk (the
    caller starts its uploads there). What ``prepare`` builds must not change the images: a
    chunk whose prepared noise is missing, late or failed simply builds its own."""
    ahead = _Ahead(prepare, count)
    images: list = []
    while len(images) < count:
        start = len(images)
        chunk = largest_chunk(start, count, lambda a, b: run(a, b, ahead.take(a, b)), limit)
        if on_chunk is not None:
            on_chunk(start, chunk)
        images += chunk
    return images


class _Ahead:
    """The next chunk's ``prepare``, running on ``noise_pool`` while this chunk generates."""

    def __init__(self, prepare: Callable[[int, int], Any] | None, count: int):
        self.prepare, self.count = prepare, count
        self.pending: tuple[int, Future] | None = None

    def take(self, start: int, stop: int) -> Any:
        """What was built ahead for a chunk beginning at ``start`` (None if nothing was), after
        submitting the build of the chunk that follows ``start:stop`` at the same size."""
        if self.prepare is None:
            return None
        ready = None
        if self.pending is not None and self.pending[0] == start:
            try:
                ready = self.pending[1].result()
            except Exception:  # noqa: BLE001 - the chunk builds its own (and meets the error there)
                log.debug("noise built ahead failed; built in place", exc_info=True)
        self.pending = None
        if stop < self.count:
            after = min(self.count, stop + (stop - start))
            self.pending = (stop, noise_pool().submit(self.prepare, stop, after))
        return ready


# -- storing images: the io pool, overlapped uploads, the one store-retry path -----------------

#: threads of ``io_pool``: a batch's image uploads and sidecar PUTs (S3 calls and PIL encoding
#: release the GIL)
IO_THREADS = 8
_io: tuple[int, ThreadPoolExecutor] | None = None
_noise: tuple[int, ThreadPoolExecutor] | None = None


def io_pool() -> ThreadPoolExecutor:
    """The process's one bounded pool for storage calls, created on first use (after fork)."""
    global _io
    if _io is None or _io[0] != os.getpid():
        _io = (os.getpid(), ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="veil-io"))
    return _io[1]


def noise_pool() -> ThreadPoolExecutor:
    """The process's one thread that builds the next chunk's sampler noise (after fork)."""
    global _noise
    if _noise is None or _noise[0] != os.getpid():
        _noise = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="veil-noise"))
    return _noise[1]


def store_image(
    task: PromptTask, pixels: np.ndarray, storage: Storage, timings: dict[str, float] | None = None
) -> None:
    check_output_uri(task.output_uri)  # a received message: ``UnsafeKeyError``, a failed record, no write
    t0 = time.perf_counter()
    data = encode_image(pixels, task.output_uri)
    t1 = time.perf_counter()
    storage.write(task.output_uri, data, content_type(task.output_uri))
    if timings is not None:
        timings.update(encode=t1 - t0, upload=time.perf_counter() - t1)


class Uploads:
    """A batch's images encoded and stored on ``io_pool`` as their chunks come out of the
    generator: ``add`` waits for the previous chunk's uploads before it queues this chunk's, so
    at most one chunk's images wait for storage while the next chunk generates. ``errors`` waits
    for all and gives each item's exception (None: stored)."""

    def __init__(self, tasks: list[PromptTask], storage: Storage, timings: list[dict[str, float]]):
        self.tasks, self.storage, self.timings = tasks, storage, timings
        self._futures: dict[int, Future] = {}
        self._last: list[Future] = []
        #: seconds ``add`` waited for the previous chunk's uploads (not generation time)
        self.waited_s = 0.0

    def add(self, start: int, images: list[np.ndarray]) -> None:
        t0 = time.perf_counter()
        wait(self._last)
        self.waited_s += time.perf_counter() - t0
        pool = io_pool()
        self._last = [
            pool.submit(store_image, self.tasks[i], px, self.storage, self.timings[i])
            for i, px in enumerate(images, start)
        ]
        self._futures.update(zip(range(start, start + len(images)), self._last, strict=True))

    def wait(self) -> None:
        """Every queued upload ended (a failed batch waits here before it tries its keys again)."""
        wait(self._futures.values())

    def errors(self) -> list[BaseException | None]:
        self.wait()
        return [self._futures[i].exception() if i in self._futures else None for i in range(len(self.tasks))]


def store_images(
    tasks: list[PromptTask],
    images: list[np.ndarray],
    storage: Storage,
    timings: list[dict[str, float]] | None = None,
) -> list[BaseException | None]:
    """Encode and upload a batch's images in parallel (``io_pool``); returns each image's
    exception, or None where it was stored. Each image's ``encode`` and ``upload`` seconds go
    into its ``timings`` dict, when given."""
    uploads = Uploads(tasks, storage, timings if timings is not None else [{} for _ in tasks])
    uploads.add(0, images)
    return uploads.errors()


def settle_store(
    task: PromptTask,
    pixels: np.ndarray,
    storage: Storage,
    error: BaseException | None,
    timings: dict[str, float],
    *,
    retry: bool,
) -> BaseException | None:
    """The one store-retry path: a transient upload failure is tried again here, per
    ``RETRY_POLICY``, when ``retry`` (``veil run``); else it is handed back as it is (the Celery
    task re-sends the message). Returns what is left: None (stored) or the last exception."""
    if not (retry and isinstance(error, TransientError)):
        return error
    try:
        call_with_retries(partial(store_image, task, pixels, storage, timings))
    except Exception as exc:  # noqa: BLE001 - the key's outcome says why
        return exc
    return None


def finished(
    task: PromptTask, error: BaseException | None, timings: dict[str, float], record: Callable[[], ResultRecord]
) -> Finished:
    """A key's end from its store outcome: done (``record()``), a transient failure handed
    back, or failed with the reason."""
    if error is None:
        return Finished(task, record())
    if isinstance(error, TransientError):
        return Finished(task, None, error)
    return Finished(task, error_record(task, error, timings_s=timings))


def rounded(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in timings.items()}
