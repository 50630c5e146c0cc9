"""GPU-tier stage: a batch of prompt messages -> anonymized images in storage.

``veil run`` and the Celery GPU worker both call ``GpuModels.load`` once per process and
``generate_batch`` / ``store_image`` per batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import logging
from concurrent.futures import ThreadPoolExecutor

from shared.devices import generation_dtype
from shared.errors import DeviceOutOfMemoryError
from shared.imageio import encode_image
from shared.messages import PromptTask
from shared.settings import Settings
from shared.storage import Storage
from workers.gpu.generation import GenerationConfig, PortraitGenerator
from workers.gpu.loading import load_sd_components

log = logging.getLogger(__name__)

_CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


@dataclass
class GpuModels:
    generator: PortraitGenerator
    models: dict[str, str] = field(default_factory=dict)
    #: the largest batch known to fit; lowered when the device runs out of memory
    max_batch: int | None = None

    @classmethod
    def load(cls, settings: Settings, device: torch.device) -> "GpuModels":
        dtype = generation_dtype(device)
        parts = load_sd_components(Path(settings.models_dir), device, dtype)
        config = GenerationConfig(scheduler=settings.scheduler, steps=settings.steps,
                                  guidance_scale=settings.guidance_scale, image_size=settings.image_size,
                                  channels_last=settings.channels_last, compile_mode=settings.compile_mode,
                                  prompt_chunks=settings.prompt_chunks)
        generator = PortraitGenerator(parts.unet, parts.vae, parts.text_encoder, parts.tokenizer,
                                      parts.scheduler_config, config, device, dtype)
        gpu = cls(generator, dict(parts.models))
        if device.type == "cuda":
            gpu.max_batch = largest_batch_that_fits(gpu, settings.batch_size)
        return gpu


def largest_batch_that_fits(gpu: GpuModels, wanted: int) -> int:
    """Measured at start: one full-size generation at ``wanted`` images, halved on out-of-memory
    until it fits. The peak is the UNet at the batch size plus the VAE decode of the batch, so a
    run of the real path at that size is the honest test."""
    batch = wanted
    while True:
        try:
            gpu.generator(["probe"] * batch, ["probe"] * batch, list(range(batch)))
            if batch < wanted:
                log.warning("batch %d does not fit this device; using %d", wanted, batch)
            return batch
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if batch == 1:
                raise DeviceOutOfMemoryError("one image does not fit on this device")
            batch //= 2


def generate_batch(tasks: list[PromptTask], gpu: GpuModels) -> list[np.ndarray]:
    """One image per task. Batches above ``gpu.max_batch`` run in chunks; on out-of-memory the
    batch is halved, the limit remembered, and the halves retried. An image's random numbers
    do not depend on its batch-mates, but its pixels may change by rounding when the batch is
    split (see ``workers.gpu.generation``: bit-exact only for the same batch). A single image that does not fit raises
    ``DeviceOutOfMemoryError`` (transient: another worker may have a bigger device)."""
    limit = gpu.max_batch or len(tasks)
    if len(tasks) > limit:
        return [img for i in range(0, len(tasks), limit) for img in generate_batch(tasks[i: i + limit], gpu)]
    try:
        return gpu.generator([t.prompt for t in tasks], [t.negative_prompt for t in tasks], [t.seed for t in tasks])
    except torch.OutOfMemoryError as exc:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(tasks) == 1:
            raise DeviceOutOfMemoryError("one image does not fit on the device") from exc
        gpu.max_batch = len(tasks) // 2
        log.warning("out of memory at batch %d; splitting, batches capped at %d", len(tasks), gpu.max_batch)
        return generate_batch(tasks, gpu)


def store_images(tasks: list[PromptTask], images: list[np.ndarray], storage: Storage,
                 threads: int = 8) -> list[BaseException | None]:
    """Encode and upload a batch's images in parallel threads (PIL encoding and S3 uploads
    release the GIL); returns each image's exception, or None where it was stored."""
    if not tasks:
        return []
    with ThreadPoolExecutor(max_workers=min(threads, len(tasks))) as pool:
        futures = [pool.submit(store_image, t, px, storage) for t, px in zip(tasks, images)]
    return [f.exception() for f in futures]


def store_image(task: PromptTask, pixels: np.ndarray, storage: Storage) -> None:
    suffix = Path(task.output_uri).suffix.lower()
    storage.write(task.output_uri, encode_image(pixels, task.output_uri), _CONTENT_TYPES.get(suffix, "image/png"))
