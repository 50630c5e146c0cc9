"""Face detection on real photos with MTCNN's real weights (shipped in facenet-pytorch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.errors import MissingWeightsError

from shared.imageio import decode_image
from shared.settings import DetectorName
from workers.cpu.detection import Detections, biggest_face, build_detector, detect_downscaled

MAX = 120_000_000


@pytest.fixture(scope="module")
def mtcnn(tmp_path_factory):
    return build_detector(DetectorName.MTCNN, torch.device("cpu"), tmp_path_factory.mktemp("m"), 20)


def load(faces_dir, name):
    return decode_image((faces_dir / name).read_bytes(), max_pixels=MAX)


@pytest.mark.parametrize("name, at_least", [("couple.jpg", 2), ("selfie-many-people.jpg", 3), ("id03_16.jpg", 1),
                                            ("fr_obama_rgba32.png", 1)])
def test_finds_faces_on_real_photos(mtcnn, faces_dir, name, at_least):
    found = detect_downscaled(mtcnn, load(faces_dir, name))
    assert len(found) >= at_least
    assert found.boxes.shape == (len(found), 5) and found.landmarks.shape == (len(found), 5, 2)
    assert found.boxes.dtype == np.float32 and (found.boxes[:, 4] > 0.9).all()


def test_biggest_face_on_multi_face_photo(mtcnn, faces_dir):
    found = detect_downscaled(mtcnn, load(faces_dir, "selfie-many-people.jpg"))
    areas = (found.boxes[:, 2] - found.boxes[:, 0]) * (found.boxes[:, 3] - found.boxes[:, 1])
    assert biggest_face(found) == int(np.argmax(areas))
    assert areas[biggest_face(found)] > np.sort(areas)[-2]  # strictly the largest on this photo


def test_downscaled_detection_maps_back_to_input_pixels(mtcnn, faces_dir):
    rgb = load(faces_dir, "couple.jpg")  # 2280 px wide
    full = mtcnn(rgb)
    small = detect_downscaled(mtcnn, rgb, max_side=1024)
    i, j = biggest_face(full), biggest_face(small)
    assert np.abs(full.boxes[i, :4] - small.boxes[j, :4]).max() < 0.05 * rgb.shape[1]
    eyes = small.landmarks[j, :2]
    x1, y1, x2, y2 = small.boxes[j, :4]
    assert ((eyes[:, 0] > x1) & (eyes[:, 0] < x2) & (eyes[:, 1] > y1) & (eyes[:, 1] < y2)).all()


def test_no_face_gives_empty_arrays(mtcnn):
    yy, xx = np.mgrid[0:300, 0:400]
    sky = np.stack([xx * 255 // 400, yy * 255 // 300, np.full_like(xx, 200)], axis=2).astype(np.uint8)
    found = mtcnn(sky)
    assert found.boxes.shape == (0, 5) and found.landmarks.shape == (0, 5, 2)
    assert biggest_face(found) is None and biggest_face(Detections.empty()) is None


def test_retinaface_loads_facer_weights_from_the_models_folder(tiny_models, faces_dir):
    """Tiny RANDOM RetinaFace weights: only the loading path and the array contract are tested."""
    detector = build_detector(DetectorName.RETINAFACE, torch.device("cpu"), tiny_models, 20)
    found = detector(load(faces_dir, "id02_12.jpg"))
    assert found.boxes.ndim == 2 and found.boxes.shape[1] == 5 and found.landmarks.shape[1:] == (5, 2)


def test_retinaface_without_weights_names_the_file(tmp_path):
    with pytest.raises(MissingWeightsError, match="mobilenet0.25_Final.pth"):
        build_detector(DetectorName.RETINAFACE, torch.device("cpu"), tmp_path, 20)
