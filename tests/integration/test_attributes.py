"""Attribute models' preprocessing on real photos. The FACER and DeepFace weights are the tiny
RANDOM ones (their scores are random); face alignment, which does not depend on them, is real."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from shared.prompts import CELEBA_LABELS
from workers.cpu.attributes import AttributeModels, apparent_age_years
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


def test_age_is_truncated_as_deepface_analyze_does(models, mtcnn, faces_dir, monkeypatch):
    class Age:
        def predict(self, img):
            return np.float64(30.7)

    monkeypatch.setattr(models.demography, "_age", Age())
    rgb = np.array(Image.open(faces_dir / "id03_16.jpg").convert("RGB"))
    found = mtcnn(rgb)
    i = biggest_face(found)
    assert models.demography(rgb, found.boxes[i], found.landmarks[i]).age == 30
    assert apparent_age_years(30.999) == 30 and apparent_age_years(31.0) == 31


def test_model_input_is_divided_by_255_before_letterboxing(models, mtcnn, faces_dir):
    from deepface.modules.preprocessing import resize_image

    rgb = np.array(Image.open(faces_dir / "id03_16.jpg").convert("RGB"))
    found = mtcnn(rgb)
    i = biggest_face(found)
    face = models.demography.aligned_face(rgb, found.boxes[i], found.landmarks[i])
    assert face.dtype == np.uint8 and face.shape[:2] != (224, 224)  # a resize really happens
    got = models.demography.model_input(face)
    assert got.shape == (1, 224, 224, 3) and got.dtype == np.float32
    np.testing.assert_array_equal(got, resize_image(img=face / 255, target_size=(224, 224)))
    uint8_first = resize_image(img=face, target_size=(224, 224))  # the other order: rounded resize
    assert np.abs(got - uint8_first).max() > 0


def test_demography_equals_deepface_analyze_on_the_same_crop(models, mtcnn, faces_dir):
    """DeepFace.analyze itself (detector "skip": the crop is the face) on our aligned crops, with
    the same onnx graphs: age, race and gender must be identical."""
    from deepface import DeepFace

    fractions = []
    for name in ["id03_16.jpg", "fr_obama.jpg", "id01_1.jpg", "id02_12.jpg", "id03_59.jpg"]:
        rgb = np.array(Image.open(faces_dir / name).convert("RGB"))
        found = mtcnn(rgb)
        i = biggest_face(found)
        ours = models.demography(rgb, found.boxes[i], found.landmarks[i])
        face = models.demography.aligned_face(rgb, found.boxes[i], found.landmarks[i])
        fractions.append(float(models.demography._age.predict(models.demography.model_input(face)[0])) % 1)
        [theirs] = DeepFace.analyze(img_path=np.ascontiguousarray(face), actions=("age", "gender", "race"),
                                    detector_backend="skip", enforce_detection=False, silent=True)
        assert (ours.age, ours.ethnicity, ours.gender) == (theirs["age"], theirs["dominant_race"],
                                                           theirs["dominant_gender"]), name
    assert max(fractions) >= 0.5  # some face where rounding would have given one year more
