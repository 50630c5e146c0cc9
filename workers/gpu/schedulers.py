"""The two samplers, an Enum mapped to functions.

``FAITHFUL`` is the paper's DPM++ SDE Karras (A1111 naming): ``DPMSolverSDEScheduler`` with
Karras sigmas; it evaluates the UNet twice per step (29 evaluations for 15 steps).
``FAST`` is DPM++ 2M SDE Karras: ``DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")``,
one evaluation per step; same noise schedule, a different (multistep) SDE solver, so for the
same seed its images differ from the faithful sampler's (by how much, with real weights, is
not yet measured).

Timestep spacing: both set ``timestep_spacing="linspace"`` explicitly, so the sigmas do not
depend on which ``scheduler_config.json`` was loaded (SD 1.5's has no such key and diffusers
then defaults to ``linspace``; a diffusers folder saved by ``PNDMScheduler`` says ``leading``).
With ``use_karras_sigmas`` diffusers (0.42) uses the spacing only for the Karras range:
``DPMSolverSDEScheduler.set_timesteps`` interpolates sigmas at the spaced timesteps and takes
their first and last as sigma_max and sigma_min. ``linspace`` gives timesteps 999..0, hence
sigma_max 14.6146 and sigma_min 0.0292 (SD 1.5's betas), the whole trained range: what A1111's
"Karras" schedule uses since it dropped its old (0.1, 10) range (``use_old_karras_scheduler_sigmas``
off: k-diffusion's ``get_sigmas_karras`` between ``model_wrap.sigmas[0]`` and ``[-1]``).
``leading`` (PNDM's default) would give timesteps 925..1, hence 9.5436 .. 0.0413.
``DPMSolverMultistepScheduler`` with Karras sigmas takes the range from the full sigma table and
ignores the spacing; it is set there too so that both read the same.

Both samplers draw their stochastic noise per image from that image's own seed, so an image's
random numbers do not depend on its batch-mates (its pixels may, by rounding: see generation.py).

The faithful sampler's Brownian noise has two schemes (``SamplerNoise``, ``VEIL_SAMPLER_NOISE``),
an Enum mapped to functions in ``NOISE_SCHEMES``: ``exact`` (default) installs
``workers.gpu.noise.ExactBrownianNoise`` as the scheduler's ``noise_sampler``, each image's path
drawn once per batch at the step times; ``tree`` leaves diffusers its torchsde Brownian trees (one
per image: the images of runs made before ``exact`` existed). Same law, different numbers: for the
same seed the two schemes give different images. The fast sampler has no Brownian noise (one
normal draw per step per image), so the scheme does not apply to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DPMSolverMultistepScheduler, DPMSolverSDEScheduler
from diffusers.utils.torch_utils import randn_tensor

from shared.settings import SamplerName, SamplerNoise
from workers.gpu.noise import ExactBrownianNoise, HostNoise, host_noise

#: ``prepare(scheduler, seeds, latent_shape, device, ready)``: called after ``set_timesteps`` with
#: the batch's seeds, one image's latent shape (C, H, W), the device, and the batch's noise if it
#: was built ahead (``Sampler.build_noise``; None: built here if the scheme needs it)
Prepare = Callable[[Any, list[int], tuple[int, ...], torch.device, Any], None]
#: ``build_noise(sigmas, seeds, latent_shape, pin)``: a batch's noise built ahead on any thread
BuildNoise = Callable[[torch.Tensor, list[int], tuple[int, ...], bool], HostNoise]


@dataclass
class Sampler:
    """A scheduler plus how to feed it per-image noise for one batch."""

    scheduler: Any
    prepare: Prepare
    step_kwargs: Callable[[torch.Tensor, list[torch.Generator]], dict[str, Any]]
    #: the Brownian noise scheme recorded with each image (None: the sampler has none)
    noise: SamplerNoise | None = None
    #: builds a batch's noise ahead of its generation (None: the scheme has nothing to build ahead)
    build_noise: BuildNoise | None = None


#: See the module docstring: the Karras range of A1111's "DPM++ SDE Karras" is the model's whole one.
TIMESTEP_SPACING = "linspace"


def _exact_noise(
    s: Any, seeds: list[int], shape: tuple[int, ...], device: torch.device, ready: HostNoise | None = None
) -> None:
    """Each image's Brownian path at every step time, drawn once per batch (``workers.gpu.noise``),
    or taken from ``ready`` when it was built ahead for this batch."""
    s.noise_sampler = ExactBrownianNoise(s.sigmas, seeds, shape, device, ready=ready)


def _build_exact_noise(sigmas: torch.Tensor, seeds: list[int], shape: tuple[int, ...], pin: bool) -> HostNoise:
    return host_noise(sigmas, seeds, shape, pin=pin)


def _no_noise(
    s: Any, seeds: list[int], shape: tuple[int, ...], device: torch.device, ready: HostNoise | None = None
) -> None:
    """The fast sampler draws its noise per step (``step_kwargs``): nothing to prepare."""


def _tree_noise(
    s: Any, seeds: list[int], shape: tuple[int, ...], device: torch.device, ready: HostNoise | None = None
) -> None:
    """diffusers' own: a list of seeds makes it build one torchsde Brownian tree per image."""
    s.noise_sampler = None
    s.noise_sampler_seed = list(seeds)


NOISE_SCHEMES: dict[SamplerNoise, Prepare] = {
    SamplerNoise.EXACT: _exact_noise,
    SamplerNoise.TREE: _tree_noise,
}
#: what each scheme can build ahead of a batch (the trees are built inside the loop: nothing)
NOISE_AHEAD: dict[SamplerNoise, BuildNoise | None] = {
    SamplerNoise.EXACT: _build_exact_noise,
    SamplerNoise.TREE: None,
}


def _faithful(config: dict[str, Any], noise: SamplerNoise) -> Sampler:
    scheduler = DPMSolverSDEScheduler.from_config(config, use_karras_sigmas=True, timestep_spacing=TIMESTEP_SPACING)
    return Sampler(scheduler, NOISE_SCHEMES[noise], lambda latents, generators: {}, noise, NOISE_AHEAD[noise])


def _fast(config: dict[str, Any], noise: SamplerNoise) -> Sampler:
    scheduler = DPMSolverMultistepScheduler.from_config(
        config,
        algorithm_type="sde-dpmsolver++",
        use_karras_sigmas=True,
        solver_order=2,
        timestep_spacing=TIMESTEP_SPACING,
    )

    def step_kwargs(latents: torch.Tensor, generators: list[torch.Generator]) -> dict[str, Any]:
        noise = randn_tensor(latents.shape, generator=generators, device=latents.device, dtype=torch.float32)
        return {"variance_noise": noise}

    return Sampler(scheduler, _no_noise, step_kwargs)


SAMPLERS: dict[SamplerName, Callable[[dict[str, Any], SamplerNoise], Sampler]] = {
    SamplerName.FAITHFUL: _faithful,
    SamplerName.FAST: _fast,
}

#: UNet evaluations per image for ``steps`` steps (used for FLOP counts in benchmarks).
UNET_EVALS: dict[SamplerName, Callable[[int], int]] = {
    SamplerName.FAITHFUL: lambda steps: 2 * steps - 1,
    SamplerName.FAST: lambda steps: steps,
}


def build_sampler(name: SamplerName, config: dict[str, Any], noise: SamplerNoise = SamplerNoise.EXACT) -> Sampler:
    """``noise``: the faithful sampler's Brownian noise scheme (ignored by the fast sampler)."""
    return SAMPLERS[name](dict(config), SamplerNoise(noise))
