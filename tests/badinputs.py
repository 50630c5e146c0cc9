"""Writes the awkward inputs the method must survive, built from real face photos."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

FACE = "fr_obama.jpg"


def _face(faces_dir: Path) -> Image.Image:
    img = Image.open(faces_dir / FACE).convert("RGB")
    img.thumbnail((640, 640))
    return img


def write_bad_inputs(faces_dir: Path, dest: Path) -> dict[str, str]:
    """Writes files into ``dest``; returns {relative name: expected status}."""
    dest.mkdir(parents=True, exist_ok=True)
    face = _face(faces_dir)
    expected: dict[str, str] = {}

    (dest / "zero_bytes.jpg").write_bytes(b"")
    expected["zero_bytes.jpg"] = "failed"

    buf = io.BytesIO()
    face.save(buf, format="JPEG", quality=90)
    (dest / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    expected["truncated.jpg"] = "failed"

    (dest / "text_renamed.jpg").write_text("this is not an image\n" * 20)
    expected["text_renamed.jpg"] = "failed"

    (dest / "alpha.png").write_bytes((faces_dir / "fr_obama_rgba32.png").read_bytes())
    expected["alpha.png"] = "done"

    face.convert("CMYK").save(dest / "cmyk.jpg", format="JPEG", quality=90)
    expected["cmyk.jpg"] = "done"

    gray16 = (np.asarray(face.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(dest / "gray16.png")
    expected["gray16.png"] = "done"

    rotated = face.transpose(Image.Transpose.ROTATE_90)  # stored on its side...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...with EXIF orientation "rotate 90 CW to display"
    exif[0x010F] = "SecretCam"  # camera maker: must not reach the output
    rotated.save(dest / "exif_rotated.jpg", format="JPEG", exif=exif.tobytes(), quality=90)
    expected["exif_rotated.jpg"] = "done"

    Image.new("1", (20000, 20000)).save(dest / "bomb_20000.png", optimize=False)
    expected["bomb_20000.png"] = "failed"

    yy, xx = np.mgrid[0:480, 0:640]
    sky = np.stack([xx * 255 // 640, yy * 255 // 480, np.full_like(xx, 200)], axis=2).astype(np.uint8)
    Image.fromarray(sky).save(dest / "no_face.jpg", quality=95)
    expected["no_face.jpg"] = "no_face"
    return expected
