"""The re-identification guard (issue 14): does a new face still lead a face recogniser to the
person? Each face's original and new embeddings are compared; closer than the threshold means
it still re-identifies, and the caller regenerates it (the next seed) or, after ``tries``
generations, replaces it by the fallback (a mask).

The embedders are issue 13's (``workers/embedders.py``: the ``Embedder`` Enum, ``embed(rgb, box)``
and ``distance``); this module only binds them (``load_guard``) and keeps the bookkeeping
(``FaceCheck``), so both tiers run the same rule: the GPU tier after diffusion, the CPU tier after
a classical method (blur, pixelate).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.messages import GuardResult
from shared.settings import GuardName, Settings

Box = list[float]


@dataclass(frozen=True)
class Guard:
    name: GuardName
    threshold: float
    tries: int
    #: face embedding at ``box`` (x1, y1, x2, y2, ...), or None when the embedder finds no face there
    embed: Callable[[np.ndarray, Box], np.ndarray | None]
    distance: Callable[[np.ndarray, np.ndarray], float]

    def start(self, original: np.ndarray, box: Box) -> FaceCheck:
        """The bookkeeping of one face, with its original's embedding (computed once)."""
        return FaceCheck(self, self.embed(original, box), list(box))


@dataclass
class FaceCheck:
    """One face through the guard: each try's distance, and whether the face may be kept."""

    guard: Guard
    original: np.ndarray | None
    box: Box
    distances: list[float] = field(default_factory=list)
    fallback: str | None = None

    def check(self, new_image: np.ndarray) -> bool:
        """Measures a try (the whole new image, the face at ``box``); True when it passes. An
        original the embedder cannot see, or a new face it cannot find, cannot be matched: it passes
        (distance recorded as infinity)."""
        new = self.guard.embed(new_image, self.box) if self.original is not None else None
        d = math.inf if self.original is None or new is None else float(self.guard.distance(self.original, new))
        self.distances.append(d)
        return d >= self.guard.threshold

    @property
    def passed(self) -> bool:
        return bool(self.distances) and self.distances[-1] >= self.guard.threshold

    @property
    def exhausted(self) -> bool:
        return len(self.distances) >= self.guard.tries

    def result(self) -> GuardResult:
        return GuardResult(
            embedder=self.guard.name.value,
            threshold=self.guard.threshold,
            tries=len(self.distances),
            distances=[round(d, 4) if math.isfinite(d) else 1e9 for d in self.distances],
            passed=self.passed,
            fallback=self.fallback,
        )


def load_guard(settings: Settings, guard: GuardName, device: Any) -> Guard | None:
    """The guard ``guard`` names, with issue 13's embedder loaded once (call it from a worker's
    model loading, after fork); None when off."""
    if guard is GuardName.OFF:
        return None
    # Issue 13's module (branch h13): an Enum of embedders and embed(rgb, box) / distance(a, b).
    embedders = importlib.import_module("workers.embedders")
    model = embedders.Embedder(guard.value)
    loaded = embedders.load(model, settings.models_dir, device) if hasattr(embedders, "load") else model
    return Guard(
        name=guard,
        threshold=settings.guard_threshold,
        tries=settings.guard_tries,
        embed=lambda rgb, box: _embed(embedders, loaded, rgb, box),
        distance=lambda a, b: float(embedders.distance(a, b)),
    )


def _embed(embedders: Any, loaded: Any, rgb: np.ndarray, box: Box) -> np.ndarray | None:
    embed = getattr(loaded, "embed", None) or (lambda r, b: embedders.embed(loaded, r, b))
    vector = embed(rgb, box)
    return None if vector is None else np.asarray(vector, dtype=np.float32)
