"""CPU-tier stage: image bytes -> the prompt message of its biggest face.

``veil run`` and the Celery CPU task both call ``CpuModels.load`` once per process and
``analyze`` per image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from shared.errors import NoFaceError
from shared.imageio import decode_scaled
from shared.messages import FaceAnalysis, ImageTask, PromptTask
from shared.prompts import build_prompts
from shared.settings import Settings
from shared.storage import check_output_uri
from workers.cpu.attributes import AttributeModels
from workers.cpu.detection import Detector, biggest_face, build_detector, detect_downscaled


@dataclass
class CpuModels:
    detector: Detector
    attributes: AttributeModels
    settings: Settings
    model_sha256: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, settings: Settings, device: torch.device) -> CpuModels:
        detector = build_detector(settings.detector, device, Path(settings.models_dir), settings.min_face_size)
        attributes = AttributeModels.load(Path(settings.models_dir), device)
        model_sha256 = {f"detector-{detector.name}": detector.sha256, **attributes.sha256}
        return cls(detector, attributes, settings, model_sha256)


def analyze(task: ImageTask, data: bytes, cpu: CpuModels, timings: dict[str, float] | None = None) -> PromptTask:
    """Raises ``UnsafeKeyError`` for an unsafe ``output_uri``, ``ImageDecodeError``/``ImageTooLargeError``
    for bad input, ``NoFaceError`` with no face."""
    timings = {} if timings is None else timings
    check_output_uri(task.output_uri)  # a received message: its output stays under its root
    # 1. Decode the untrusted bytes
    t0 = time.perf_counter()
    # (a large image is reduced while decoding, to twice what the detector sees: the attribute
    # models still get a sharp face; ``scale`` maps the box back to input pixels)
    rgb, scale = decode_scaled(
        data, max_pixels=cpu.settings.max_image_pixels, max_side=2 * cpu.settings.detect_max_side
    )
    # 2. Detect faces and keep the biggest
    t1 = time.perf_counter()
    min_face = cpu.settings.min_face_size / scale
    detections = detect_downscaled(cpu.detector, rgb, cpu.settings.detect_max_side, min_face)
    index = biggest_face(detections)
    t2 = time.perf_counter()
    timings.update(decode=t1 - t0, detect=t2 - t1)
    if index is None:
        raise NoFaceError(f"no face found by {cpu.detector.name}")
    box, landmarks = detections.boxes[index], detections.landmarks[index]
    # 3. Read the face's attributes
    analysis = read_attributes(rgb, box, landmarks, cpu)
    if scale != 1.0:
        box_in_input = [round(float(v) * scale, 2) for v in box[:4]] + analysis.face_box[4:]
        analysis = analysis.model_copy(update={"face_box": box_in_input})
    timings["attributes"] = time.perf_counter() - t2
    # 4. Write the prompts (Algorithm 1)
    prompts = build_prompts(analysis.celeba_scores, age=analysis.age, ethnicity=analysis.ethnicity)
    return PromptTask(
        job_id=task.job_id,
        input_uri=task.input_uri,
        output_uri=task.output_uri,
        seed=task.seed,
        prompt=prompts.positive,
        negative_prompt=prompts.negative,
        analysis=analysis,
        model_sha256=cpu.model_sha256,
        overwrite=task.overwrite,
    )


def read_attributes(rgb: np.ndarray, box: np.ndarray, landmarks: np.ndarray, cpu: CpuModels) -> FaceAnalysis:
    celeba_scores = cpu.attributes.facer(rgb, landmarks)
    demography = cpu.attributes.demography(rgb, box, landmarks)
    return FaceAnalysis(
        face_box=[round(float(v), 2) for v in box[:5]],
        celeba_scores=celeba_scores,
        age=demography.age,
        ethnicity=demography.ethnicity,
        deepface_gender=demography.gender,
    )
