"""The faithful sampler's noise built ahead (issue 19 item 3, ``workers.gpu.noise.host_noise``):
built on another thread it is bit-identical to the noise built in place, a prefix of it serves
a smaller batch (an OOM split) bit for bit, and noise built for other seeds or another schedule
is never used. Small latents: the properties do not depend on shape."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from models.tiny import SCHEDULER_CONFIG
from shared.settings import SamplerName
from workers.gpu.noise import ExactBrownianNoise, host_noise
from workers.gpu.schedulers import build_sampler

SHAPE = (4, 8, 8)
SEEDS = [11, 7, 300, 5]


def sigmas(steps: int = 15) -> torch.Tensor:
    sampler = build_sampler(SamplerName.FAITHFUL, SCHEDULER_CONFIG)
    sampler.scheduler.set_timesteps(steps)
    return sampler.scheduler.sigmas


def test_noise_built_on_a_thread_is_the_noise_built_in_place():
    s = sigmas()
    with ThreadPoolExecutor(1) as pool:
        ahead = pool.submit(host_noise, s, SEEDS, SHAPE).result()
    used = ExactBrownianNoise(s, SEEDS, SHAPE, ready=ahead)
    fresh = ExactBrownianNoise(s, SEEDS, SHAPE)
    assert used.prepared_ahead and not fresh.prepared_ahead
    assert torch.equal(used.noise, fresh.noise)
    assert used.noise.data_ptr() == ahead.host.data_ptr()  # taken, not drawn again


def test_a_prefix_serves_a_smaller_batch_and_other_batches_draw_their_own():
    s = sigmas()
    ahead = host_noise(s, SEEDS, SHAPE)
    half = ExactBrownianNoise(s, SEEDS[:2], SHAPE, ready=ahead)  # after an OOM halving
    assert half.prepared_ahead and torch.equal(half.noise, ExactBrownianNoise(s, SEEDS[:2], SHAPE).noise)
    for seeds, other_sigmas, shape in [(SEEDS[1:], s, SHAPE), ([11, 7, 300, 6], s, SHAPE),
                                       (SEEDS, sigmas(4), SHAPE), (SEEDS, s, (4, 8, 4))]:  # fmt: skip
        noise = ExactBrownianNoise(other_sigmas, seeds, shape, ready=ahead)
        assert not noise.prepared_ahead
        assert torch.equal(noise.noise, ExactBrownianNoise(other_sigmas, seeds, shape).noise)
