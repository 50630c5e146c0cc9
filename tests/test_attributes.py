"""Attribute models' preprocessing on real photos. The FACER and DeepFace weights are the tiny
RANDOM ones (their scores are random); face alignment, which does not depend on them, is real."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from shared.prompts import CELEBA_LABELS
from workers.cpu.attributes import AttributeModels
from workers.cpu.detection import MTCNNDetector, biggest_face


@pytest.fixture(scope="module")
def models(tiny_models):
    return AttributeModels.load(tiny_models, torch.device("cpu"))


@pytest.fixture(scope="module")
def mtcnn():
    return MTCNNDetector(torch.device("cpu"))


def eye_tilt(landmarks: np.ndarray) -> float:
    (lx, ly), (rx, ry) = landmarks[0], landmarks[1]
    return float(np.degrees(np.arctan2(ry - ly, rx - lx)))


def test_deepface_crop_is_levelled_by_the_eyes(models, mtcnn, faces_dir):
    photo = Image.open(faces_dir / "fr_obama.jpg").convert("RGB")
    tilted = np.array(photo.rotate(20, expand=True, fillcolor=(128, 128, 128)))
    found = mtcnn(tilted)
    i = biggest_face(found)
    assert abs(eye_tilt(found.landmarks[i])) > 12  # the input really is tilted
    face_bgr = models.demography.aligned_face(tilted, found.boxes[i], found.landmarks[i])
    again = mtcnn(np.ascontiguousarray(face_bgr[:, :, ::-1]))
    assert len(again) >= 1
    assert abs(eye_tilt(again.landmarks[biggest_face(again)])) < 5


def test_facer_scores_all_forty_labels(models, mtcnn, faces_dir):
    rgb = np.array(Image.open(faces_dir / "id03_16.jpg").convert("RGB"))
    found = mtcnn(rgb)
    i = biggest_face(found)
    scores = models.facer(rgb, found.landmarks[i])
    assert list(scores) == list(CELEBA_LABELS)
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    demography = models.demography(rgb, found.boxes[i], found.landmarks[i])
    assert 0 <= demography.age <= 100
    assert demography.ethnicity in {"asian", "indian", "black", "white", "middle eastern", "latino hispanic"}
    assert demography.gender in {"Man", "Woman"}
