"""Decoding untrusted images and writing outputs without metadata."""

import io

import numpy as np
import pytest
from PIL import Image

from shared.errors import ImageDecodeError, ImageTooLargeError
from shared.imageio import FORMATS, IMAGE_EXTENSIONS, content_type, decode_image, encode_image, output_name
from tests.badinputs import write_bad_inputs

MAX = 120_000_000


@pytest.fixture(scope="module")
def bad(faces_dir, tmp_path_factory):
    dest = tmp_path_factory.mktemp("bad")
    return dest, write_bad_inputs(faces_dir, dest)


@pytest.mark.parametrize("name, error", [
    ("zero_bytes.jpg", ImageDecodeError), ("truncated.jpg", ImageDecodeError),
    ("text_renamed.jpg", ImageDecodeError), ("bomb_20000.png", ImageTooLargeError),
])
def test_bad_files_raise_typed_errors(bad, name, error):
    dest, _ = bad
    with pytest.raises(error):
        decode_image((dest / name).read_bytes(), max_pixels=MAX)


def test_alpha_cmyk_and_16bit_become_rgb(bad):
    dest, _ = bad
    for name in ("alpha.png", "cmyk.jpg", "gray16.png"):
        rgb = decode_image((dest / name).read_bytes(), max_pixels=MAX)
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, name
        assert 40 < rgb.mean() < 220, f"{name}: implausible brightness {rgb.mean()}"


def test_16bit_is_scaled_not_clipped(bad, faces_dir):
    dest, _ = bad
    rgb = decode_image((dest / "gray16.png").read_bytes(), max_pixels=MAX)
    assert rgb.max() < 255 or rgb.min() > 0 or len(np.unique(rgb)) > 50


def test_exif_rotation_is_applied(bad):
    dest, _ = bad
    stored = Image.open(dest / "exif_rotated.jpg")
    rgb = decode_image((dest / "exif_rotated.jpg").read_bytes(), max_pixels=MAX)
    assert rgb.shape[:2] == (stored.size[0], stored.size[1])  # width and height swapped back


@pytest.mark.parametrize("name, fmt", [("a.jpg", "JPEG"), ("b.png", "PNG"), ("c.webp", "WEBP")])
def test_encode_has_no_metadata(name, fmt):
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = encode_image(pixels, name)
    img = Image.open(io.BytesIO(data))
    assert img.format == fmt
    assert not img.getexif() and "icc_profile" not in img.info and "exif" not in img.info
    assert b"SecretCam" not in data


def test_output_name_keeps_known_extensions():
    assert output_name("a/b.JPG") == "a/b.JPG"
    assert output_name("a/b.gif") == "a/b.gif.png"


def test_encode_rejects_wrong_array():
    with pytest.raises(ValueError, match="pixels"):
        encode_image(np.zeros((4, 4), np.uint8), "x.png")


@pytest.mark.parametrize("ext", sorted(FORMATS))
def test_one_table_gives_format_and_content_type(ext):
    """Every extension in the table encodes to the format whose MIME type the table uploads it as."""
    name = output_name("dir/face" + ext.upper())
    img = Image.open(io.BytesIO(encode_image(np.zeros((8, 8, 3), np.uint8), name)))
    assert img.format == FORMATS[ext].pillow
    assert img.get_format_mimetype() == content_type(name)
    assert ext in IMAGE_EXTENSIONS


def test_unknown_extension_is_png_everywhere():
    name = output_name("face.gif")
    assert content_type(name) == "image/png"
    assert Image.open(io.BytesIO(encode_image(np.zeros((8, 8, 3), np.uint8), name))).format == "PNG"
