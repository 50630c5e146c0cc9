"""The re-identification guard: does a new face still lead a face recogniser to the
person? Each face's original and new embeddings are compared; closer than the threshold means
it still re-identifies, and the caller regenerates it (the next seed) or, after ``tries``
generations, replaces it by the fallback (a mask).

The embedders are ``veil eval``'s (``workers/embedders.py``: ``load_embedder`` -> ``embed(rgb, box)``
and ``distance``, the cosine distance of unit vectors); this module only binds them
(``load_guard``) and keeps the bookkeeping (``FaceCheck``), so both tiers run the same rule: the
GPU tier after diffusion (``workers.gpu.scene``), the CPU tier after a classical method
(``guard_classical``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.messages import GuardResult
from shared.settings import EmbedderName, GuardName, Settings

Box = list[float]


@dataclass(frozen=True)
class Guard:
    name: GuardName
    threshold: float
    tries: int
    #: face embedding at ``box`` (x1, y1, x2, y2, ...), or None when the embedder finds no face there
    embed: Callable[[np.ndarray, Box], np.ndarray | None]
    distance: Callable[[np.ndarray, np.ndarray], float]
    sha256: str = ""  # the embedder's weights, for the rows' model_sha256

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


#: ``--guard`` -> its embedder (``workers/embedders.py``)
EMBEDDER_OF: dict[GuardName, EmbedderName] = {
    GuardName.DLIB: EmbedderName.DLIB,
    GuardName.FACENET: EmbedderName.FACENET_VGGFACE2,
}

#: Cosine distance (the embedders' ``distance``: 1 - a.b of unit vectors) below which a face still
#: re-identifies, when ``VEIL_GUARD_THRESHOLD`` is not set. dlib 0.10: measured on the 40 photos of
#: ../shared/faces (BENCHMARKS.md, "Re-identification guard"), 98% of same-person pairs are closer
#: and 2.3% of different-person pairs (dlib's own Euclidean 0.6 rule does not carry over to unit
#: vectors: 0.6^2 / 2 = 0.18 flags 59% of different-person pairs here). facenet (VGGFace2): the
#: usual Euclidean 1.1 on unit vectors, i.e. 1.1^2 / 2 = 0.605, not measured here (no weights).
DEFAULT_THRESHOLD: dict[GuardName, float] = {GuardName.DLIB: 0.10, GuardName.FACENET: 0.605}


def load_guard(settings: Settings, guard: GuardName, device: Any) -> Guard | None:
    """The guard ``guard`` names, with its embedder loaded once (call it from a worker's
    model loading, after fork); None when off."""
    if guard is GuardName.OFF:
        return None
    from workers.embedders import load_embedder

    embedder = load_embedder(EMBEDDER_OF[guard], settings.models_dir, device or "cpu")
    threshold = settings.guard_threshold if settings.guard_threshold is not None else DEFAULT_THRESHOLD[guard]
    return Guard(
        name=guard,
        threshold=threshold,
        tries=settings.guard_tries,
        embed=embedder.embed,
        distance=embedder.distance,
        sha256=embedder.sha256,
    )


def guard_classical(
    rgb: np.ndarray,
    boxes: list[Box],
    anonymize: Callable[[np.ndarray, Box], np.ndarray],
    guard: Guard,
    fallback: Callable[[np.ndarray, Box], np.ndarray],
) -> tuple[np.ndarray, list[GuardResult]]:
    """A classical method (``workers.cpu.classical``'s blur or pixelate) through the guard,
    for the CPU tier: every face anonymized, each then checked on the anonymized image; a face that
    still re-identifies gets ``fallback`` (classical's mask). A classical method is deterministic
    (another try would give the same pixels), so it gets one try whatever ``guard.tries`` says.
    Returns the image and each face's result, in ``boxes``' order."""
    out = rgb
    for box in boxes:
        out = anonymize(out, box)
    checks = [guard.start(rgb, box) for box in boxes]
    for check in checks:
        if not check.check(out):
            check.fallback = "mask"
    for check in checks:
        if check.fallback:
            out = fallback(out, check.box)
    return out, [c.result() for c in checks]
