"""DPM++ SDE's per-image Brownian-tree noise, computed on the CPU ahead of the denoising loop.

The faithful sampler (``DPMSolverSDEScheduler``) draws its noise from one
``torchsde.BrownianInterval`` per image, queried twice per step. Left inside the scheduler, every
query walks 64 Python-level trees on the GPU with a device sync in each: measured on an H200
(BENCHMARKS.md), that cost grew from 0.2 s per batch of 8 to 8.5 s per batch of 64 and
stalled the GPU, so faithful throughput fell as the batch grew.

The noise depends only on each image's seed and on the sigma schedule, never on the latents.
So ``PrefetchedBrownianNoise`` learns the scheduler's query sequence from a dry run on a
one-element sample, then computes every image's increments on the CPU in worker threads while
the UNet runs, and hands them to the scheduler in the same order. The numbers are exactly what
diffusers' ``BrownianTreeNoiseSampler`` gives on the CPU for the same seeds and queries
(tests/test_brownian.py), so an image is also the same whichever device denoises it.
"""

from __future__ import annotations

import math
from concurrent.futures import Executor, Future
from typing import Any

import torch
from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler

#: two query times closer than this (relative) are taken as the same query
_TIME_RTOL = 1e-5


class _Recorder:
    """Stands in for the noise sampler during the dry run: notes each query, returns zeros."""

    def __init__(self) -> None:
        self.queries: list[tuple[float, float]] = []

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        self.queries.append((float(sigma), float(sigma_next)))
        return torch.zeros(())


def noise_queries(scheduler: Any, steps: int) -> tuple[list[tuple[float, float]], float, float]:
    """The (sigma, sigma_next) pairs the scheduler will ask for, in order, and the range its
    noise sampler is built over, from a dry run of a fresh copy on a one-element sample."""
    dry = type(scheduler).from_config(scheduler.config)
    dry.set_timesteps(steps, device="cpu")
    recorder = _Recorder()
    dry.noise_sampler = recorder
    sample = torch.zeros(1, 1, 1, 1)
    for t in dry.timesteps:
        sample = dry.step(torch.zeros_like(sample), t, sample).prev_sample
    positive = dry.sigmas[dry.sigmas > 0]
    return recorder.queries, positive.min().item(), positive.max().item()


def image_noise(seed: int, shape: tuple[int, ...], queries: list[tuple[float, float]],
                sigma_min: float, sigma_max: float) -> torch.Tensor:
    """One image's noise for every query, (len(queries), *shape), as diffusers' own per-image
    Brownian tree draws it on the CPU."""
    sampler = BrownianTreeNoiseSampler(torch.zeros((1, *shape)), sigma_min, sigma_max, [seed])
    return torch.stack([sampler(torch.tensor(s), torch.tensor(n))[0] for s, n in queries])


class PrefetchedBrownianNoise:
    """The scheduler's ``noise_sampler``: returns the batch's precomputed noise for each query."""

    def __init__(self, scheduler: Any, steps: int, seeds: list[int], latents: torch.Tensor, executor: Executor):
        self.queries, sigma_min, sigma_max = noise_queries(scheduler, steps)
        self.device, self._next = latents.device, 0
        shape = tuple(latents.shape[1:])
        self._futures: list[Future] = [
            executor.submit(image_noise, seed, shape, self.queries, sigma_min, sigma_max) for seed in seeds
        ]

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        k = self._next
        if k >= len(self.queries) or not _same(self.queries[k], (float(sigma), float(sigma_next))):
            expected = self.queries[k] if k < len(self.queries) else "no more queries"
            raise RuntimeError(f"noise query {k} was ({float(sigma):.6g}, {float(sigma_next):.6g}); the dry run "
                               f"predicted {expected}: the scheduler's query order changed")
        self._next += 1
        return torch.stack([f.result()[k] for f in self._futures]).to(self.device, non_blocking=True)


def _same(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return all(math.isclose(x, y, rel_tol=_TIME_RTOL) for x, y in zip(a, b))
