"""How many of the faces in ``selfie-many-people.jpg`` each detector setting finds (issue 25 item 5),
with MTCNN's real weights (facenet-pytorch), through ``detect_downscaled`` as both tiers call it.

A person counts 7 faces in the photo (600x604): the woman at the left edge, the woman in front
of her, the bearded man, the man in the middle, the man with glasses cut by the right edge, the
selfie-taker (the biggest and nearest face, cut by the right edge: only ~55% of it is in the
picture), and the woman cut by the left edge at the bottom. ``PEOPLE`` are their boxes, drawn by
hand. Measured on this VM (faces found of 7 / detections that match no face):

- MTCNN defaults (VEIL_MIN_FACE_SIZE 20, VEIL_MTCNN_THRESHOLDS 0.6,0.7,0.7): 4 (A-D) / 0
- VEIL_MTCNN_THRESHOLDS 0.4,0.5,0.5: 4 / 0
- VEIL_MTCNN_THRESHOLDS 0.2,0.3,0.3: 5 (+G) / 0
- VEIL_MIN_FACE_SIZE 8, VEIL_MTCNN_THRESHOLDS 0.4,0.5,0.5: 5 (+E) / 1 (a mouth)
- VEIL_DETECT_PAD 0.25, MTCNN defaults otherwise: 6 (+E, F) / 0
- VEIL_DETECT_PAD 0.5, VEIL_MIN_FACE_SIZE 8, VEIL_MTCNN_THRESHOLDS 0.4,0.5,0.5: 7 / 0

The selfie-taker (F) is found only with ``VEIL_DETECT_PAD`` (a black border around the
detector's copy): with 0.25 at MTCNN's default thresholds. dlib (not a Veil detector; measured
once for comparison): its HOG detector finds 4 at upsampling 0-2, its CNN (mmod) 5 at upsampling
0 (E, not F) and 4 at 1. Only stable facts are asserted: the defaults find the 4 unhidden
faces, lowering the thresholds never finds fewer, the border finds the selfie-taker, and no box
leaves the image.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.imageio import decode_image
from shared.settings import DetectorName, Settings
from workers.cpu.detection import Detections, build_detector, detect_downscaled

PHOTO = "selfie-many-people.jpg"
#: the faces a person counts, x1, y1, x2, y2 (the part inside the 600x604 image), drawn by hand
PEOPLE = {
    "A woman, left edge": (0, 235, 75, 355),
    "B woman in front": (88, 290, 206, 446),
    "C bearded man": (207, 120, 305, 253),
    "D man in the middle": (349, 116, 486, 293),
    "E glasses, right edge": (525, 65, 600, 220),
    "F selfie-taker, right edge": (475, 260, 600, 590),
    "G woman, bottom left edge": (0, 400, 60, 560),
}
UNHIDDEN = {"A woman, left edge", "B woman in front", "C bearded man", "D man in the middle"}

#: name -> VEIL_* settings of the detector
SETTINGS = {
    "defaults": {},
    "thresholds 0.4": {"VEIL_MTCNN_THRESHOLDS": "0.4,0.5,0.5"},
    "thresholds 0.2": {"VEIL_MTCNN_THRESHOLDS": "0.2,0.3,0.3"},
    "min face 8, thresholds 0.4": {"VEIL_MIN_FACE_SIZE": "8", "VEIL_MTCNN_THRESHOLDS": "0.4,0.5,0.5"},
    "pad 0.25": {"VEIL_DETECT_PAD": "0.25"},
    "pad 0.5, min face 8, thresholds 0.4": {
        "VEIL_DETECT_PAD": "0.5", "VEIL_MIN_FACE_SIZE": "8", "VEIL_MTCNN_THRESHOLDS": "0.4,0.5,0.5",
    },
}  # fmt: skip


def _centre_in(box, other) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return other[0] <= cx <= other[2] and other[1] <= cy <= other[3]


def people_found(found: Detections) -> tuple[set[str], int]:
    """The faces of ``PEOPLE`` found (a detection and a face each hold the other's centre), and
    how many detections match no face."""
    names, strays = set(), 0
    for box in found.boxes:
        match = {n for n, p in PEOPLE.items() if _centre_in(box, p) and _centre_in(p, box)}
        names |= match
        strays += not match
    return names, strays


@pytest.fixture(scope="module")
def photo(faces_dir):
    return decode_image((faces_dir / PHOTO).read_bytes(), max_pixels=120_000_000)


@pytest.fixture(scope="module")
def found(photo) -> dict[str, tuple[set[str], int, Detections]]:
    out = {}
    for name, env in SETTINGS.items():
        s = Settings.from_env(env)
        detector = build_detector(DetectorName.MTCNN, torch.device("cpu"), s.models_dir, s.min_face_size,
                                  s.mtcnn_thresholds)  # fmt: skip
        detections = detect_downscaled(detector, photo, s.detect_max_side, s.min_face_size, s.detect_pad)
        people, strays = people_found(detections)
        print(f"{name}: {len(people)} of {len(PEOPLE)} faces {sorted(p[0] for p in people)}, {strays} not a face")
        out[name] = (people, strays, detections)
    return out


def test_the_defaults_find_the_unhidden_faces(found):
    people, strays, _ = found["defaults"]
    assert UNHIDDEN <= people and strays == 0


def test_lower_thresholds_never_find_fewer(found):
    assert len(found["thresholds 0.4"][0]) >= len(found["defaults"][0])
    assert len(found["thresholds 0.2"][0]) >= len(found["thresholds 0.4"][0])


def test_a_border_finds_the_selfie_taker_cut_by_the_edge(found):
    """The most prominent face, which the issue saw missed: found with VEIL_DETECT_PAD."""
    people, strays, _ = found["pad 0.25"]
    assert "F selfie-taker, right edge" in people and UNHIDDEN <= people and strays == 0
    assert "F selfie-taker, right edge" not in found["defaults"][0]  # what the border is for


def test_every_box_lies_inside_the_image(found, photo):
    h, w = photo.shape[:2]
    for _, _, detections in found.values():
        b = detections.boxes
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    edge = found["pad 0.25"][2].boxes
    assert np.isclose(edge[:, 2], w).sum() >= 2  # E and F reach the right edge, clamped there
