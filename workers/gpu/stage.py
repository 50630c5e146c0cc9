"""GPU-tier stage: a batch of prompt messages -> anonymized images in storage.

``veil run`` and the Celery GPU worker both call ``GpuModels.load`` once per process
(``workers.gpu.gpumodels``) and ``finish_batch`` per batch: each mode's keys go to that mode's
function (``FINISH``: portraits here, scenes in ``workers.gpu.scene``), which generates, stores
and builds each key's record with the helpers both modes share (``workers.gpu.batching``).

A portrait batch is a pipeline when it runs in chunks (``max_batch`` below the batch): while
chunk k generates, chunk k+1's sampler noise is built on a thread and chunk k-1's images are
encoded and uploaded on the io threads; the batch ends when every upload has (``finish_portraits``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from shared.errors import TransientError
from shared.messages import PromptTask
from shared.results import done_record, error_record
from shared.settings import Mode
from shared.storage import Storage
from workers.gpu.batching import Finished, Uploads, finished, generate_in_chunks, rounded, settle_store
from workers.gpu.gpumodels import GpuModels
from workers.gpu.noise import HostNoise
from workers.gpu.scene import finish_scenes

log = logging.getLogger(__name__)


def generate_batch(
    tasks: list[PromptTask], gpu: GpuModels, on_chunk: Callable[[int, list], None] | None = None
) -> list[np.ndarray]:
    """One image per task. Batches above ``gpu.max_batch`` run in chunks, the next chunk's noise
    built while one generates; on out-of-memory the chunk is halved, the limit remembered, and
    the rest run at the new limit (``workers.gpu.batching``). An image's random numbers do not
    depend on its batch-mates, but its pixels may change by rounding when the batch is split
    (see ``workers.gpu.generation``: bit-exact only for the same batch). A single image that does
    not fit raises ``DeviceOutOfMemoryError``. ``on_chunk(start, images)``: after each chunk."""

    def run(start: int, stop: int, noise: HostNoise | None) -> list[np.ndarray]:
        part = tasks[start:stop]
        prompts, negatives, seeds = [t.prompt for t in part], [t.negative_prompt for t in part], [t.seed for t in part]
        if noise is None:
            return gpu.generator(prompts, negatives, seeds)
        return gpu.generator(prompts, negatives, seeds, noise=noise)

    def noise_ahead(start: int, stop: int) -> HostNoise | None:
        return gpu.generator.prepare_noise([t.seed for t in tasks[start:stop]])

    return generate_in_chunks(len(tasks), run, gpu, prepare=noise_ahead, on_chunk=on_chunk)


def finish_portraits(
    tasks: list[PromptTask], gpu: GpuModels, storage: Storage, timings: list[dict[str, float]], *, retry_stores: bool
) -> list[Finished]:
    """Portrait-mode keys of a batch -> ``Finished`` per key, in order."""
    # 1. Generate the batch (in chunks that fit), each chunk's images uploaded while the next generates
    uploads = Uploads(tasks, storage, timings)
    t0 = time.perf_counter()
    try:
        images = generate_batch(tasks, gpu, on_chunk=uploads.add)
    except Exception as exc:  # noqa: BLE001 - transient (OOM at one image), a bug, a bad model or one bad key
        uploads.wait()  # nothing of this batch is still writing when its keys are tried again
        return _generation_failed(tasks, gpu, storage, timings, exc, retry_stores=retry_stores)
    per_image = (time.perf_counter() - t0 - uploads.waited_s) / len(tasks)
    # 2. Wait for every upload; a transient failure retried here when the caller asks (veil run)
    errors = uploads.errors()
    # 3. A record per key: done, failed, or a transient failure handed back
    out = []
    for task, tm, pixels, error in zip(tasks, timings, images, errors, strict=True):
        tm["generate"] = per_image
        error = settle_store(task, pixels, storage, error, tm, retry=retry_stores)
        record = partial(done_record, task, rounded(tm), gpu.generator.sampler_noise)
        out.append(finished(task, error, tm, record))
    return out


def _generation_failed(
    tasks: list[PromptTask],
    gpu: GpuModels,
    storage: Storage,
    timings: list[dict[str, float]],
    exc: Exception,
    *,
    retry_stores: bool,
) -> list[Finished]:
    """A transient failure is every key's, handed back; anything else, each key is tried alone
    so that one bad key fails alone (a key alone that fails gets a failed record)."""
    if isinstance(exc, TransientError):
        return [Finished(t, None, exc) for t in tasks]
    if len(tasks) > 1:
        log.error("batch of %d failed; generating its keys one by one", len(tasks), exc_info=exc)
        return [
            f
            for t, tm in zip(tasks, timings, strict=True)
            for f in finish_portraits([t], gpu, storage, [tm], retry_stores=retry_stores)
        ]
    log.error("generation of %s failed", tasks[0].input_uri, exc_info=exc)
    return [Finished(tasks[0], error_record(tasks[0], exc, timings_s=timings[0]))]


#: (tasks, gpu, storage, timings, retry_stores=) -> one ``Finished`` per task, in order
FinishMode = Callable[..., list[Finished]]

#: each mode's GPU stage
FINISH: dict[Mode, FinishMode] = {
    Mode.PORTRAIT: finish_portraits,
    Mode.SCENE: finish_scenes,
}


def finish_batch(
    tasks: list[PromptTask],
    gpu: GpuModels,
    storage: Storage,
    timings: list[dict[str, float]] | None = None,
    *,
    retry_stores: bool = False,
) -> list[Finished]:
    """Generate, store, and build each key's record: the GPU stage of ``veil run`` and of the GPU
    Celery task. ``retry_stores``: retry a transient upload failure here, per ``RETRY_POLICY``,
    rather than hand it back. Results in the batch's order."""
    timings = timings if timings is not None else [{} for _ in tasks]
    # 1. Merge the GPU models' digests into each key's ``model_sha256``
    tasks = [t.model_copy(update={"model_sha256": {**t.model_sha256, **gpu.model_sha256}}) for t in tasks]
    # 2. Each mode's keys through that mode's stage (a batch may hold both)
    out: list[Finished | None] = [None] * len(tasks)
    for mode, finish in FINISH.items():
        idx = [i for i, t in enumerate(tasks) if t.mode is mode]
        if idx:
            done = finish([tasks[i] for i in idx], gpu, storage, [timings[i] for i in idx], retry_stores=retry_stores)
            for i, fin in zip(idx, done, strict=True):
                out[i] = fin
    # 3. Every key ended in its mode's stage
    assert all(f is not None for f in out)
    return [f for f in out if f is not None]
