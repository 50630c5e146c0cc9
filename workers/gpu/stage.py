"""GPU-tier stage: a batch of prompt messages -> anonymized images in storage.

``veil run`` and the Celery GPU worker both call ``GpuModels.load`` once per process and
``finish_batch`` per batch (generate, store, build each key's record).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from shared.devices import generation_dtype
from shared.errors import DeviceOutOfMemoryError, TransientError, call_with_retries
from shared.imageio import content_type, encode_image
from shared.messages import PromptTask, ResultRecord
from shared.results import done_record, error_record
from shared.settings import GuardName, Mode, Settings
from shared.storage import Storage, check_output_uri
from workers.gpu.generation import GenerationConfig, PortraitGenerator
from workers.gpu.loading import load_sd_components
from workers.guard import Guard, load_guard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SceneConfig:
    """Scene mode's settings (issue 14), read once at start-up."""

    strength: float = 0.6
    margin: float = 0.35
    feather: float = 0.15
    max_pixels: int = 120_000_000
    max_input_bytes: int = 64 * 2**20

    @classmethod
    def from_settings(cls, settings: Settings) -> SceneConfig:
        return cls(
            settings.scene_strength,
            settings.scene_margin,
            settings.scene_feather,
            settings.max_image_pixels,
            settings.max_input_bytes,
        )


@dataclass
class GpuModels:
    generator: PortraitGenerator
    model_sha256: dict[str, str] = field(default_factory=dict)
    #: the largest batch known to fit; lowered when the device runs out of memory
    max_batch: int | None = None
    # issue 14: scene mode and the re-identification guard
    scene: SceneConfig = field(default_factory=SceneConfig)
    settings: Settings | None = None
    device: torch.device | None = None
    guards: dict[GuardName, Guard | None] = field(default_factory=dict)

    def guard_for(self, name: GuardName) -> Guard | None:
        """The guard a message asks for, its embedder loaded on first use and kept."""
        if name not in self.guards:
            if name is GuardName.OFF:
                self.guards[name] = None
            elif self.settings is None:
                raise ValueError("a guard needs the GPU models loaded from settings")
            else:
                self.guards[name] = load_guard(self.settings, name, self.device)
        return self.guards[name]

    @classmethod
    def load(cls, settings: Settings, device: torch.device) -> GpuModels:
        dtype = generation_dtype(device)
        parts = load_sd_components(Path(settings.models_dir), device, dtype)
        config = GenerationConfig(
            sampler=settings.sampler,
            sampler_noise=settings.sampler_noise,
            steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            image_size=settings.image_size,
            channels_last=settings.channels_last,
            compile_mode=settings.compile_mode,
            prompt_chunks=settings.prompt_chunks,
        )
        generator = PortraitGenerator(
            parts.unet, parts.vae, parts.text_encoder, parts.tokenizer, parts.scheduler_config, config, device, dtype
        )
        gpu = cls(
            generator,
            dict(parts.model_sha256),
            scene=SceneConfig.from_settings(settings),
            settings=settings,
            device=device,
        )
        if device.type == "cuda":
            gpu.max_batch = largest_batch_that_fits(gpu, settings.batch_size)
        return gpu


def largest_batch_that_fits(gpu: GpuModels, wanted: int) -> int:
    """Measured at start: one full-size generation at ``wanted`` images, halved on out-of-memory
    until it fits. The peak is the UNet at the batch size plus the VAE decode of the batch, so a
    run of the real path at that size is the honest test."""
    gpu.max_batch = wanted
    _largest_chunk(
        0, wanted, lambda a, b: gpu.generator(["probe"] * (b - a), ["probe"] * (b - a), list(range(a, b))), gpu
    )
    if gpu.max_batch < wanted:
        log.warning("batch %d does not fit this device; using %d", wanted, gpu.max_batch)
    return gpu.max_batch


def generate_batch(tasks: list[PromptTask], gpu: GpuModels) -> list[np.ndarray]:
    """One image per task. Batches above ``gpu.max_batch`` run in chunks; on out-of-memory the
    chunk is halved, the limit remembered, and the rest run at the new limit. An image's random
    numbers do not depend on its batch-mates, but its pixels may change by rounding when the
    batch is split (see ``workers.gpu.generation``: bit-exact only for the same batch). A single
    image that does not fit raises
    ``DeviceOutOfMemoryError`` (transient: another worker may have a bigger device)."""

    def run(start: int, stop: int) -> list[np.ndarray]:
        part = tasks[start:stop]
        return gpu.generator([t.prompt for t in part], [t.negative_prompt for t in part], [t.seed for t in part])

    images: list[np.ndarray] = []
    while len(images) < len(tasks):
        images += _largest_chunk(len(images), len(tasks), run, gpu)
    return images


def _largest_chunk(start: int, stop: int, run: Callable[[int, int], list], gpu: GpuModels) -> list:
    """``run(start, start + n)`` for the largest ``n`` up to ``gpu.max_batch`` that fits: the one
    out-of-memory path. On OOM the cache is emptied, ``gpu.max_batch`` halved and the call tried
    again; at one image it raises ``DeviceOutOfMemoryError``."""
    while True:
        size = min(gpu.max_batch or stop - start, stop - start)
        try:
            return run(start, start + size)
        except torch.OutOfMemoryError as exc:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if size == 1:
                raise DeviceOutOfMemoryError("one image does not fit on the device") from exc
            gpu.max_batch = size // 2
            log.warning("out of memory at batch %d; batches capped at %d", size, gpu.max_batch)


