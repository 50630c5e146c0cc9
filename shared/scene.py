"""Scene mode's geometry: the square regenerated around each face, cutting it out at
the model's size, and blending the new square back with a feathered mask.

Pure numpy and Pillow; both tiers use it (the GPU tier for diffusion, the CPU tier for the
classical methods). Nothing outside a face's square is ever written: ``paste`` changes only the
pixels inside ``region``, and the mask is 0 on the square's border, so the border pixels keep
the input's values too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Region:
    """A square of the input image: top-left ``x``, ``y`` and ``side`` (input pixels)."""

    x: int
    y: int
    side: int

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.side]


def face_region(box: list[float], margin: float, height: int, width: int) -> Region:
    """The square around ``box`` (x1, y1, x2, y2, ...): centred on it, its longer side plus ``margin``
    of it on each side, shifted (never shrunk, unless the image is smaller) to lie inside the image."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    side = round(max(x2 - x1, y2 - y1) * (1 + 2 * margin))
    side = max(8, min(side, height, width))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    x = min(max(round(cx - side / 2), 0), width - side)
    y = min(max(round(cy - side / 2), 0), height - side)
    return Region(x, y, side)


def cut(rgb: np.ndarray, region: Region, size: int) -> np.ndarray:
    """The region's pixels resized to ``size`` x ``size`` (the model's input)."""
    crop = rgb[region.y : region.y + region.side, region.x : region.x + region.side]
    if region.side == size:
        return np.ascontiguousarray(crop)
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.LANCZOS))


def feather_mask(side: int, feather: float) -> np.ndarray:
    """(side, side) float32 weights of the new pixels: 1 in the middle, falling linearly to 0 over
    ``feather`` x side at each edge (0 on the outermost pixels: the square's border is the input's)."""
    width = max(1.0, feather * side)
    ramp = np.clip(np.arange(side, dtype=np.float32) / width, 0.0, 1.0)
    edge = np.minimum(ramp, ramp[::-1])
    return np.minimum(edge[:, None], edge[None, :])


def paste(canvas: np.ndarray, new: np.ndarray, region: Region, feather: float) -> None:
    """Blend ``new`` (any square size, resized to the region) into ``canvas`` in place, inside
    ``region`` only, with ``feather_mask``."""
    side = region.side
    if new.shape[0] != side:
        new = np.asarray(Image.fromarray(new).resize((side, side), Image.Resampling.LANCZOS))
    window = canvas[region.y : region.y + side, region.x : region.x + side]
    alpha = feather_mask(side, feather)[:, :, None]
    blended = window.astype(np.float32) * (1 - alpha) + new.astype(np.float32) * alpha
    window[...] = np.clip(np.round(blended), 0, 255).astype(np.uint8)


def mask_box(canvas: np.ndarray, box: list[float]) -> None:
    """The strongest fallback, in place: the face's box filled black, as the classical
    ``mask`` does (which the GPU tier may not import: ``workers/cpu``)."""
    h, w = canvas.shape[:2]
    x1, y1 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x2, y2 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    if x2 > x1 and y2 > y1:
        canvas[y1:y2, x1:x2] = 0


def paste_order(regions: list[Region]) -> list[int]:
    """Indices of the faces in the order they are pasted: smallest square first, so where squares
    overlap the bigger (nearer) face is on top."""
    return sorted(range(len(regions)), key=lambda i: (regions[i].side, i))


def face_seed(image_seed: int, index: int, attempt: int = 0) -> int:
    """A face's seed: from its image's seed (itself from the run's seed and the key) and its index
    (faces are numbered biggest first); the guard's retries take the next seeds."""
    digest = hashlib.sha256(f"{image_seed}:face{index}".encode()).digest()
    return (int.from_bytes(digest[:4], "big") + attempt) & 0x7FFFFFFF
