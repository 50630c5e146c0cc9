"""Issue 25 item 5 in pure logic: which faces are changed (``--faces``, ``FACES_CHANGED``), face
boxes clamped to the image (and mapped back from the detection border), the detector's settings,
and ``veil run``'s summary of faces and the guard's verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.embedded import RunSummary
from shared.keys import spec_for, task_for
from shared.messages import FaceRecord, GuardResult, ImageTask, JobSpec, ResultRecord, Status
from shared.settings import FaceCover, Settings
from workers.cpu.detection import Detections, detect_downscaled
from workers.cpu.stage import FACES_CHANGED


class _Fixed:
    """A detector that reports given boxes and remembers the image it was shown."""

    name, sha256, min_side = "fixed", "", 1

    def __init__(self, *boxes):
        self.boxes = np.array(boxes, np.float32)
        self.seen: tuple[int, ...] = ()

    def __call__(self, rgb):
        self.seen = rgb.shape
        return Detections(self.boxes.copy(), np.zeros((len(self.boxes), 5, 2), np.float32))


def test_a_box_past_the_edge_is_clamped_to_the_image():
    """The issue's box: MTCNN's [-3, -1, 83, 120] on a 112x112 image."""
    found = detect_downscaled(_Fixed([-3, -1, 83, 120, 0.99]), np.zeros((112, 112, 3), np.uint8), 1024, 20)
    assert found.boxes.tolist() == [[0.0, 0.0, 83.0, 112.0, pytest.approx(0.99)]]


def test_a_box_past_the_edge_of_a_downscaled_image_is_clamped_in_input_pixels():
    found = detect_downscaled(_Fixed([900, 400, 1100, 600, 0.9]), np.zeros((1000, 2048, 3), np.uint8), 1024, 20)
    assert found.boxes[0, :4].tolist() == [1800.0, 800.0, 2048.0, 1000.0]  # x2 2200, y2 1200 before


def test_a_box_wholly_outside_the_image_is_dropped():
    found = detect_downscaled(_Fixed([120, 10, 150, 60, 0.9]), np.zeros((112, 112, 3), np.uint8), 1024, 8)
    assert len(found) == 0


def test_the_detection_border_is_added_and_taken_off_again():
    detector = _Fixed([10 + 25, 10 + 25, 60 + 25, 90 + 25, 0.9])  # in the bordered copy
    found = detect_downscaled(detector, np.zeros((80, 100, 3), np.uint8), 1024, 8, pad=0.25)
    assert detector.seen == (80 + 50, 100 + 50, 3)  # 0.25 x the longer side (100) on every side
    assert found.boxes[0, :4].tolist() == [10.0, 10.0, 60.0, 80.0]  # back in input pixels, cut at the bottom


def test_faces_changed_all_is_every_face_biggest_first_and_biggest_is_one():
    boxes = np.array([[0, 0, 10, 10, 1], [0, 0, 30, 30, 1], [0, 0, 20, 20, 1]], np.float32)
    detections = Detections(boxes, np.zeros((3, 5, 2), np.float32))
    assert FACES_CHANGED[FaceCover.ALL](detections, 1) == [1, 2, 0]
    assert FACES_CHANGED[FaceCover.BIGGEST](detections, 1) == [1]
    assert set(FACES_CHANGED) == set(FaceCover)


def test_faces_setting_travels_with_the_job_and_each_key(tmp_path):
    assert Settings.from_env({}).faces is FaceCover.ALL  # every face by default
    settings = Settings.from_env({"VEIL_FACES": "biggest"})
    spec = spec_for("j", "j", str(tmp_path), str(tmp_path), str(tmp_path / "out"), settings)
    assert spec.cover is FaceCover.BIGGEST and task_for(spec, "a.jpg").cover is FaceCover.BIGGEST
    # a spec or message from before the field covers every face
    old = JobSpec(job_id="j", name="j", input="/i", source="/i", output="/o")
    assert old.cover is FaceCover.ALL
    assert ImageTask(job_id="j", input_uri="/i/a", output_uri="/o/a", seed=1).cover is FaceCover.ALL


@pytest.mark.parametrize(
    "value, error",
    [("0.5,0.6", "three comma-separated"), ("0.5,0.6,1.5", "between 0 and 1"), ("a,b,c", "mtcnn_thresholds")],
)
def test_mtcnn_thresholds_are_three_probabilities(value, error):
    with pytest.raises(ValueError, match=error):
        Settings.from_env({"VEIL_MTCNN_THRESHOLDS": value})


def test_detector_settings_read():
    s = Settings.from_env({"VEIL_MTCNN_THRESHOLDS": "0.4, 0.5,0.5", "VEIL_DETECT_PAD": "0.25"})
    assert s.mtcnn_thresholds == (0.4, 0.5, 0.5) and s.detect_pad == 0.25
    assert Settings.from_env({}).mtcnn_thresholds == (0.6, 0.7, 0.7) and Settings.from_env({}).detect_pad == 0.0


def _row(status=Status.DONE, faces=None, face_box=None) -> ResultRecord:
    return ResultRecord(input="/i/a", output="/o/a", status=status, faces=faces, face_box=face_box)


def _face(passed: bool | None = None) -> FaceRecord:
    guard = None
    if passed is not None:
        guard = GuardResult(embedder="dlib", threshold=0.1, tries=1, distances=[0.3 if passed else 0.05],
                            passed=passed, fallback=None if passed else "mask")  # fmt: skip
    return FaceRecord(box=[0, 0, 10, 10, 1], guard=guard)


def test_summary_counts_faces_per_image_and_the_guards_masks():
    summary = RunSummary()
    summary.count(_row(face_box=[0, 0, 10, 10, 1]))  # a portrait: one face, no faces list
    summary.count(_row(faces=[_face(True), _face(False), _face(True)]))
    summary.count(_row(faces=[_face(False), _face(False)]))
    summary.count(_row(status=Status.NO_FACE))
    text = summary.text()
    assert summary.counts == {"done": 3, "no_face": 1}
    assert "faces: 6 changed in 3 images (1 face: 1 image, 2 faces: 1 image, 3 faces: 1 image)" in text
    assert "guard: 5 faces judged, 3 still re-identified and masked (in 2 images;" in text


def test_summary_without_faces_or_guard_says_neither():
    summary = RunSummary()
    summary.count(_row(faces=[_face()]))
    assert "faces: 1 changed in 1 image (1 face: 1 image)" in summary.text() and "guard" not in summary.text()
    assert "faces" not in RunSummary().text()
