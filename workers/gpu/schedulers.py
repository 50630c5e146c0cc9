"""The two samplers, an Enum mapped to functions.

``FAITHFUL`` is the paper's DPM++ SDE Karras (A1111 naming): ``DPMSolverSDEScheduler`` with
Karras sigmas; it evaluates the UNet twice per step (29 evaluations for 15 steps).
``FAST`` is DPM++ 2M SDE Karras: ``DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")``,
one evaluation per step; same noise schedule, a different (multistep) SDE solver, so for the
same seed its images differ from the faithful sampler's (by how much, with real weights, is
not yet measured).

Both samplers draw their stochastic noise per image from that image's own seed, so an image
does not depend on its batch-mates. The faithful sampler's Brownian-tree noise is computed on the
CPU in background threads while the UNet runs (``workers.gpu.brownian``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import torch
from diffusers import DPMSolverMultistepScheduler, DPMSolverSDEScheduler
from diffusers.utils.torch_utils import randn_tensor

from shared.settings import SchedulerName
from workers.gpu.brownian import PrefetchedBrownianNoise


@dataclass
class Sampler:
    """A scheduler plus how to feed it per-image noise for one batch."""

    scheduler: Any
    #: called after set_timesteps with the batch's seeds and initial latents
    prepare: Callable[[Any, list[int], torch.Tensor], None]
    step_kwargs: Callable[[torch.Tensor, list[torch.Generator]], dict[str, Any]]


def _faithful(config: dict[str, Any]) -> Sampler:
    scheduler = DPMSolverSDEScheduler.from_config(config, use_karras_sigmas=True)
    # built with the sampler (once per process), used by every batch; threads start on first use
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="brownian")

    def prepare(s: Any, seeds: list[int], latents: torch.Tensor) -> None:
        # One Brownian tree per image, as diffusers builds for a list of seeds, computed ahead.
        s.noise_sampler = PrefetchedBrownianNoise(s, s.num_inference_steps, seeds, latents, pool)

    return Sampler(scheduler, prepare, lambda latents, generators: {})


def _fast(config: dict[str, Any]) -> Sampler:
    scheduler = DPMSolverMultistepScheduler.from_config(
        config, algorithm_type="sde-dpmsolver++", use_karras_sigmas=True, solver_order=2
    )

    def step_kwargs(latents: torch.Tensor, generators: list[torch.Generator]) -> dict[str, Any]:
        noise = randn_tensor(latents.shape, generator=generators, device=latents.device, dtype=torch.float32)
        return {"variance_noise": noise}

    return Sampler(scheduler, lambda s, seeds, latents: None, step_kwargs)


SAMPLERS: dict[SchedulerName, Callable[[dict[str, Any]], Sampler]] = {
    SchedulerName.FAITHFUL: _faithful,
    SchedulerName.FAST: _fast,
}

#: UNet evaluations per image for ``steps`` steps (used for FLOP counts in benchmarks).
UNET_EVALS: dict[SchedulerName, Callable[[int], int]] = {
    SchedulerName.FAITHFUL: lambda steps: 2 * steps - 1,
    SchedulerName.FAST: lambda steps: steps,
}


def build_sampler(name: SchedulerName, config: dict[str, Any]) -> Sampler:
    return SAMPLERS[name](dict(config))
