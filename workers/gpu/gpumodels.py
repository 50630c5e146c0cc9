"""The GPU tier's per-process resources: the generator, its weights' digests, the batch size that
fits the device, the settings, and the guards' embedders (loaded on first use).

``GpuModels.load`` runs once per process, after fork (``workers.runtime``; ``veil run`` calls it
once); ``workers.gpu.stage.finish_batch`` takes it per batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from shared.devices import generation_dtype
from shared.settings import GuardName, Settings
from workers.gpu.batching import largest_chunk
from workers.gpu.generation import GenerationConfig, PortraitGenerator
from workers.gpu.loading import load_sd_components
from workers.guard import Guard, load_guard

log = logging.getLogger(__name__)


@dataclass
class GpuModels:
    generator: PortraitGenerator
    model_sha256: dict[str, str] = field(default_factory=dict)
    #: the largest batch known to fit; lowered when the device runs out of memory
    max_batch: int | None = None
    #: the settings it was loaded from (scene mode and the guards read theirs here)
    settings: Settings | None = None
    device: torch.device | None = None
    guards: dict[GuardName, Guard | None] = field(default_factory=dict)

    @property
    def loaded_settings(self) -> Settings:
        if self.settings is None:
            raise ValueError("scene mode and guards need the GPU models loaded from settings (GpuModels.load)")
        return self.settings

    def guard_for(self, name: GuardName) -> Guard | None:
        """The guard a message asks for, its embedder loaded on first use and kept."""
        if name not in self.guards:
            if name is GuardName.OFF:
                self.guards[name] = None
            else:
                self.guards[name] = load_guard(self.loaded_settings, name, self.device)
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
        gpu = cls(generator, dict(parts.model_sha256), settings=settings, device=device)
        if device.type == "cuda":
            gpu.max_batch = largest_batch_that_fits(gpu, settings.batch_size)
        return gpu


def largest_batch_that_fits(gpu: GpuModels, wanted: int) -> int:
    """Measured at start: one full-size generation at ``wanted`` images, halved on out-of-memory
    until it fits. The peak is the UNet at the batch size plus the VAE decode of the batch, so a
    run of the real path at that size is the honest test."""
    gpu.max_batch = wanted
    largest_chunk(
        0, wanted, lambda a, b: gpu.generator(["probe"] * (b - a), ["probe"] * (b - a), list(range(a, b))), gpu
    )
    if gpu.max_batch < wanted:
        log.warning("batch %d does not fit this device; using %d", wanted, gpu.max_batch)
    return gpu.max_batch
