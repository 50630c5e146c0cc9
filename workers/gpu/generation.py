"""Text-to-image generation of the new portraits (Stable Diffusion 1.5, Realistic Vision v5.1).

``PortraitGenerator`` is built once per process from loaded components and called per batch.
Its ``__call__`` reads as the method's steps; every image has its own seeded generator (initial
latents) and its own noise stream (sampler), so its random numbers depend only on its seed,
never on its batch-mates. What is reproducible, precisely:

* the same batch (same prompts and seeds in the same order) on the same device and software
  gives bit-identical pixels (measured on the CPU with the tiny models, both samplers);
* the same image in a batch of another composition (other batch-mates, another batch size, an
  OOM split) may differ by rounding, because batched kernels sum in another order and the
  sampler amplifies it. Measured on this project's 2-core CPU with the tiny models (torch
  2.14, float32, 10 images as 5+5, 10 and 10x1, 15 steps): at most 1 grey level, mean
  3.6e-5 (faithful) and 3.4e-5 (fast); the same 5+5 run twice: bit-identical, both samplers
  (benchmarks/results/cpu-tiny-batch-reproducibility.json). Issue 8 reports up to 9 grey
  levels on 3 of 37 images in another run. Not bit-exact, then;
  tests/integration/test_generation.py pins both.

The faithful sampler's noise for a batch can be built ahead, on another thread, by
``prepare_noise`` and handed to ``__call__`` (``noise``): the same numbers as when built in the
call (``workers.gpu.noise``), so the pixels do not change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from shared.settings import SamplerName, SamplerNoise
from workers.gpu.noise import HostNoise
from workers.gpu.schedulers import build_sampler

VAE_SCALE = 8
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationConfig:
    sampler: SamplerName = SamplerName.FAITHFUL
    #: the faithful sampler's Brownian noise (``workers.gpu.noise``; ``tree``: torchsde's trees, the earlier scheme)
    sampler_noise: SamplerNoise = SamplerNoise.EXACT
    steps: int = 15
    guidance_scale: float = 7.0
    image_size: int = 512
    #: UNet and VAE in channels_last memory format (NHWC convolutions on tensor cores)
    channels_last: bool = False
    #: torch.compile mode for the UNet and the VAE decoder: None (eager), "default",
    #: "max-autotune", or "reduce-overhead" (CUDA graphs)
    compile_mode: str | None = None
    #: prompts are encoded as this many 77-token CLIP chunks (1 = diffusers' plain truncation)
    prompt_chunks: int = 3


class PortraitGenerator:
    def __init__(
        self,
        unet: Any,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        scheduler_config: dict[str, Any],
        config: GenerationConfig,
        device: torch.device,
        dtype: torch.dtype,
    ):
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.config = config
        self.device, self.dtype = device, dtype
        self.sampler = build_sampler(config.sampler, scheduler_config, config.sampler_noise)
        # the schedule's sigmas (CPU, fixed by the config): what noise built ahead is built for
        self.sampler.scheduler.set_timesteps(config.steps, device="cpu")
        self._sigmas = self.sampler.scheduler.sigmas.detach().to("cpu").clone()
        self._warned_cut = False  # a cut prompt is reported once per process, then at debug level
        self._latent_channels = unet.config.in_channels
        self._vae_scaling = vae.config.scaling_factor
        self._unet_forward, self._vae_decode = self._optimized_callables()

    def _optimized_callables(self):
        """The UNet forward and VAE decode to use, after the configured optimisations."""
        unet_forward, vae_decode = self.unet, self.vae.decode
        if self.config.channels_last:
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
        if self.config.compile_mode:
            unet_forward = torch.compile(self.unet, mode=self.config.compile_mode, fullgraph=False)
            vae_decode = torch.compile(self.vae.decode, mode=self.config.compile_mode, fullgraph=False)
        return unet_forward, vae_decode

    @torch.inference_mode()
    def __call__(
        self,
        prompts: list[str],
        negative_prompts: list[str],
        seeds: list[int],
        init_images: list[np.ndarray] | None = None,
        strength: float = 1.0,
        noise: HostNoise | None = None,
    ) -> list[np.ndarray]:
        """Returns one (H, W, 3) uint8 RGB array per prompt. With ``init_images`` (scene mode's
        face crops, ``image_size`` square) it is img2img: each image starts from its crop's
        latents noised to the sampler's sigma at ``strength`` of the schedule, and only the rest
        of the same schedule runs (about ``strength`` x the UNet evaluations). ``noise``: the
        batch's sampler noise from ``prepare_noise`` (used if built for these seeds)."""
        # 1. Check inputs
        self._check_inputs(prompts, negative_prompts, seeds)
        # 2. Encode prompts: [negatives; positives] for classifier-free guidance
        embeddings = self._encode_prompts(negative_prompts + prompts)
        # 3. Prepare timesteps and per-image initial latents (img2img: the crops' latents, noised
        #    to the first timestep kept)
        timesteps = self._prepare_timesteps(seeds, noise)
        generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        if init_images is None:
            latents = self._initial_latents(generators)
        else:
            timesteps = self._img2img_timesteps(timesteps, strength)
            latents = self._noised_latents(init_images, generators, timesteps[:1])
        # 4. Denoise
        latents = self._denoise(latents, embeddings, timesteps, generators)
        # 5. Decode to pixels
        return self._decode(latents)

    def _check_inputs(self, prompts: list[str], negative_prompts: list[str], seeds: list[int]) -> None:
        if not prompts:
            raise ValueError("prompts: must hold at least one prompt")
        if len(negative_prompts) != len(prompts):
            raise ValueError(f"negative_prompts: {len(negative_prompts)} given for {len(prompts)} prompts")
        if len(seeds) != len(prompts):
            raise ValueError(f"seeds: {len(seeds)} given for {len(prompts)} prompts")
        if any(s < 0 for s in seeds):
            raise ValueError("seeds: must be >= 0")

    def _encode_prompts(self, texts: list[str]) -> torch.Tensor:
        """CLIP text embeddings of ``prompt_chunks`` x 77 tokens each, one encoder pass per
        distinct text.

        Algorithm 1's prompts often exceed CLIP's 75 content tokens (the negative prompt lists
        every label scored <= 0.5). As A1111, on which the paper's sampler names are based, the
        tokens are cut into chunks of 75, each encoded as BOS + chunk + EOS padding, and the
        chunk embeddings concatenated. The chunk count is fixed, not the batch's longest, so an
        image's conditioning does not depend on its batch-mates.
        """
        distinct = list(dict.fromkeys(texts))
        chunks = self.config.prompt_chunks
        ids = torch.stack([self._chunked_ids(text, chunks) for text in distinct]).to(self.device)
        encoded = self.text_encoder(ids.view(-1, ids.shape[-1]))[0].to(self.dtype)
        encoded = encoded.view(len(distinct), chunks * ids.shape[-1], -1)
        index = {text: i for i, text in enumerate(distinct)}
        return encoded[[index[t] for t in texts]]

    def _chunked_ids(self, text: str, chunks: int) -> torch.Tensor:
        tok = self.tokenizer
        width = tok.model_max_length - 2  # 75 content tokens between BOS and EOS
        content = tok(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
        if len(content) > chunks * width:
            log.log(
                logging.WARNING if not self._warned_cut else logging.DEBUG,
                "prompt of %d tokens cut to %d (VEIL_PROMPT_CHUNKS=%d): %.60s...",
                len(content),
                chunks * width,
                chunks,
                text,
            )
            self._warned_cut = True
            content = content[: chunks * width]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        rows = []
        for k in range(chunks):
            piece = content[k * width : (k + 1) * width]
            row = [tok.bos_token_id, *piece, tok.eos_token_id]
            rows.append(row + [pad] * (tok.model_max_length - len(row)))
        return torch.tensor(rows, dtype=torch.long)

    @property
    def sampler_noise(self) -> SamplerNoise | None:
        """The Brownian noise scheme each image's record names (None: the sampler has none)."""
        return self.sampler.noise

    def _latent_shape(self) -> tuple[int, int, int]:
        side = self.config.image_size // VAE_SCALE
        return (self._latent_channels, side, side)

    def prepare_noise(self, seeds: list[int]) -> HostNoise | None:
        """The sampler's noise for a batch of ``seeds``, built on the CPU on the calling thread
        (safe off the generating thread: it reads only the fixed schedule); None when the
        sampler has nothing to build ahead."""
        build = self.sampler.build_noise
        if build is None:
            return None
        return build(self._sigmas, list(seeds), self._latent_shape(), self.device.type == "cuda")

    def _prepare_timesteps(self, seeds: list[int], noise: HostNoise | None = None) -> torch.Tensor:
        """The schedule, and the batch's noise for it (the exact scheme copies it to the device
        here, once, built here or taken from ``noise``). The begin index is set so that the
        first step does not look its timestep up on the device (a host-device sync); img2img
        sets its own."""
        scheduler = self.sampler.scheduler
        scheduler.set_timesteps(self.config.steps, device=self.device)
        scheduler.set_begin_index(0)
        self.sampler.prepare(scheduler, seeds, self._latent_shape(), self.device, noise)
        return scheduler.timesteps

    def _initial_latents(self, generators: list[torch.Generator]) -> torch.Tensor:
        shape = (len(generators), *self._latent_shape())
        latents = randn_tensor(shape, generator=generators, device=torch.device("cpu"), dtype=torch.float32)
        latents = latents.to(self.device) * self.sampler.scheduler.init_noise_sigma
        return latents

    def _img2img_timesteps(self, timesteps: torch.Tensor, strength: float) -> torch.Tensor:
        """The tail of the schedule that img2img runs, as diffusers' img2img pipelines cut it:
        ``int(steps x strength)`` steps (at least one), starting ``steps - that`` steps in; the
        sampler is told where it begins (a second-order sampler has ``order`` timesteps a step)."""
        scheduler, steps = self.sampler.scheduler, self.config.steps
        kept = min(max(int(steps * strength), 1), steps)
        begin = (steps - kept) * scheduler.order
        scheduler.set_begin_index(begin)
        return timesteps[begin:]

    def _noised_latents(
        self, init_images: list[np.ndarray], generators: list[torch.Generator], first: torch.Tensor
    ) -> torch.Tensor:
        """VAE latents of the crops (the distribution's mean: no randomness there), plus each
        image's own noise at the first kept timestep's sigma."""
        size = self.config.image_size
        if any(img.shape != (size, size, 3) for img in init_images):
            raise ValueError(f"init_images: each must be ({size}, {size}, 3) uint8")
        pixels = torch.from_numpy(np.stack(init_images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        encoded = self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist.mode().float()
        latents = encoded * self._vae_scaling
        noise = randn_tensor(latents.shape, generator=generators, device=torch.device("cpu"), dtype=torch.float32)
        first_t = first.repeat(latents.shape[0])
        return self.sampler.scheduler.add_noise(latents, noise.to(self.device), first_t)

    def _denoise(
        self,
        latents: torch.Tensor,
        embeddings: torch.Tensor,
        timesteps: torch.Tensor,
        generators: list[torch.Generator],
    ) -> torch.Tensor:
        scheduler, scale = self.sampler.scheduler, self.config.guidance_scale
        for t in timesteps:
            model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t).to(self.dtype)
            noise = self._unet_forward(model_in, t, encoder_hidden_states=embeddings).sample.float()
            uncond, cond = noise.chunk(2)
            guided = uncond + scale * (cond - uncond)
            extra = self.sampler.step_kwargs(latents, generators)
            latents = scheduler.step(guided, t, latents, **extra).prev_sample
        return latents

    def _decode(self, latents: torch.Tensor) -> list[np.ndarray]:
        scaled = (latents / self._vae_scaling).to(self.dtype)
        images = self._vae_decode(scaled).sample.float()
        images = ((images / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return [img.permute(1, 2, 0).cpu().numpy() for img in images]
