"""Emotions and valence-arousal of a face (the paper's Table II): HSEmotion's
``enet_b0_8_va_mtl`` (Savchenko; EfficientNet-B0 trained on AffectNet), through the
``hsemotion-onnx`` package, on the detector's face box.

Why this model: one network gives both what Table II asks (8 emotion classes and valence-arousal),
it is on PyPI and maintained, and its ONNX form runs on onnxruntime, which the CPU tier already
has. The torch ``hsemotion`` package loads whole pickled timm modules (``torch.load`` of a model
object), which break with timm versions other than the one they were pickled with; DeepFace's
emotion model has 7 classes and no valence-arousal; EmoNet (Toisoul et al.) is not packaged and
its weights are non-commercial.

hsemotion-onnx's ``HSEmotionRecognizer.__init__`` downloads its file into ``~/.hsemotion``; the
subclass here opens ``models/weights.EMOTION_MODEL`` instead (``veil models fetch --eval``) and
keeps the package's preprocessing (resize to 224 px, ImageNet normalisation, NCHW) and
prediction. The face crop is the detector's box, as HSEmotion's own examples crop it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.weights import EMOTION_MODEL, EVAL_FETCH_HINT

MODEL_NAME = "enet_b0_8_va_mtl"
#: hsemotion-onnx's class order for its 8-class models
EMOTIONS = ("Anger", "Contempt", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise")


def skipped_because(models_dir: Path) -> str | None:
    path = Path(models_dir) / EMOTION_MODEL
    if not path.is_file():
        return f"emotions skipped: the HSEmotion weights {path} are absent ({EVAL_FETCH_HINT})"
    try:
        import hsemotion_onnx.facial_emotions  # noqa: F401
    except ImportError:
        return "emotions skipped: hsemotion-onnx is not installed (pip install 'veil[eval]')"
    return None


class EmotionModel:
    """HSEmotion loaded once from ``path``: ``read(rgb, box)`` is the face's 8 emotion
    probabilities (softmax, ``EMOTIONS`` order) followed by valence and arousal."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort
        from hsemotion_onnx.facial_emotions import HSEmotionRecognizer

        class _Local(HSEmotionRecognizer):
            """The package's recognizer on a local file (its own __init__ downloads)."""

            def __init__(self, local: Path) -> None:
                self.is_mtl = True
                self.idx_to_class = dict(enumerate(EMOTIONS))
                self.img_size = 224  # the b0 models' input
                self.ort_session = ort.InferenceSession(str(local), providers=["CPUExecutionProvider"])

        self._recognizer = _Local(Path(path))

    @classmethod
    def load(cls, models_dir: Path) -> EmotionModel | None:
        """None when the weights or the package are absent (``skipped_because`` says which)."""
        if skipped_because(models_dir):
            return None
        return cls(Path(models_dir) / EMOTION_MODEL)

    def read(self, rgb: np.ndarray, box) -> np.ndarray | None:
        """The face in ``box`` (x1, y1, x2, y2) of ``rgb``; None when the box holds no pixel."""
        h, w = rgb.shape[:2]
        x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
        x2, y2 = min(w, int(box[2])), min(h, int(box[3]))
        if x2 <= x1 or y2 <= y1:
            return None
        _, scores = self._recognizer.predict_emotions(np.ascontiguousarray(rgb[y1:y2, x1:x2]), logits=False)
        return np.asarray(scores, np.float64)
