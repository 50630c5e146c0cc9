"""Face detectors. Each returns plain arrays and knows nothing of what the boxes are for.

``Detections.boxes`` is (N, 5) float32 ``x1, y1, x2, y2, score`` in input pixels, clamped to the
image by ``detect_downscaled`` (a detector's own box may reach past the edge of a face the image
cuts: MTCNN gave [-3, -1, 83, 120] on 112x112), and ``Detections.landmarks`` is (N, 5, 2): left
eye, right eye, nose, left and right mouth corner (image left first). No face: (0, 5) and (0, 5, 2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from models.weights import FACER_RETINAFACE, file_sha256, tree_sha256
from shared.errors import MissingWeightsError
from shared.settings import DetectorName


@dataclass(frozen=True)
class Detections:
    boxes: np.ndarray  # (N, 5) float32
    landmarks: np.ndarray  # (N, 5, 2) float32

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32))

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


class Detector(Protocol):
    name: str
    sha256: str
    min_side: int  # the shortest image side the detector accepts (smaller: no face)

    def __call__(self, rgb: np.ndarray) -> Detections: ...


def detect_downscaled(
    detector: Detector, rgb: np.ndarray, max_side: int = 1024, min_face_size: float = 1, pad: float = 0.0
) -> Detections:
    """Run ``detector`` on a copy no larger than ``max_side`` and map the results back to
    input pixels: a 4000 px photo costs what a 1024 px one does, and faces that small in a
    large photo are too small to anonymize well anyway.

    ``pad`` (``VEIL_DETECT_PAD``): a black border of this share of the copy's longer side on every
    side before detection, so that a face the image's edge cuts looks less cut (boxes shifted back).

    ``min_face_size`` (input pixels) holds for every detector: an image whose shorter side is
    below it, or whose downscaled copy is below the detector's own minimum (MTCNN fails on
    those), has no face. Every box is clamped to the image; those whose longer side inside it is
    below ``min_face_size``, or that hold no pixel of it, are dropped."""
    h, w = rgb.shape[:2]
    if min(h, w) < min_face_size:
        return Detections.empty()
    scale = max(h, w) / max_side
    small = rgb
    if scale > 1:
        import cv2

        small = cv2.resize(rgb, (max(1, round(w / scale)), max(1, round(h / scale))), interpolation=cv2.INTER_AREA)
    if min(small.shape[:2]) < getattr(detector, "min_side", 1):
        return Detections.empty()
    border = int(round(pad * max(small.shape[:2])))
    found = detector(np.pad(small, ((border, border), (border, border), (0, 0))) if border else small)
    boxes, landmarks = found.boxes.copy(), found.landmarks.copy()
    boxes[:, :4] -= border
    landmarks -= border
    if scale > 1:
        boxes[:, :4] *= scale
        landmarks *= scale
    return _at_least(Detections(clamp_boxes(boxes, w, h), landmarks), min_face_size)


def clamp_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """``boxes`` (N, 5+) with ``x1, y1, x2, y2`` cut to the image's ``width`` x ``height``: the part
    of each face the image holds (a new array)."""
    out = boxes.copy()
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
    return out


def _at_least(found: Detections, min_face_size: float) -> Detections:
    b = found.boxes
    keep = (
        (np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) >= min_face_size) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    )
    return found if keep.all() else Detections(b[keep], found.landmarks[keep])


def biggest_face(detections: Detections) -> int | None:
    """Index of the face with the largest box area, or None when there is none."""
    if len(detections) == 0:
        return None
    b = detections.boxes
    areas = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    return int(np.argmax(areas))


class MTCNNDetector:
    """MTCNN from facenet-pytorch; its weights ship inside the wheel."""

    name = "mtcnn"

    def __init__(
        self, device: torch.device, min_face_size: int = 20, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    ):
        import facenet_pytorch
        from facenet_pytorch import MTCNN

        self._mtcnn = MTCNN(
            keep_all=True, device=device, min_face_size=min_face_size, thresholds=list(thresholds), post_process=False
        )
        self.min_side = min_face_size  # its image pyramid is empty below this (torch.cat() of nothing)
        data = Path(facenet_pytorch.__file__).parent / "data"
        self.sha256 = tree_sha256([data / f"{n}.pt" for n in ("pnet", "rnet", "onet")])

    def __call__(self, rgb: np.ndarray) -> Detections:
        with torch.inference_mode():
            boxes, probs, points = self._mtcnn.detect(rgb, landmarks=True)
        if boxes is None or len(boxes) == 0:
            return Detections.empty()
        out = np.concatenate([boxes, probs[:, None]], axis=1).astype(np.float32)
        return Detections(out, points.astype(np.float32))


class RetinaFaceDetector:
    """FACER's RetinaFace (mobilenet), from ``facer/mobilenet0.25_Final.pth``."""

    name = "retinaface"

    def __init__(self, device: torch.device, models_dir: Path, threshold: float = 0.8):
        import facer

        path = models_dir / FACER_RETINAFACE
        if not path.is_file():
            raise MissingWeightsError([str(path)], str(models_dir))
        self._device = device
        self.min_side = 16  # its coarsest anchors are 16 px
        self._net = facer.face_detector(
            "retinaface/mobilenet", device=device, model_path=str(path), threshold=threshold
        )
        self.sha256 = file_sha256(path)

    def __call__(self, rgb: np.ndarray) -> Detections:
        image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].to(self._device)
        with torch.inference_mode():
            faces = self._net(image)
        if faces["rects"].numel() == 0:
            return Detections.empty()
        boxes = torch.cat([faces["rects"], faces["scores"][:, None]], dim=1)
        return Detections(boxes.float().cpu().numpy(), faces["points"].float().cpu().numpy())


Thresholds = tuple[float, float, float]

#: ``VEIL_DETECTOR`` -> (device, models_dir, min_face_size, MTCNN's thresholds) -> the detector
DETECTORS: dict[DetectorName, Callable[[torch.device, Path, int, Thresholds], Detector]] = {
    DetectorName.MTCNN: lambda device, models_dir, min_face, thresholds: MTCNNDetector(device, min_face, thresholds),
    DetectorName.RETINAFACE: lambda device, models_dir, min_face, thresholds: RetinaFaceDetector(device, models_dir),
}


def build_detector(
    name: DetectorName,
    device: torch.device,
    models_dir: Path,
    min_face_size: int,
    mtcnn_thresholds: Thresholds = (0.6, 0.7, 0.7),
) -> Detector:
    """``mtcnn_thresholds``: ``VEIL_MTCNN_THRESHOLDS`` (MTCNN only)."""
    return DETECTORS[name](device, models_dir, min_face_size, mtcnn_thresholds)
