"""Reading a face the way an attacker would: decode, detect (the run's detector setting),
keep the biggest face (or the one at the changed face's box), embed it with every face embedder
asked (and the whole image with every image-level one, face or not), and optionally read its
attributes (FACER's 40 CelebA scores, DeepFace's gender, ethnicity and age)."""

from __future__ import annotations

import base64
import hashlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from orchestrator.evaluation.emotions import EmotionModel
from orchestrator.evaluation.quality import InceptionFeatures
from shared.imageio import decode_image
from shared.settings import EmbedderName, Settings
from workers.cpu.detection import biggest_face, build_detector, detect_downscaled
from workers.embedders import FaceEmbedder, load_embedder

Box = tuple[float, float, float, float] | list[float]
MATCH_IOU = 0.3  # a regenerated face moves a little; another person's face does not overlap this much

log = logging.getLogger(__name__)
THUMB = 160  # px, the longer side of the report's thumbnails


@dataclass
class Face:
    path: Path
    found: bool
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    attributes: dict | None = None  # celeba (40 scores), gender, ethnicity, age
    thumbnail: str = ""  # data: URI (JPEG) for the report
    inception: np.ndarray | None = None  # the image's FID Inception features (2048-d), when asked
    emotion: np.ndarray | None = None  # HSEmotion on the face: 8 emotion probabilities, valence, arousal
    error: str | None = None


class FaceReader:
    def __init__(
        self,
        settings: Settings,
        embedders: list[EmbedderName],
        *,
        attributes: bool,
        device: torch.device,
        inception: InceptionFeatures | None = None,
        emotions: EmotionModel | None = None,
    ) -> None:
        self.settings = settings
        self.emotions = emotions  # Table II's emotions and valence-arousal of every face found
        self.inception = inception  # FID/KID features of every image read with keep_for_fid
        models_dir = Path(settings.models_dir)
        self.detector = build_detector(  # the detector the runs used, with their settings
            settings.detector, device, models_dir, settings.min_face_size, settings.mtcnn_thresholds
        )
        self.embedders: dict[str, FaceEmbedder] = {e.value: load_embedder(e, models_dir, device) for e in embedders}
        self.attributes = None
        if attributes:
            from workers.cpu.attributes import AttributeModels

            self.attributes = AttributeModels.load(models_dir, device)
        self._seen: dict[str, Face] = {}  # sha256 of the bytes -> what they gave (an unchanged output)

    def read(self, path: Path, *, keep_for_fid: bool = False, match_box: Box | None = None) -> Face:
        """The face in ``path``: the biggest one, or with ``match_box`` (x1, y1, x2, y2 in the
        file's own pixels: a scene-mode output keeps its input's geometry) the detected face that
        overlaps it most (IoU >= MATCH_IOU; none: not found). Identical bytes (an output equal to
        its input) are read once per ``match_box``."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            return Face(path, False, error=f"{type(exc).__name__}: {exc}")
        digest = hashlib.sha256(data).hexdigest() + repr(match_box)
        if digest in self._seen and (self._seen[digest].inception is not None or not keep_for_fid):
            seen = self._seen[digest]
            return Face(
                path, seen.found, seen.embeddings, seen.attributes, seen.thumbnail, seen.inception, seen.emotion,
                seen.error,
            )  # fmt: skip
        self._seen[digest] = face = self._read(path, data, keep_for_fid, match_box)
        return face

    def _read(self, path: Path, data: bytes, keep_for_fid: bool, match_box: Box | None = None) -> Face:
        try:
            rgb = decode_image(data, max_pixels=self.settings.max_image_pixels, max_side=2048)
        except Exception as exc:  # noqa: BLE001 - an unreadable file is reported, not fatal
            return Face(path, False, error=f"{type(exc).__name__}: {exc}")
        face = Face(path, False, thumbnail=thumbnail(rgb))
        if keep_for_fid and self.inception is not None:
            face.inception = self.inception.features(rgb)
        whole = [0.0, 0.0, float(rgb.shape[1]), float(rgb.shape[0])]
        face.embeddings = {n: e.embed(rgb, whole) for n, e in self.embedders.items() if e.whole_image}
        s = self.settings
        found = detect_downscaled(self.detector, rgb, s.detect_max_side, s.min_face_size, s.detect_pad)
        if match_box is None:
            index = biggest_face(found)
        else:  # the box is in the file's pixels; ``rgb`` may be reduced (max_side)
            scale = rgb.shape[1] / Image.open(io.BytesIO(data)).size[0]
            index = matching_face(found.boxes, [v * scale for v in match_box])
        if index is None:
            return face
        box, landmarks = found.boxes[index], found.landmarks[index]
        face.found = True
        face.embeddings.update({n: e.embed(rgb, box) for n, e in self.embedders.items() if not e.whole_image})
        if self.emotions is not None:
            face.emotion = self.emotions.read(rgb, box)
        if self.attributes is not None:
            demography = self.attributes.demography(rgb, box, landmarks)
            face.attributes = {
                "celeba": self.attributes.facer(rgb, landmarks),
                "gender": demography.gender,
                "ethnicity": demography.ethnicity,
                "age": demography.age,
            }
        return face


def matching_face(boxes: np.ndarray, box: Box) -> int | None:
    """Index of the detection overlapping ``box`` most, if its IoU reaches MATCH_IOU."""
    if len(boxes) == 0:
        return None
    x1 = np.maximum(boxes[:, 0], box[0])
    y1 = np.maximum(boxes[:, 1], box[1])
    x2 = np.minimum(boxes[:, 2], box[2])
    y2 = np.minimum(boxes[:, 3], box[3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    iou = inter / (areas + (box[2] - box[0]) * (box[3] - box[1]) - inter + 1e-9)
    best = int(np.argmax(iou))
    return best if iou[best] >= MATCH_IOU else None


def thumbnail(rgb: np.ndarray) -> str:
    img = Image.fromarray(rgb)
    img.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
