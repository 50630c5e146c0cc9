"""Face attributes: FACER's 40 CelebA probabilities and DeepFace's age, race and gender.

Both models are built once per process (``AttributeModels.load``) and then called per face.
DeepFace runs on its onnxruntime backend (no TensorFlow); the FACER network is built
without FACER's unconditional ``.cuda()`` (``models.farl``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.weights import DEEPFACE_HOME, DEEPFACE_WEIGHTS, FACER_ATTR, Component, file_sha256, missing_files
from shared.errors import MissingWeightsError
from shared.prompts import CELEBA_LABELS
from shared.quiet import quiet_third_party

#: CLIP normalisation used by FaRL (facer/face_attribute/farl.py)
_FARL_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
_FARL_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


@dataclass(frozen=True)
class Demography:
    age: int
    ethnicity: str
    gender: str


class FacerAttributes:
    """FACER ``farl/celeba/224``: aligns the face from its 5 landmarks, returns 40 probabilities."""

    def __init__(self, path: Path, device: torch.device):
        from facer.face_attribute.farl import pretrain_settings

        from models.farl import load_facer_attribute_model

        self._setting = pretrain_settings["celeba/224"]
        if list(self._setting["classes"]) != list(CELEBA_LABELS):
            raise RuntimeError("FACER's celeba/224 label order differs from CelebA's")
        self._net = load_facer_attribute_model(path, device)
        self._device = device
        self.sha256 = file_sha256(path)

    def __call__(self, rgb: np.ndarray, landmarks: np.ndarray) -> dict[str, float]:
        probs = self.probabilities(self.aligned(rgb, landmarks))[0]
        return {label: float(p) for label, p in zip(CELEBA_LABELS, probs, strict=True)}

    def aligned(self, rgb: np.ndarray, landmarks: np.ndarray) -> torch.Tensor:
        """The face aligned from its 5 landmarks as FaRL sees it: (1, 3, 224, 224), CLIP-normalised."""
        image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div(255.0)
        image = image.to(self._device)
        points = torch.from_numpy(np.asarray(landmarks, np.float32))[None].to(self._device)
        h, w = image.shape[2:]
        matrix = self._setting["get_matrix_fn"](points)
        grid = self._setting["get_grid_fn"](matrix=matrix, orig_shape=(h, w))
        aligned = F.grid_sample(image, grid, mode="bilinear", align_corners=False)
        return (aligned - _FARL_MEAN.to(self._device)) / _FARL_STD.to(self._device)

    def probabilities(self, aligned: torch.Tensor) -> np.ndarray:
        """(n, 40) attribute probabilities of a batch of aligned faces."""
        with torch.inference_mode():
            return torch.sigmoid(self._net(aligned)).float().cpu().numpy()


class DeepFaceDemography:
    """DeepFace's Age, Race and Gender models on onnxruntime, fed exactly as
    ``DeepFace.analyze(align=True)`` feeds them: DeepFace's own ``extract_face`` cuts the face
    and rotates it level by the eyes, the BGR crop is divided by 255 and then letterboxed to
    224x224; the age is truncated to whole years as ``DeepFace.analyze`` does. Only the detector
    differs: the face box and eyes come from our detector."""

    def __init__(self, models_dir: Path, threads: int | None = None):
        """``threads``: onnxruntime's intra-op threads per graph (default: deepface's own
        sessions, which take every core; a process pinned to fewer cores sets it)."""
        # deepface reads these when it builds a model; set them before it is imported.
        os.environ["DEEPFACE_HOME"] = str(models_dir / DEEPFACE_HOME)
        os.environ["DEEPFACE_BACKEND_ENGINE"] = "onnx"
        from deepface.models.demography.DemographyUtils import GENDER_LABELS, RACE_LABELS
        from deepface.models.demography.onnx import Age, Gender, Race
        from deepface.models.Detector import FacialAreaRegion
        from deepface.modules import detection, preprocessing

        self._resize = preprocessing.resize_image
        self._extract_face = detection.extract_face
        self._region = FacialAreaRegion
        self._age = _client(Age.ApparentAgeClient, "Age", Age, "age_model_weights.onnx", threads)
        self._race = _client(Race.RaceClient, "Race", Race, "race_model_single_batch.onnx", threads)
        self._gender = _client(Gender.GenderClient, "Gender", Gender, "gender_model_weights.onnx", threads)
        self._race_labels = list(RACE_LABELS)
        self._gender_labels = list(GENDER_LABELS)
        weights = models_dir / DEEPFACE_WEIGHTS
        self.sha256 = {
            "deepface-age": file_sha256(weights / "age_model_weights.onnx"),
            "deepface-race": file_sha256(weights / "race_model_single_batch.onnx"),
            "deepface-gender": file_sha256(weights / "gender_model_weights.onnx"),
        }

    def __call__(self, rgb: np.ndarray, box: np.ndarray, landmarks: np.ndarray) -> Demography:
        # 1. The face as DeepFace cuts it, then DeepFace's model input
        batch = self.model_input(self.aligned_face(rgb, box, landmarks))
        # 2. The three models
        age = np.asarray(self._age.predict(batch[0])).reshape(-1)[0]
        race = np.asarray(self._race.predict(batch[0])).reshape(-1)
        gender = np.asarray(self._gender.predict(batch[0])).reshape(-1)
        # 3. Labels as DeepFace.analyze gives them
        return Demography(
            age=apparent_age_years(age),
            ethnicity=self._race_labels[int(np.argmax(race))],
            gender=self._gender_labels[int(np.argmax(gender))],
        )

    @property
    def clients(self) -> dict[str, Any]:
        """deepface's three clients by name; ``predict`` takes a (n, 224, 224, 3) batch."""
        return {"age": self._age, "gender": self._gender, "race": self._race}

    def model_input(self, face_bgr: np.ndarray) -> np.ndarray:
        """The (1, 224, 224, 3) float32 batch ``DeepFace.analyze`` builds from a face crop, in
        its order: ``extract_faces`` divides the crop by 255 (``normalize_face``, when its max
        is above 1) and only then does ``resize_image`` letterbox the float crop (its own /255
        then does nothing). Resizing the uint8 crop first would round the resized pixels."""
        face = face_bgr / 255 if face_bgr.max() > 1 else face_bgr
        return self._resize(img=face, target_size=(224, 224))

    def aligned_face(self, rgb: np.ndarray, box: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """The BGR face crop, levelled by the eyes, as DeepFace cuts it."""
        x1, y1, x2, y2 = (int(round(float(v))) for v in box[:4])
        # DeepFace's eyes are the person's: its left eye is on the image's right.
        right_eye, left_eye = (tuple(int(round(float(c))) for c in landmarks[i]) for i in (0, 1))
        region = self._region(
            x=x1, y=y1, w=x2 - x1, h=y2 - y1, left_eye=left_eye, right_eye=right_eye, confidence=float(box[4])
        )
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        face = self._extract_face(
            facial_area=region,
            img=bgr,
            align=True,
            expand_percentage=0,
            width_border=0,
            height_border=0,
            detector_backend="mtcnn",
        ).img
        return face if face.size else crop_box(rgb, box)[:, :, ::-1]


def _client(cls: Any, model_name: str, module: Any, file_name: str, threads: int | None) -> Any:
    """A deepface demography client. With ``threads`` its graph runs in a session with that many
    intra-op threads (deepface's ``build_session`` takes no options), built as deepface builds it
    (same file, same providers); without, deepface's own."""
    if threads is None:
        return cls()
    import onnxruntime as ort
    from deepface.commons import onnx_utils, weight_utils

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    path = weight_utils.download_weights_if_necessary(file_name=file_name, source_url=module.WEIGHTS_URL)
    client = cls.__new__(cls)
    client.model_name = model_name
    client.model = ort.InferenceSession(
        path, sess_options=options, providers=onnx_utils.resolve_providers(ort.get_available_providers())
    )
    return client


def apparent_age_years(age: float) -> int:
    """DeepFace.analyze's ``int(apparent_age)``: truncated, not rounded (30.7 -> 30)."""
    return int(age)


def crop_box(rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    x1, y1, x2, y2 = (int(round(float(v))) for v in box[:4])
    x1, y1 = max(0, min(x1, w - 1)), max(0, min(y1, h - 1))
    x2, y2 = max(x1 + 1, min(x2, w)), max(y1 + 1, min(y2, h))
    return rgb[y1:y2, x1:x2]


@dataclass
class AttributeModels:
    facer: FacerAttributes
    demography: DeepFaceDemography

    @classmethod
    def load(cls, models_dir: Path, device: torch.device, onnx_threads: int | None = None) -> AttributeModels:
        missing = missing_files(models_dir, {Component.ATTRIBUTES, Component.DEMOGRAPHY})
        if missing:
            raise MissingWeightsError([str(p) for p in missing], str(models_dir))
        quiet_third_party()
        return cls(FacerAttributes(models_dir / FACER_ATTR, device), DeepFaceDemography(models_dir, onnx_threads))

    @property
    def sha256(self) -> dict[str, Any]:
        return {"facer-farl-celeba-224": self.facer.sha256, **self.demography.sha256}
