"""Classical face anonymization, as deface offers it: Gaussian blur, pixelation (mosaic) and a
solid mask of the face box. The paper's method (``Method.SD``) generates a new portrait on the
GPU tier; these change only the face box, in place, keep the rest of the image and its size, and
finish on the CPU tier. They are what users pick instead of generative anonymization, and the
evaluation's controls.

Each method is a function ``(rgb, box, **strength) -> rgb``: ``rgb`` is (H, W, 3) uint8, ``box``
is ``x1, y1, x2, y2[, score]`` in that image's pixels; the input array is not modified.
``CLASSICAL`` maps the ``Method`` Enum to them; ``face_anonymizer(method, settings)`` binds the
strength settings (``VEIL_BLUR_SIGMA``, ``VEIL_PIXELATE_BLOCKS``) and gives ``(rgb, box) -> rgb``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np

from shared.settings import Method, Settings

FaceBox = Sequence[float] | np.ndarray  # x1, y1, x2, y2[, score]
Anonymizer = Callable[[np.ndarray, FaceBox], np.ndarray]


def box_pixels(shape: tuple[int, ...], box: FaceBox) -> tuple[int, int, int, int]:
    """The box as whole pixel bounds ``x1, y1, x2, y2`` (x2, y2 exclusive) clipped to the image;
    every pixel the box touches is inside. Raises ``ValueError`` for a box with no pixel inside."""
    h, w = shape[:2]
    x1, y1, x2, y2 = (float(v) for v in list(box)[:4])
    left, top = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
    right, bottom = min(w, int(np.ceil(x2))), min(h, int(np.ceil(y2)))
    if right <= left or bottom <= top:
        raise ValueError(f"face box {list(box)[:4]} has no pixel inside a {w}x{h} image")
    return left, top, right, bottom


def blur(rgb: np.ndarray, box: FaceBox, *, sigma: float = 0.15) -> np.ndarray:
    """Gaussian blur of the face box, ``sigma`` x the box width (pixels). The box is blurred with
    its surroundings as context (so its edge is not darker or mirrored), then only the box is
    written back. A wide blur (sigma above 8 px) is computed on a copy reduced to sigma = 4 px and
    enlarged back (bicubic): the same blur to within rounding, at a cost that does not grow with
    the face's size (a 96 px sigma at full size took seconds per face)."""
    import cv2

    left, top, right, bottom = box_pixels(rgb.shape, box)
    sigma_px = max(sigma * (right - left), 0.3)
    pad = int(np.ceil(3 * sigma_px))  # the kernel's reach (cv2 uses about 3 sigma for uint8)
    h, w = rgb.shape[:2]
    cl, ct, cr, cb = max(0, left - pad), max(0, top - pad), min(w, right + pad), min(h, bottom + pad)
    context = np.ascontiguousarray(rgb[ct:cb, cl:cr])
    factor = sigma_px / 4.0 if sigma_px > 8 else 1.0
    if factor > 1:
        small_size = (max(1, round(context.shape[1] / factor)), max(1, round(context.shape[0] / factor)))
        small = cv2.resize(context, small_size, interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), sigmaX=4.0, sigmaY=4.0, borderType=cv2.BORDER_REFLECT)
        size = (context.shape[1], context.shape[0])
        blurred = cv2.resize(small, size, interpolation=cv2.INTER_CUBIC)
    else:
        blurred = cv2.GaussianBlur(context, (0, 0), sigmaX=sigma_px, sigmaY=sigma_px, borderType=cv2.BORDER_REFLECT)
    out = rgb.copy()
    out[top:bottom, left:right] = blurred[top - ct : bottom - ct, left - cl : right - cl]
    return out


def pixelate(rgb: np.ndarray, box: FaceBox, *, blocks: int = 10) -> np.ndarray:
    """Mosaic: ``blocks`` square blocks across the box width, each filled with its mean colour
    (the last row and column of blocks may be cut by the box's edge)."""
    left, top, right, bottom = box_pixels(rgb.shape, box)
    size = max(1, int(np.ceil((right - left) / max(1, blocks))))
    out = rgb.copy()
    face = out[top:bottom, left:right]  # a view: written in place
    for y in range(0, face.shape[0], size):
        for x in range(0, face.shape[1], size):
            cell = face[y : y + size, x : x + size]
            cell[...] = np.round(cell.reshape(-1, 3).mean(axis=0)).astype(np.uint8)
    return out


def mask(rgb: np.ndarray, box: FaceBox, *, color: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """A solid rectangle over the face box (black, as deface's ``solid``)."""
    left, top, right, bottom = box_pixels(rgb.shape, box)
    out = rgb.copy()
    out[top:bottom, left:right] = np.asarray(color, np.uint8)
    return out


#: the classical methods; ``Method.SD`` (the paper's) is the GPU tier's and is not here
CLASSICAL: dict[Method, Callable[..., np.ndarray]] = {
    Method.BLUR: blur,
    Method.PIXELATE: pixelate,
    Method.MASK: mask,
}


def is_classical(method: Method) -> bool:
    return method in CLASSICAL


#: each classical method bound to its strength from the settings
BOUND: dict[Method, Callable[[Settings], Anonymizer]] = {
    Method.BLUR: lambda settings: partial(blur, sigma=settings.blur_sigma),
    Method.PIXELATE: lambda settings: partial(pixelate, blocks=settings.pixelate_blocks),
    Method.MASK: lambda settings: mask,
}


def face_anonymizer(method: Method, settings: Settings) -> Anonymizer:
    """``(rgb, box) -> rgb`` for a classical method, with its strength from ``settings``."""
    if method not in BOUND:
        raise ValueError(f"{method.value!r} is not a classical method: it runs on the GPU tier")
    return BOUND[method](settings)
