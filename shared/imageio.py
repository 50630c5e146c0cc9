"""Decoding untrusted images and encoding outputs that carry no metadata.

``decode_image`` turns bytes into an RGB uint8 array or raises a typed permanent error
(``ImageDecodeError``, ``ImageTooLargeError``). It applies the EXIF orientation, composites
alpha onto white, converts CMYK, palette and grayscale to RGB and scales 16-bit samples down.
``encode_image`` writes fresh pixels only: no EXIF, GPS, ICC profile or text chunks.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from shared.errors import ImageDecodeError, ImageTooLargeError


@dataclass(frozen=True)
class ImageFormat:
    pillow: str  # Pillow's format name, for encoding
    content_type: str  # the MIME type an object store is told


#: The one table of image file types: inputs are listed by these extensions, outputs keep their
#: input's extension and are encoded and uploaded by it. Other names get ``.png`` appended.
FORMATS: dict[str, ImageFormat] = {
    ".jpg": ImageFormat("JPEG", "image/jpeg"),
    ".jpeg": ImageFormat("JPEG", "image/jpeg"),
    ".png": ImageFormat("PNG", "image/png"),
    ".webp": ImageFormat("WEBP", "image/webp"),
    ".bmp": ImageFormat("BMP", "image/bmp"),
    ".tif": ImageFormat("TIFF", "image/tiff"),
    ".tiff": ImageFormat("TIFF", "image/tiff"),
}
IMAGE_EXTENSIONS = frozenset(FORMATS)
_DEFAULT = FORMATS[".png"]


def image_format(name: str) -> ImageFormat:
    """The format ``name``'s extension names (case-insensitive); PNG for any other name."""
    return FORMATS.get(PurePosixPath(name).suffix.lower(), _DEFAULT)


def content_type(name: str) -> str:
    """The MIME type of the image ``encode_image(pixels, name)`` writes."""
    return image_format(name).content_type


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Bytes -> (H, W, 3) uint8 RGB array, upright. Raises a ``PermanentError`` on bad input."""
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size  # from the header, before any pixel is decoded
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"{width}x{height} = {width * height} pixels exceeds VEIL_MAX_IMAGE_PIXELS={max_pixels}"
                )
            img.load()
    except ImageTooLargeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not an image format Pillow can read") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise ImageDecodeError(f"corrupt image: {exc}") from exc
    return _to_rgb_array(ImageOps.exif_transpose(img))


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        gray = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "F":
        gray = np.clip(np.asarray(img, dtype=np.float64), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.array(img.convert("RGB"), dtype=np.uint8)  # a writable copy


def output_name(input_name: str) -> str:
    """The output keeps the input's relative name; unknown extensions get ``.png`` appended."""
    suffix = PurePosixPath(input_name).suffix.lower()
    return input_name if suffix in FORMATS else input_name + ".png"


def encode_image(pixels: np.ndarray, name: str) -> bytes:
    """(H, W, 3) uint8 -> encoded bytes in the format ``name``'s extension names.

    The image is built from the pixel array alone, so nothing of the input's metadata
    (EXIF, GPS, ICC profile, comments) can travel into the output.
    """
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"pixels must be (H, W, 3) uint8, got {pixels.shape} {pixels.dtype}")
    fmt = image_format(name).pillow
    buf = io.BytesIO()
    img = Image.fromarray(pixels, mode="RGB")
    if fmt == "JPEG":
        img.save(buf, format=fmt, quality=95, subsampling=0)
    else:
        img.save(buf, format=fmt)
    return buf.getvalue()
