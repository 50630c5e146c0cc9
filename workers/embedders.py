"""Face embedders for re-identification: a face (image + box) -> an L2-normalised vector.

``EMBEDDERS`` maps the ``EmbedderName`` Enum (``shared.settings``) to loaders;
``load_embedder(name, models_dir, device)`` gives an object with ``embed(rgb, box)`` (unit
vector, float32), ``distance(a, b)`` (cosine distance, 1 - a.b: 0 same direction, 2 opposite;
on unit vectors it ranks as the Euclidean distance does), ``name``, ``dim`` and ``sha256``.

- ``dlib``: dlib's ResNet face recognition model (128-d; 5-point alignment), its real weights
  shipped by the ``face_recognition_models`` package: works offline.
- ``facenet-vggface2`` / ``facenet-casia``: facenet-pytorch's ``InceptionResnetV1`` (512-d)
  with the VGGFace2 or CASIA-WebFace weights, from ``VEIL_MODELS_DIR/facenet/``.
- ``clip-face``: OpenAI CLIP ViT-B/32's image embedding (512-d) of the face crop, from
  ``VEIL_MODELS_DIR/clip-vit-base-patch32/`` (transformers format).
- ``clip-image``: the same network on the WHOLE image (the box is ignored: ``whole_image``), the
  paper's Table I "image-level protocol, resembling web-based image retrieval".

An embedder with ``whole_image`` True embeds every readable image, face found or not.

The fetched ones raise ``MissingWeightsError`` naming ``veil models fetch --eval`` when absent.
Models load once per process (the caller keeps the object); nothing loads at import.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from models.weights import CLIP_FOLDER, EVAL_FETCH_HINT, FACENET_CASIA, FACENET_VGGFACE2, file_sha256, tree_sha256
from shared.errors import MissingWeightsError
from shared.settings import EmbedderName


class FaceEmbedder(Protocol):
    name: str
    dim: int
    sha256: str
    whole_image: bool

    def embed(self, rgb: np.ndarray, box: np.ndarray | list[float]) -> np.ndarray: ...

    def distance(self, a: np.ndarray, b: np.ndarray) -> float: ...


def unit(vector: np.ndarray) -> np.ndarray:
    v = np.asarray(vector, np.float32).reshape(-1)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(1.0 - np.dot(unit(a), unit(b)))


def face_crop(rgb: np.ndarray, box: np.ndarray | list[float], margin: float) -> np.ndarray:
    """The box grown by ``margin`` x its size on each side, clipped to the image (at least 1 px)."""
    h, w = rgb.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in list(box)[:4])
    mx, my = margin * (x2 - x1), margin * (y2 - y1)
    left, top = max(0, int(np.floor(x1 - mx))), max(0, int(np.floor(y1 - my)))
    right, bottom = min(w, int(np.ceil(x2 + mx))), min(h, int(np.ceil(y2 + my)))
    right, bottom = max(right, left + 1), max(bottom, top + 1)
    return np.ascontiguousarray(rgb[top:bottom, left:right])


class _Base:
    name: str
    dim: int
    sha256: str
    whole_image = False

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        return cosine_distance(a, b)


class DlibEmbedder(_Base):
    """dlib's ``face_recognition_model_v1`` on the face aligned by its 5-point shape predictor."""

    name = EmbedderName.DLIB.value
    dim = 128

    def __init__(self) -> None:
        import dlib

        folder = dlib_models_folder()
        recognition = folder / "dlib_face_recognition_resnet_model_v1.dat"
        landmarks = folder / "shape_predictor_5_face_landmarks.dat"
        self._shape = dlib.shape_predictor(str(landmarks))
        self._net = dlib.face_recognition_model_v1(str(recognition))
        self._rectangle = dlib.rectangle
        self.sha256 = tree_sha256([recognition, landmarks])

    def embed(self, rgb: np.ndarray, box: np.ndarray | list[float]) -> np.ndarray:
        x1, y1, x2, y2 = (int(round(float(v))) for v in list(box)[:4])
        image = np.ascontiguousarray(rgb, dtype=np.uint8)
        shape = self._shape(image, self._rectangle(x1, y1, x2, y2))
        return unit(np.array(self._net.compute_face_descriptor(image, shape)))


def dlib_models_folder() -> Path:
    """The weights of the ``face_recognition_models`` package, found without importing it (its
    ``__init__`` needs ``pkg_resources``, which new setuptools no longer ship)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsError(
            ["face_recognition_models (pip package)"], "site-packages: pip install face_recognition_models"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class FaceNetEmbedder(_Base):
    """facenet-pytorch's ``InceptionResnetV1``: the box (10% margin each side) resized to 160x160,
    ``(x - 127.5) / 128`` as facenet-pytorch's ``fixed_image_standardization``; 512-d, unit norm."""

    dim = 512
    size = 160
    margin = 0.1

    def __init__(self, name: EmbedderName, path: Path, device: torch.device):
        from facenet_pytorch import InceptionResnetV1

        self.name = name.value
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("logits.")}  # the training classifier
        net = InceptionResnetV1(pretrained=None, classify=False)
        net.load_state_dict(state)
        self._net = net.eval().to(device)
        self._device = device
        self.sha256 = file_sha256(path)

    def embed(self, rgb: np.ndarray, box: np.ndarray | list[float]) -> np.ndarray:
        import cv2

        face = cv2.resize(face_crop(rgb, box, self.margin), (self.size, self.size), interpolation=cv2.INTER_AREA)
        x = (torch.from_numpy(face).permute(2, 0, 1)[None].float() - 127.5) / 128.0
        with torch.inference_mode():
            return unit(self._net(x.to(self._device))[0].float().cpu().numpy())


