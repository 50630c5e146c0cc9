"""Third-party noise (timm, torchsde, diffusers) stays out of stderr at default verbosity and
shows at debug verbosity. Loads the tiny RANDOM models and generates in a fresh process, with
the torchsde trees (``VEIL_SAMPLER_NOISE=tree``: the exact noise, the default, never calls
torchsde, whose warnings are what this checks)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import logging, sys
from pathlib import Path
import torch
if sys.argv[2] == "debug":
    logging.basicConfig(level=logging.DEBUG)
from workers.cpu.attributes import AttributeModels
from workers.gpu.generation import GenerationConfig, PortraitGenerator
from workers.gpu.loading import load_sd_components
from shared.settings import SamplerNoise
models = Path(sys.argv[1])
AttributeModels.load(models, torch.device("cpu"))
c = load_sd_components(models, torch.device("cpu"), torch.float32)
gen = PortraitGenerator(c.unet, c.vae, c.text_encoder, c.tokenizer, c.scheduler_config,
                        GenerationConfig(steps=2, image_size=64, sampler_noise=SamplerNoise.TREE), torch.device("cpu"),
                        torch.float32)
for seed in (1, 2):
    gen(["a portrait"], ["bald"], [seed])
"""
NOISE = {
    "timm": "Importing from timm.models.layers is deprecated",
    "torchsde": "Should have t",
    "float32": "should be kept in float32",
    "accelerate": "`accelerate` was not found",
}


def stderr_of(tiny_models: Path, mode: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": ""}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_models), mode], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stderr


@pytest.fixture(scope="module")
def expected_noise() -> dict[str, str]:
    has_accelerate = importlib.util.find_spec("accelerate") is not None
    return {k: v for k, v in NOISE.items() if not (k == "accelerate" and has_accelerate)}


def test_noise_is_quiet_at_default_verbosity(tiny_models):
    err = stderr_of(tiny_models, "default")
    assert [k for k, text in NOISE.items() if text in err] == []


def test_noise_shows_at_debug_verbosity(tiny_models, expected_noise):
    """The same run at debug level prints them all: the quiet run's silence is the filters' doing."""
    err = stderr_of(tiny_models, "debug")
    assert [k for k, text in expected_noise.items() if text not in err] == []
