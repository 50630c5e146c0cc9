"""Decoding untrusted images and encoding outputs that carry no metadata.

``decode_image`` turns bytes into an RGB uint8 array or raises a typed permanent error
(``ImageDecodeError``, ``ImageTooLargeError``). It applies the EXIF orientation, composites
alpha onto white, converts CMYK, palette and grayscale to RGB and scales 16-bit samples down.
``encode_image`` writes fresh pixels only: no EXIF, GPS, ICC profile or text chunks.
"""

from __future__ import annotations

import io
import threading
import warnings
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from shared.errors import ImageDecodeError, ImageTooLargeError, UnsupportedImageError


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


#: Pillow's pixel limit is one global: it is set to each decode's ``max_pixels`` under this lock.
_PILLOW_LIMIT = threading.Lock()
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")


def decode_image(
    data: bytes, *, max_pixels: int, max_side: int | None = None, max_decoded: int | None = None
) -> np.ndarray:
    """Bytes -> (H, W, 3) uint8 RGB array, upright. Raises a ``PermanentError`` on bad input.
    ``max_side``: decode at most about this many pixels on the longer side (see ``decode_scaled``)."""
    return decode_scaled(data, max_pixels=max_pixels, max_side=max_side, max_decoded=max_decoded)[0]


def decode_scaled(
    data: bytes, *, max_pixels: int, max_side: int | None = None, max_decoded: int | None = None
) -> tuple[np.ndarray, float]:
    """``decode_image`` and the scale: input pixels per decoded pixel (1.0 unless reduced).

    With ``max_side``, a larger image is reduced by a whole factor while decoding, keeping its
    longer side >= ``max_side``: JPEG by DCT scaling (``draft``, never decoded at full size),
    other formats by ``reduce`` right after loading, so no float copy of the full image is made.

    ``max_decoded`` (issue 23, ``VEIL_MAX_DECODED_PIXELS``): the pixels Pillow will hold at once,
    judged from the header before any is decoded (a JPEG's after DCT scaling; any other format's
    in full, as it is loaded before it is reduced); above it, ``ImageTooLargeError``. A 38-byte
    lossless WebP of 10900x10900 is refused here instead of taking a process to 2.8 GB.
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with _PILLOW_LIMIT, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow refuses above it, whatever its default
            opened = Image.open(io.BytesIO(data))
        width, height = opened.size  # from the header, before any pixel is decoded
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"{width}x{height} = {width * height} pixels exceeds VEIL_MAX_IMAGE_PIXELS={max_pixels}"
            )
        if getattr(opened, "is_animated", False):
            raise UnsupportedImageError(f"animated {opened.format} ({getattr(opened, 'n_frames', '?')} frames)")
        factor = max(width, height) // max_side if max_side else 1
        _check_budget(opened.format, width, height, factor, max_decoded)
        img = _reduced(opened, factor) if factor >= 2 else _loaded(opened)
    except (ImageTooLargeError, UnsupportedImageError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(str(exc)) from exc
    except UnidentifiedImageError as exc:
        if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
            raise UnsupportedImageError(f"HEIF/AVIF ({data[8:12].decode()}): convert to JPEG or PNG") from exc
        raise ImageDecodeError("not an image format Pillow can read") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise ImageDecodeError(f"corrupt image: {exc}") from exc
    scale = max(width, height) / max(img.size)
    return _to_rgb_array(ImageOps.exif_transpose(img)), scale


def _check_budget(fmt: str | None, width: int, height: int, factor: int, max_decoded: int | None) -> None:
    if max_decoded is None:
        return
    dct = min(8, 1 << (factor.bit_length() - 1)) if fmt == "JPEG" and factor >= 2 else 1
    held = -(-width // dct) * -(-height // dct)
    if held > max_decoded:
        raise ImageTooLargeError(
            f"{width}x{height} {fmt or 'image'} would decode {held} pixels at once, more than "
            f"VEIL_MAX_DECODED_PIXELS={max_decoded}"
        )


def _loaded(img: Image.Image) -> Image.Image:
    img.load()
    return img


def _reduced(img: Image.Image, factor: int) -> Image.Image:
    """``img`` reduced by about ``factor`` (a whole number >= 2) while or right after decoding."""
    width, height = img.size
    if img.format == "JPEG":
        img.draft(None, (-(-width // factor), -(-height // factor)))  # DCT scaling by 1/2, 1/4 or 1/8
        img.load()
        factor //= max(width, height) // max(img.size)  # what DCT scaling left to do
        if factor < 2:
            return img
    else:
        img.load()
    info = img.info
    if img.mode.startswith("I;16"):  # reduce() does not take 16-bit modes: block means in numpy,
        small = Image.fromarray(_block_mean_16(img, factor))  # a strip at a time (no full-size copy)
    else:
        if img.mode in ("1", "P", "PA"):
            img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
        small = img.reduce(factor)
    small.info = info  # the EXIF orientation still applies
    return small


def _block_mean_16(img: Image.Image, factor: int, rows: int = 64) -> np.ndarray:
    w, h = img.size[0] // factor * factor, img.size[1] // factor * factor
    out = []
    for y in range(0, h, factor * rows):
        strip = np.asarray(img.crop((0, y, w, min(h, y + factor * rows))), dtype=np.float32)
        out.append(strip.reshape(strip.shape[0] // factor, factor, w // factor, factor).mean(axis=(1, 3)))
    return np.round(np.concatenate(out)).astype(np.uint16)


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


def _suffix(name: str) -> str:
    """``PurePosixPath(name).suffix`` by string operations (per key in the feeder: 5x cheaper)."""
    last = name.rstrip("/").rpartition("/")[2]
    dot = last.rfind(".")
    return last[dot:] if 0 < dot < len(last) - 1 else ""


def output_name(input_name: str) -> str:
    """The output keeps the input's relative name; unknown extensions get ``.png`` appended."""
    return input_name if _suffix(input_name).lower() in FORMATS else input_name + ".png"


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