@dataclass
class Finished:
    """What became of one key of a batch: a record to publish, or a transient failure that the
    caller retries its own way (the Celery task re-sends the message)."""

    task: PromptTask  # with the GPU models' digests merged into ``models``
    record: ResultRecord | None
    transient: TransientError | None = None


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
    rather than hand it back."""
    timings = timings if timings is not None else [{} for _ in tasks]
    if any(t.mode is Mode.SCENE for t in tasks):
        return _finish_by_mode(tasks, gpu, storage, timings, retry_stores=retry_stores)
    # 1. Merge the GPU models' digests into each key's
    tasks = [t.model_copy(update={"model_sha256": {**t.model_sha256, **gpu.model_sha256}}) for t in tasks]
    # 2. One diffusion call for the whole batch (split only on out-of-memory)
    t0 = time.perf_counter()
    try:
        images = generate_batch(tasks, gpu)
    except TransientError as exc:
        return [Finished(t, None, exc) for t in tasks]
    except Exception as exc:  # noqa: BLE001 - a bug, a bad model or one bad key
        if len(tasks) > 1:  # each key alone, so that one bad key fails alone
            log.exception("batch of %d failed; generating its keys one by one", len(tasks))
            return [
                f
                for t, tm in zip(tasks, timings, strict=True)
                for f in finish_batch([t], gpu, storage, [tm], retry_stores=retry_stores)
            ]
        log.exception("generation of %s failed", tasks[0].input_uri)
        return [Finished(t, error_record(t, exc, timings_s=tm)) for t, tm in zip(tasks, timings, strict=True)]
    per_image = (time.perf_counter() - t0) / len(tasks)
    # 3. Encode and upload the images in parallel
    errors = store_images(tasks, images, storage, timings=timings)
    # 4. A record per key: done, failed, or a transient failure handed back
    finished = []
    for task, tm, pixels, error in zip(tasks, timings, images, errors, strict=True):
        tm["generate"] = per_image
        if isinstance(error, TransientError) and retry_stores:
            try:
                call_with_retries(partial(store_image, task, pixels, storage, tm))
                error = None
            except Exception as exc:  # noqa: BLE001
                error = exc
        if error is None:
            record = done_record(task, {k: round(v, 4) for k, v in tm.items()}, gpu.generator.sampler_noise)
            finished.append(Finished(task, record))
        elif isinstance(error, TransientError) and not retry_stores:
            finished.append(Finished(task, None, error))
        else:
            finished.append(Finished(task, error_record(task, error, timings_s=tm)))
    return finished


def _finish_by_mode(
    tasks: list[PromptTask], gpu: GpuModels, storage: Storage, timings: list[dict[str, float]], *, retry_stores: bool
) -> list[Finished]:
    """A batch holding scene-mode keys (issue 14): portraits as ever, scenes by
    ``workers.gpu.scene.finish_scenes``; results in the batch's order."""
    from workers.gpu.scene import finish_scenes  # it imports this module

    tasks = [t.model_copy(update={"model_sha256": {**t.model_sha256, **gpu.model_sha256}}) for t in tasks]
    out: list[Finished | None] = [None] * len(tasks)
    for mode, run in ((Mode.PORTRAIT, finish_batch), (Mode.SCENE, finish_scenes)):
        idx = [i for i, t in enumerate(tasks) if t.mode is mode]
        if idx:
            done = run([tasks[i] for i in idx], gpu, storage, [timings[i] for i in idx], retry_stores=retry_stores)
            for i, fin in zip(idx, done, strict=True):
                out[i] = fin
    return [fin for fin in out if fin is not None]


#: threads of ``io_pool``: a batch's image uploads and sidecar PUTs (S3 calls and PIL encoding
#: release the GIL)
IO_THREADS = 8
_io: tuple[int, ThreadPoolExecutor] | None = None


def io_pool() -> ThreadPoolExecutor:
    """The process's one bounded pool for storage calls, created on first use (after fork)."""
    global _io
    if _io is None or _io[0] != os.getpid():
        _io = (os.getpid(), ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="veil-io"))
    return _io[1]


def store_images(
    tasks: list[PromptTask],
    images: list[np.ndarray],
    storage: Storage,
    timings: list[dict[str, float]] | None = None,
) -> list[BaseException | None]:
    """Encode and upload a batch's images in parallel (``io_pool``); returns each image's
    exception, or None where it was stored. Each image's ``encode`` and ``upload`` seconds go
    into its ``timings`` dict, when given."""
    if not tasks:
        return []
    timings = timings if timings is not None else [{} for _ in tasks]
    pool = io_pool()
    futures = [pool.submit(store_image, t, px, storage, tm) for t, px, tm in zip(tasks, images, timings, strict=True)]
    return [f.exception() for f in futures]


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
