"""The classical methods change the face box only, keep the image's size, and follow their
strength settings."""

from __future__ import annotations

import numpy as np
import pytest

from shared.settings import Method, Settings
from workers.cpu.classical import CLASSICAL, blur, box_pixels, face_anonymizer, is_classical, mask, pixelate


def _image(h: int = 120, w: int = 160) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


BOX = [40.3, 30.0, 100.0, 95.6, 0.99]  # x1, y1, x2, y2, score: pixels 40..99 x 30..95


@pytest.mark.parametrize("method", list(CLASSICAL))
def test_only_the_face_box_changes_and_the_size_stays(method):
    rgb = _image()
    before = rgb.copy()
    out = face_anonymizer(method, Settings.from_env({}))(rgb, BOX)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.array_equal(rgb, before)  # the input is not modified
    left, top, right, bottom = box_pixels(rgb.shape, BOX)
    assert (left, top, right, bottom) == (40, 30, 100, 96)
    outside = np.ones(rgb.shape[:2], bool)
    outside[top:bottom, left:right] = False
    assert np.array_equal(out[outside], rgb[outside])
    inside = out[top:bottom, left:right].astype(int) - rgb[top:bottom, left:right]
    assert np.abs(inside).mean() > 20  # the face region did change (noise -> smooth / flat)


def test_mask_is_solid_black():
    out = mask(_image(), BOX)
    assert (out[30:96, 40:100] == 0).all()


def test_pixelate_has_the_number_of_blocks_asked():
    out = pixelate(_image(), [0, 0, 100, 100], blocks=4)  # 25 px blocks
    face = out[:100, :100]
    assert len(np.unique(face.reshape(-1, 3), axis=0)) == 16
    assert (face[:25, :25] == face[0, 0]).all() and not (face[:25, :26] == face[0, 0]).all()


def test_blur_strength_follows_sigma():
    rgb = _image()
    residual = [np.abs(blur(rgb, BOX, sigma=s).astype(int) - rgb).mean() for s in (0.01, 0.05, 0.2)]
    assert residual[0] < residual[1] < residual[2]
    smooth = blur(rgb, BOX, sigma=0.2)[30:96, 40:100].astype(float)
    assert np.abs(np.diff(smooth, axis=1)).mean() < 5  # neighbouring pixels nearly equal


def test_settings_set_the_strength():
    rgb = _image()
    light = face_anonymizer(Method.BLUR, Settings.from_env({"VEIL_BLUR_SIGMA": "0.02"}))(rgb, BOX)
    assert np.array_equal(light, blur(rgb, BOX, sigma=0.02))
    coarse = face_anonymizer(Method.PIXELATE, Settings.from_env({"VEIL_PIXELATE_BLOCKS": "3"}))(rgb, BOX)
    assert np.array_equal(coarse, pixelate(rgb, BOX, blocks=3))
    with pytest.raises(ValueError):
        Settings.from_env({"VEIL_PIXELATE_BLOCKS": "0"})


def test_sd_is_not_classical_and_a_box_outside_is_refused():
    assert not is_classical(Method.SD) and all(is_classical(m) for m in (Method.BLUR, Method.PIXELATE, Method.MASK))
    with pytest.raises(ValueError, match="GPU tier"):
        face_anonymizer(Method.SD, Settings.from_env({}))
    with pytest.raises(ValueError, match="no pixel"):
        mask(_image(), [500, 500, 600, 600])
    edge = mask(_image(), [-10, -10, 20, 20])  # clipped to the image
    assert (edge[:20, :20] == 0).all() and edge.shape == (120, 160, 3)