class ClipEmbedder(_Base):
    """CLIP's image embedding of the face crop (20% margin each side), or with ``whole_image`` of
    the whole image: shorter side resized to 224 (bicubic), centre crop, CLIP's mean/std,
    ``get_image_features``; unit norm."""

    margin = 0.2
    _MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
    _STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)

    def __init__(self, folder: Path, device: torch.device, whole_image: bool = False):
        from transformers import CLIPModel

        self.whole_image = whole_image
        self.name = (EmbedderName.CLIP_IMAGE if whole_image else EmbedderName.CLIP_FACE).value
        self._net = CLIPModel.from_pretrained(str(folder)).eval().to(device)
        self._device = device
        self.size = int(self._net.config.vision_config.image_size)
        self.dim = int(self._net.config.projection_dim)
        self.sha256 = tree_sha256([p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")])

    def embed(self, rgb: np.ndarray, box: np.ndarray | list[float]) -> np.ndarray:
        import cv2

        face = rgb if self.whole_image else face_crop(rgb, box, self.margin)
        h, w = face.shape[:2]
        scale = self.size / min(h, w)
        face = cv2.resize(
            face, (max(self.size, round(w * scale)), max(self.size, round(h * scale))), interpolation=cv2.INTER_CUBIC
        )
        top, left = (face.shape[0] - self.size) // 2, (face.shape[1] - self.size) // 2
        face = face[top : top + self.size, left : left + self.size].astype(np.float32) / 255.0
        x = torch.from_numpy((face - self._MEAN) / self._STD).permute(2, 0, 1)[None]
        with torch.inference_mode():
            features = self._net.get_image_features(pixel_values=x.to(self._device))
        features = getattr(features, "pooler_output", features)  # transformers 5 may wrap the tensor
        return unit(features[0].float().cpu().numpy())


def _fetched(models_dir: Path, relpath: str) -> Path:
    path = models_dir / relpath
    if not path.exists():
        raise MissingWeightsError([str(path)], f"{models_dir}; fetch them with: {EVAL_FETCH_HINT}")
    return path


def _clip(models_dir: Path, device: torch.device, whole_image: bool) -> FaceEmbedder:
    folder = _fetched(models_dir, f"{CLIP_FOLDER}/config.json").parent
    if not any((folder / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
        _fetched(models_dir, f"{CLIP_FOLDER}/pytorch_model.bin")  # raises, naming the file fetch writes
    return ClipEmbedder(folder, device, whole_image)


EMBEDDERS: dict[EmbedderName, Callable[[Path, torch.device], FaceEmbedder]] = {
    EmbedderName.DLIB: lambda models_dir, device: DlibEmbedder(),
    EmbedderName.FACENET_VGGFACE2: lambda models_dir, device: FaceNetEmbedder(
        EmbedderName.FACENET_VGGFACE2, _fetched(models_dir, FACENET_VGGFACE2), device
    ),
    EmbedderName.FACENET_CASIA: lambda models_dir, device: FaceNetEmbedder(
        EmbedderName.FACENET_CASIA, _fetched(models_dir, FACENET_CASIA), device
    ),
    EmbedderName.CLIP_FACE: lambda models_dir, device: _clip(models_dir, device, whole_image=False),
    EmbedderName.CLIP_IMAGE: lambda models_dir, device: _clip(models_dir, device, whole_image=True),
}


def weights_missing(name: EmbedderName | str, models_dir: Path) -> str | None:
    """Why ``name`` cannot load from ``models_dir`` (its weights absent), or None."""
    try:
        {
            EmbedderName.FACENET_VGGFACE2: lambda: _fetched(models_dir, FACENET_VGGFACE2),
            EmbedderName.FACENET_CASIA: lambda: _fetched(models_dir, FACENET_CASIA),
            EmbedderName.CLIP_FACE: lambda: _fetched(models_dir, f"{CLIP_FOLDER}/config.json"),
            EmbedderName.CLIP_IMAGE: lambda: _fetched(models_dir, f"{CLIP_FOLDER}/config.json"),
        }.get(EmbedderName(name), lambda: None)()
    except MissingWeightsError:
        return f"weights absent ({EVAL_FETCH_HINT})"
    return None


def load_embedder(name: EmbedderName | str, models_dir: Path, device: torch.device | str = "cpu") -> FaceEmbedder:
    """The embedder ``name``, loaded now (keep it: loading costs seconds)."""
    return EMBEDDERS[EmbedderName(name)](Path(models_dir), torch.device(device))
