"""The samplers' sigmas: the tiny test config gives the real SD 1.5 config's, and the timestep
spacing is build_sampler's, not the config file's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.tiny import SCHEDULER_CONFIG
from shared.settings import SamplerName
from workers.gpu.schedulers import build_sampler

#: stable-diffusion-v1-5's scheduler/scheduler_config.json, as published
REAL_SD15 = json.loads("""{"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
 "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": false,
 "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null, "clip_sample": false}""")


def schedule(name: SamplerName, config: dict, steps: int = 15) -> tuple[np.ndarray, np.ndarray]:
    s = build_sampler(name, config).scheduler
    s.set_timesteps(steps)
    return s.sigmas.numpy(), s.timesteps.numpy()


def test_tiny_config_is_the_real_file_key_for_key(tiny_models):
    assert SCHEDULER_CONFIG == REAL_SD15
    written = json.loads((tiny_models / "sd15-config/scheduler/scheduler_config.json").read_text())
    assert written == REAL_SD15


@pytest.mark.parametrize("name", list(SamplerName))
def test_tiny_and_real_configs_give_the_same_sigmas(name):
    tiny_sigmas, tiny_t = schedule(name, SCHEDULER_CONFIG)
    real_sigmas, real_t = schedule(name, REAL_SD15)
    np.testing.assert_array_equal(tiny_sigmas, real_sigmas)
    np.testing.assert_array_equal(tiny_t, real_t)


@pytest.mark.parametrize("name", list(SamplerName))
def test_spacing_in_the_config_file_is_overridden(name):
    """A diffusers folder saved by PNDMScheduler says "leading"; build_sampler's linspace wins."""
    leading = schedule(name, {**REAL_SD15, "timestep_spacing": "leading"})[0]
    np.testing.assert_array_equal(leading, schedule(name, REAL_SD15)[0])


def test_faithful_karras_range_is_the_whole_trained_range():
    """A1111's Karras range: the model's smallest and largest sigma (timesteps 0 and 999)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    model_sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
    sigmas = schedule(SamplerName.FAITHFUL, REAL_SD15)[0]
    assert sigmas[0] == pytest.approx(float(model_sigmas[-1]), rel=1e-4)  # 14.6146 (diffusers computes the betas in float32)
    assert sigmas[-2] == pytest.approx(float(model_sigmas[0]), rel=1e-4)  # 0.0292
    assert sigmas[-1] == 0
