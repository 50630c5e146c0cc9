"""CPU-tier stage: image bytes -> the prompt message of its biggest face (portrait mode), or of
every face, biggest first (scene mode, issue 14).

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
from shared.messages import FaceAnalysis, FacePrompt, ImageTask, PromptTask
from shared.prompts import build_prompts
from shared.scene import face_seed
from shared.settings import Mode, Settings
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
    if task.mode is Mode.SCENE:
        # 3-4 (scene mode). Every face's attributes and prompts
        faces = scene_faces(rgb, scale, detections, task.seed, cpu)
        timings["attributes"] = time.perf_counter() - t2
        return _prompt_task(task, faces[0].analysis, faces[0].prompt, faces[0].negative_prompt, cpu, faces)
    box, landmarks = detections.boxes[index], detections.landmarks[index]
    # 3. Read the face's attributes
    analysis = _in_input_pixels(read_attributes(rgb, box, landmarks, cpu), box, scale)
    timings["attributes"] = time.perf_counter() - t2
    # 4. Write the prompts (Algorithm 1)
    prompts = build_prompts(analysis.celeba_scores, age=analysis.age, ethnicity=analysis.ethnicity)
    return _prompt_task(task, analysis, prompts.positive, prompts.negative, cpu)


def _prompt_task(
    task: ImageTask,
    analysis: FaceAnalysis,
    prompt: str,
    negative_prompt: str,
    cpu: CpuModels,
    faces: list[FacePrompt] | None = None,
) -> PromptTask:
    return PromptTask(
        job_id=task.job_id,
        input_uri=task.input_uri,
        output_uri=task.output_uri,
        seed=task.seed,
        prompt=prompt,
        negative_prompt=negative_prompt,
        analysis=analysis,
        model_sha256=cpu.model_sha256,
        overwrite=task.overwrite,
        mode=task.mode,
        guard=task.guard,
        faces=faces or [],
    )


def _in_input_pixels(analysis: FaceAnalysis, box: np.ndarray, scale: float) -> FaceAnalysis:
    """The analysis with its box mapped from decoded to input pixels."""
    if scale == 1.0:
        return analysis
    box_in_input = [round(float(v) * scale, 2) for v in box[:4]] + analysis.face_box[4:]
    return analysis.model_copy(update={"face_box": box_in_input})


def scene_faces(rgb: np.ndarray, scale: float, detections, image_seed: int, cpu: CpuModels) -> list[FacePrompt]:
    """Scene mode: every detected face (the detector already dropped those below the minimum
    size), biggest first, each with its own attributes, Algorithm 1's prompts and seed."""
    b = detections.boxes
    areas = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    faces = []
    for index, i in enumerate(np.argsort(-areas, kind="stable")):
        analysis = _in_input_pixels(read_attributes(rgb, b[i], detections.landmarks[i], cpu), b[i], scale)
        prompts = build_prompts(analysis.celeba_scores, age=analysis.age, ethnicity=analysis.ethnicity)
        seed = face_seed(image_seed, index)
        faces.append(
            FacePrompt(analysis=analysis, prompt=prompts.positive, negative_prompt=prompts.negative, seed=seed)
        )
    return faces


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
