"""The defaults are the paper's method (Piano et al. 2024). The integration tests run at 64 px
and a few steps to stay fast, so the defaults themselves are pinned here (read from the class,
whatever VEIL_* the shell has)."""

from shared.settings import SamplerName, Settings


def default(name: str):
    return Settings.model_fields[name].default


def test_defaults_are_the_papers_settings():
    assert default("image_size") == 512
    assert default("steps") == 15
    assert default("sampler") == SamplerName.FAITHFUL  # DPM++ SDE Karras (workers/gpu/schedulers.py)
