"""Shared fixtures. Real photos come from ``VEIL_FACES_DIR`` (default ``../shared/faces``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from shared.settings import Settings  # noqa: E402


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    path = Settings.from_env().faces_dir
    if not (path / "identities.csv").is_file():
        pytest.fail(f"real face photos not found at {path}: set VEIL_FACES_DIR to ../shared/faces")
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """Tiny RANDOM models in the real on-disk formats: images are noise, attributes random."""
    from models.tiny import write_tiny_models

    dest = tmp_path_factory.mktemp("tiny-models")
    write_tiny_models(dest)
    return dest
