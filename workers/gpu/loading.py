"""Loading the generator (Realistic Vision v5.1 + sd-vae-ft-mse) from the models folder.

One code path for the real weights and the tiny test ones (``models.tiny``):

* ``realistic-vision-v5.1/model_index.json`` present: the diffusers folder is loaded;
* otherwise the original-format single file ``Realistic_Vision_V5.1_fp16-no-ema.safetensors``
  with the diffusers configs and CLIP tokenizer in ``sd15-config/``.

The VAE is always replaced with ``sd-vae-ft-mse``, as in the paper. Nothing is fetched: every
load is ``local_files_only`` inside ``hub_offline()``, and missing files raise
``MissingWeightsError`` naming them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models.weights import (
    RV_FOLDER,
    RV_SINGLE_FILE,
    SD15_CONFIG,
    VAE_FOLDER,
    Component,
    check_single_file_text_encoder,
    file_sha256,
    has_diffusers_folder,
    missing_files,
    tree_sha256,
)
from shared.errors import MissingWeightsError
from shared.quiet import quiet_third_party

#: subfolders a diffusers-format generator folder must have (its VAE is not used).
DIFFUSERS_PARTS = ("unet", "text_encoder", "tokenizer", "scheduler")
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"


@dataclass
class SDComponents:
    """What the generator needs, on one device and dtype, in eval mode without gradients."""

    unet: Any  # diffusers.UNet2DConditionModel
    vae: Any  # diffusers.AutoencoderKL (sd-vae-ft-mse)
    text_encoder: Any  # transformers.CLIPTextModel
    tokenizer: Any  # transformers.CLIPTokenizer
    scheduler_config: dict[str, Any]
    #: model name -> sha256 of the files it was loaded from (for the manifest)
    model_sha256: dict[str, str] = field(default_factory=dict)


@contextmanager
def hub_offline() -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` for the duration, also for the already-imported hub client
    (huggingface_hub reads the variable once, at import), so any request raises instead."""
    import huggingface_hub.constants as hub_constants

    old_env, old_flag = os.environ.get("HF_HUB_OFFLINE"), hub_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = old_flag
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


def load_sd_components(models_dir: Path, device: torch.device, dtype: torch.dtype) -> SDComponents:
    """Load UNet, text encoder, tokenizer and scheduler config of Realistic Vision v5.1 and the
    sd-vae-ft-mse VAE from ``models_dir``; raise ``MissingWeightsError`` if files are missing."""
    models_dir = Path(models_dir)
    check_generator_files(models_dir)
    quiet_third_party()
    with hub_offline():
        vae = load_vae(models_dir / VAE_FOLDER, dtype)
        if has_diffusers_folder(models_dir):
            parts = _load_diffusers_folder(models_dir / RV_FOLDER, vae, dtype)
        else:
            parts = _load_single_file(models_dir, vae, dtype)
    for module in (parts.unet, parts.vae, parts.text_encoder):
        _freeze(module, device, dtype)
    parts.model_sha256[VAE_FOLDER] = tree_sha256(_model_files(models_dir / VAE_FOLDER))
    return parts


def check_generator_files(models_dir: Path) -> None:
    """Raise ``MissingWeightsError`` naming every generator file or folder that is missing."""
    missing = [str(p) for p in missing_files(models_dir, {Component.GENERATOR})]
    if has_diffusers_folder(models_dir):
        folder = models_dir / RV_FOLDER
        missing += [str(folder / part) for part in DIFFUSERS_PARTS if not (folder / part).is_dir()]
    if missing:
        raise MissingWeightsError(missing=missing, models_dir=str(models_dir))


def load_vae(folder: Path, dtype: torch.dtype) -> Any:
    """The sd-vae-ft-mse AutoencoderKL (a diffusers folder), loaded in ``dtype``."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(str(folder), local_files_only=True, torch_dtype=dtype)


def _load_diffusers_folder(folder: Path, vae: Any, dtype: torch.dtype) -> SDComponents:
    """The diffusers folder's UNet, text encoder, tokenizer and scheduler (its VAE is unused)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    root = str(folder)
    weights = [p for p in _model_files(folder) if p != folder.parent / RV_SINGLE_FILE]
    return SDComponents(
        unet=UNet2DConditionModel.from_pretrained(root, subfolder="unet", local_files_only=True, torch_dtype=dtype),
        vae=vae,
        text_encoder=CLIPTextModel.from_pretrained(root, subfolder="text_encoder", local_files_only=True, dtype=dtype),
        tokenizer=CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=True),
        scheduler_config=_read_json(folder / SCHEDULER_CONFIG),
        model_sha256={RV_FOLDER: tree_sha256(weights)},
    )


def _load_single_file(models_dir: Path, vae: Any, dtype: torch.dtype) -> SDComponents:
    """The original-format checkpoint; ``config=`` is required, or diffusers asks the hub
    which configs fit. The already-loaded VAE is passed in so the embedded one is skipped."""
    from diffusers import StableDiffusionPipeline

    single, config_dir = models_dir / RV_SINGLE_FILE, models_dir / SD15_CONFIG
    check_single_file_text_encoder(single)  # a clear error, not diffusers' guess at another model type
    pipe = StableDiffusionPipeline.from_single_file(
        str(single),
        config=str(config_dir),
        local_files_only=True,
        torch_dtype=dtype,
        vae=vae,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return SDComponents(
        unet=pipe.unet,
        vae=vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        scheduler_config=_read_json(config_dir / SCHEDULER_CONFIG),
        model_sha256={RV_FOLDER: file_sha256(single), SD15_CONFIG: tree_sha256(_model_files(config_dir))},
    )


def _freeze(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """On ``device`` in ``dtype`` (loaded in it already: diffusers warns on a ``to(dtype)``)."""
    if any(p.dtype != dtype for p in module.parameters() if p.is_floating_point()):
        module.to(dtype=dtype)
    module.to(device=device)
    module.eval()
    module.requires_grad_(False)


def _model_files(folder: Path) -> list[Path]:
    """The files a model folder is made of (not its sha cache nor hidden files)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data
