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


def test_16bit_grey_equals_its_source_channel(bad, faces_dir):
    """gray16.png holds the 8-bit grey face x 257: decoding must give back exactly that grey
    in all three channels (scaled by 1/257, neither clipped nor shifted)."""
    dest, _ = bad
    source = np.asarray(Image.open(dest / "gray16.png"), dtype=np.uint32) // 257
    rgb = decode_image((dest / "gray16.png").read_bytes(), max_pixels=MAX)
    for channel in range(3):
        assert np.array_equal(rgb[..., channel], source.astype(np.uint8)), f"channel {channel}"


def test_exif_rotation_is_applied_to_the_pixels(bad, faces_dir):
    """exif_rotated.jpg stores the face turned on its side with orientation 6: the decoded
    pixels must match the upright face, not merely have its shape."""
    dest, _ = bad
    stored = Image.open(dest / "exif_rotated.jpg")
    upright = np.asarray(stored.convert("RGB").transpose(Image.Transpose.ROTATE_270), dtype=np.int16)
    on_its_side = np.asarray(stored.convert("RGB"), dtype=np.int16)
    rgb = decode_image((dest / "exif_rotated.jpg").read_bytes(), max_pixels=MAX).astype(np.int16)
    assert rgb.shape == upright.shape
    assert np.abs(rgb - upright).mean() < 1.0  # same JPEG pixels, turned upright
    if on_its_side.shape == rgb.shape:  # only comparable when the photo is square
        assert np.abs(rgb - on_its_side).mean() > 10


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
