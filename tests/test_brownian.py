"""The faithful sampler's prefetched Brownian noise is exactly diffusers' own per-image noise."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from diffusers import DPMSolverSDEScheduler

from workers.gpu.brownian import PrefetchedBrownianNoise, noise_queries

CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
          "prediction_type": "epsilon", "steps_offset": 1}


def denoise(steps: int, seeds: list[int], prefetch: bool) -> torch.Tensor:
    """A scheduler loop with a fixed stand-in for the UNet, noise from diffusers' own per-image
    trees (``noise_sampler_seed``) or from the prefetching sampler."""
    s = DPMSolverSDEScheduler.from_config(CONFIG, use_karras_sigmas=True)
    s.set_timesteps(steps)
    x = torch.randn(len(seeds), 4, 8, 8, generator=torch.Generator().manual_seed(0)) * s.init_noise_sigma
    if prefetch:
        with ThreadPoolExecutor(3) as pool:
            s.noise_sampler = PrefetchedBrownianNoise(s, steps, seeds, x, pool)
            return loop(s, x)
    s.noise_sampler, s.noise_sampler_seed = None, list(seeds)
    return loop(s, x)


def loop(s, x):
    for t in s.timesteps:
        x = s.step(torch.tanh(x) * 0.3, t, x).prev_sample
    return x


@pytest.mark.parametrize("steps", [3, 15])
def test_prefetched_noise_is_diffusers_noise_bit_for_bit(steps):
    seeds = [7, 1234, 99, 5]
    assert torch.equal(denoise(steps, seeds, prefetch=True), denoise(steps, seeds, prefetch=False))


def test_queries_are_two_per_step_but_the_last():
    s = DPMSolverSDEScheduler.from_config(CONFIG, use_karras_sigmas=True)
    queries, lo, hi = noise_queries(s, 15)
    assert len(queries) == 2 * 15 - 2  # no noise into the final sigma = 0
    assert 0 < lo < hi and all(lo * 0.999 <= min(q) and max(q) <= hi * 1.001 for q in queries)


def test_a_query_out_of_order_is_refused():
    s = DPMSolverSDEScheduler.from_config(CONFIG, use_karras_sigmas=True)
    s.set_timesteps(3)
    with ThreadPoolExecutor(1) as pool:
        noise = PrefetchedBrownianNoise(s, 3, [1], torch.zeros(1, 4, 8, 8), pool)
        with pytest.raises(RuntimeError, match="query 0"):
            noise(torch.tensor(5.0), torch.tensor(4.0))
