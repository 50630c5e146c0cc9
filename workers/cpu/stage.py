"""CPU-tier stage: image bytes -> the prompt message of its biggest face (portrait mode), or of
every face, biggest first (scene mode); or, for a classical method (blur, pixelate,
mask), the finished image in storage and its record.

Models load once per process: ``CpuModels.load`` in ``veil run`` (the attribute models only for
method ``sd``), ``CpuModels.for_worker`` in a CPU worker's pool process (through
``workers.runtime``). Both then call ``analyze`` (method ``sd``) or ``anonymize_classical`` per
image.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.weights import Component, missing_files
from shared.errors import ImageTooLargeError, NoFaceError, TooManyFacesError
from shared.imageio import content_type, decode_scaled, encode_image
from shared.messages import FaceAnalysis, FacePrompt, FaceRecord, ImageTask, PromptTask, ResultRecord
from shared.prompts import build_prompts
from shared.results import classical_record
from shared.scene import face_seed
from shared.settings import FaceCover, GuardName, Method, Mode, Settings
from shared.storage import Storage, check_output_uri
from workers.cpu.attributes import AttributeModels
from workers.cpu.classical import face_anonymizer
from workers.cpu.detection import Detections, Detector, biggest_face, build_detector, detect_downscaled
from workers.guard import Guard, guard_classical, load_guard


@dataclass
class CpuModels:
    detector: Detector
    attributes: AttributeModels | None  # None until a key of method ``sd`` needs them
    settings: Settings
    model_sha256: dict[str, str] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    onnx_threads: int | None = None  # None: onnxruntime's default (every core)
    guards: dict[GuardName, Guard | None] = field(default_factory=dict)  # loaded on first use

    @classmethod
    def load(cls, settings: Settings, device: torch.device, *, attributes: bool = True) -> CpuModels:
        """``attributes=False``: the detector only (the classical methods need nothing else); the
        attribute models then load with the first key of method ``sd`` (``need_attributes``)."""
        detector = build_detector(
            settings.detector, device, Path(settings.models_dir), settings.min_face_size, settings.mtcnn_thresholds
        )
        cpu = cls(detector, None, settings, {f"detector-{detector.name}": detector.sha256}, device)
        if attributes:
            cpu.need_attributes()
        return cpu

    @classmethod
    def for_worker(cls, settings: Settings, device: torch.device) -> CpuModels:
        """The CPU worker's models: the attribute models too when their weights are there (loaded
        at start, as before); without them the worker still finishes classical keys, and a key
        of method ``sd`` fails with ``MissingWeightsError`` naming the files."""
        torch.set_num_threads(settings.cpu_threads)  # one pool process per core, VEIL_CPU_THREADS each
        have = not missing_files(Path(settings.models_dir), {Component.ATTRIBUTES, Component.DEMOGRAPHY})
        cpu = cls.load(settings, device, attributes=False)
        cpu.onnx_threads = settings.cpu_threads
        if have:
            cpu.need_attributes()
        return cpu

    def need_attributes(self) -> AttributeModels:
        if self.attributes is None:
            self.attributes = AttributeModels.load(Path(self.settings.models_dir), self.device, self.onnx_threads)
            self.model_sha256 = {**self.model_sha256, **self.attributes.sha256}
        return self.attributes

    def guard_for(self, name: GuardName) -> Guard | None:
        """The guard a task asks for (classical methods), its embedder loaded once."""
        if name not in self.guards:
            self.guards[name] = load_guard(self.settings, name, self.device)
        return self.guards[name]

    def guard_sha256(self, name: GuardName) -> dict[str, str]:
        guard = self.guards.get(name)
        return {f"guard-{guard.name.value}": guard.sha256} if guard is not None and guard.sha256 else {}

    @property
    def detector_sha256(self) -> dict[str, str]:
        return {f"detector-{self.detector.name}": self.detector.sha256}


def detect(cpu: CpuModels, rgb: np.ndarray, min_face: float) -> Detections:
    """Step 2 of both paths: the detector on a reduced copy, with the settings' border
    (``VEIL_DETECT_PAD``); boxes in ``rgb``'s pixels, clamped to it."""
    settings = cpu.settings
    return detect_downscaled(cpu.detector, rgb, settings.detect_max_side, min_face, settings.detect_pad)


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
        data,
        max_pixels=cpu.settings.max_image_pixels,
        max_side=2 * cpu.settings.detect_max_side,
        max_decoded=cpu.settings.max_decoded_pixels,
    )
    # 2. Detect faces and keep the biggest
    t1 = time.perf_counter()
    min_face = cpu.settings.min_face_size / scale
    detections = detect(cpu, rgb, min_face)
    index = biggest_face(detections)
    t2 = time.perf_counter()
    timings.update(decode=t1 - t0, detect=t2 - t1)
    if index is None:
        raise NoFaceError(f"no face found by {cpu.detector.name}")
    # 3-4. The attributes and prompts of the face (portrait) or of every face (scene): ``PROMPTS``
    prompt_task = PROMPTS[task.mode](task, rgb, scale, detections, index, cpu)
    timings["attributes"] = time.perf_counter() - t2
    return prompt_task


def _portrait_prompts(
    task: ImageTask, rgb: np.ndarray, scale: float, detections, index: int, cpu: CpuModels
) -> PromptTask:
    """Portrait mode: the biggest face's attributes (3), then its prompts by Algorithm 1 (4)."""
    box, landmarks = detections.boxes[index], detections.landmarks[index]
    analysis = _in_input_pixels(read_attributes(rgb, box, landmarks, cpu), box, scale)
    prompts = build_prompts(analysis.celeba_scores, age=analysis.age, ethnicity=analysis.ethnicity)
    return _prompt_task(task, analysis, prompts.positive, prompts.negative, cpu)


def _scene_prompts(
    task: ImageTask, rgb: np.ndarray, scale: float, detections, index: int, cpu: CpuModels
) -> PromptTask:
    """Scene mode: the attributes and prompts of every face (or the biggest: ``task.cover``,
    ``FACES_CHANGED``), biggest first (``scene_faces``); at most
    VEIL_MAX_FACES (an image with more is failed, never sent half anonymized). The GPU tier
    decodes a scene image in full: judged here, against the same pixel budget."""
    if (full := round(rgb.shape[0] * rgb.shape[1] * scale * scale)) > cpu.settings.max_decoded_pixels:
        raise ImageTooLargeError(f"scene mode decodes {full} pixels, more than VEIL_MAX_DECODED_PIXELS")
    chosen = FACES_CHANGED[task.cover](detections, index)
    if len(chosen) > cpu.settings.max_faces:
        raise TooManyFacesError(f"{len(chosen)} faces, more than VEIL_MAX_FACES={cpu.settings.max_faces}")
    faces = scene_faces(rgb, scale, detections, task.seed, cpu, chosen)
    return _prompt_task(task, faces[0].analysis, faces[0].prompt, faces[0].negative_prompt, cpu, faces)


#: each mode's steps 3-4 of ``analyze``: (task, rgb, scale, detections, biggest, cpu) -> PromptTask
PROMPTS: dict[Mode, Callable[..., PromptTask]] = {
    Mode.PORTRAIT: _portrait_prompts,
    Mode.SCENE: _scene_prompts,
}


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


def scene_faces(
    rgb: np.ndarray, scale: float, detections, image_seed: int, cpu: CpuModels, chosen: list[int] | None = None
) -> list[FacePrompt]:
    """Scene mode: the ``chosen`` faces (default every detected face; the detector already dropped
    those below the minimum size), biggest first, each with its own attributes, Algorithm 1's
    prompts and seed."""
    b = detections.boxes
    faces = []
    for index, i in enumerate(_every_face_biggest_first(detections, 0) if chosen is None else chosen):
        analysis = _in_input_pixels(read_attributes(rgb, b[i], detections.landmarks[i], cpu), b[i], scale)
        prompts = build_prompts(analysis.celeba_scores, age=analysis.age, ethnicity=analysis.ethnicity)
        seed = face_seed(image_seed, index)
        faces.append(
            FacePrompt(analysis=analysis, prompt=prompts.positive, negative_prompt=prompts.negative, seed=seed)
        )
    return faces


def read_attributes(rgb: np.ndarray, box: np.ndarray, landmarks: np.ndarray, cpu: CpuModels) -> FaceAnalysis:
    attributes = cpu.need_attributes()
    celeba_scores = attributes.facer(rgb, landmarks)
    demography = attributes.demography(rgb, box, landmarks)
    return FaceAnalysis(
        face_box=[round(float(v), 2) for v in box[:5]],
        celeba_scores=celeba_scores,
        age=demography.age,
        ethnicity=demography.ethnicity,
        deepface_gender=demography.gender,
    )


# -- classical methods finish here, on the CPU tier ------------------------------------------


def anonymize_classical(
    task: ImageTask, data: bytes, cpu: CpuModels, storage: Storage, timings: dict[str, float] | None = None
) -> ResultRecord:
    """Blur, pixelate or mask every detected face (``task.method``; the biggest only with
    ``task.cover`` biggest) and write the image, the input's size and format, the rest of it
    kept. Returns the key's ``done`` record, every face changed in its ``faces``, for the caller
    to publish (sidecar) or append (manifest). Raises as ``analyze`` does, and the storage's errors
    (transient ones for the caller to retry)."""
    timings = {} if timings is None else timings
    check_output_uri(task.output_uri)  # a received message: its output stays under its root
    # 1. Decode the untrusted bytes at full size: the output keeps the input's size
    t0 = time.perf_counter()
    rgb, _ = decode_scaled(data, max_pixels=cpu.settings.max_image_pixels, max_decoded=cpu.settings.max_decoded_pixels)
    # 2. Detect faces (on a reduced copy, boxes in input pixels, clamped to the image)
    t1 = time.perf_counter()
    detections = detect(cpu, rgb, cpu.settings.min_face_size)
    index = biggest_face(detections)
    t2 = time.perf_counter()
    timings.update(decode=t1 - t0, detect=t2 - t1)
    if index is None:
        raise NoFaceError(f"no face found by {cpu.detector.name}")
    # 3. Change the face boxes only (every face, biggest first; the biggest alone with cover
    #    biggest), each through the re-identification guard when the task asks for one (a face
    #    that still matches is masked; its record says so)
    boxes = _classical_boxes(detections, index, task.cover)
    pixels, faces = _classical_faces(rgb, boxes, task, cpu)
    t3 = time.perf_counter()
    # 4. Write the image; the caller writes its record (the sidecar is the commit marker, after it)
    storage.write(task.output_uri, encode_image(pixels, task.output_uri), content_type(task.output_uri))
    timings.update(anonymize=t3 - t2, store=time.perf_counter() - t3)
    face_box = [round(float(v), 2) for v in detections.boxes[index][:5]]
    model_sha256 = {**cpu.detector_sha256, **(cpu.guard_sha256(task.guard))}
    return classical_record(task, face_box, model_sha256, timings, faces)


def _classical_boxes(detections, index: int, cover: FaceCover) -> list[list[float]]:
    """The boxes a classical method changes: ``FACES_CHANGED`` by ``VEIL_FACES``."""
    return [[float(v) for v in detections.boxes[i][:5]] for i in FACES_CHANGED[cover](detections, index)]


def _every_face_biggest_first(detections, index: int) -> list[int]:
    b = detections.boxes
    areas = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    return [int(i) for i in np.argsort(-areas, kind="stable")]


#: the faces a classical method or scene mode changes, by ``VEIL_FACES`` / ``--faces``:
#: (detections, the biggest's index) -> indices, biggest first
FACES_CHANGED: dict[FaceCover, Callable[[Any, int], list[int]]] = {
    FaceCover.ALL: _every_face_biggest_first,
    FaceCover.BIGGEST: lambda detections, index: [index],
}


def _classical_faces(
    rgb: np.ndarray, boxes: list[list[float]], task: ImageTask, cpu: CpuModels
) -> tuple[np.ndarray, list[FaceRecord] | None]:
    """The method applied to each box, each box recorded; with a guard, each face checked on the
    result and masked when it still re-identifies (``workers.guard.guard_classical``), and its
    result recorded."""
    anonymize = face_anonymizer(task.method, cpu.settings)
    guard = cpu.guard_for(task.guard)
    if guard is None:
        pixels = rgb
        for box in boxes:
            pixels = anonymize(pixels, box)
        return pixels, [FaceRecord(box=[round(v, 2) for v in box]) for box in boxes]
    pixels, results = guard_classical(rgb, boxes, anonymize, guard, face_anonymizer(Method.MASK, cpu.settings))
    faces = [
        FaceRecord(box=[round(v, 2) for v in box], guard=result) for box, result in zip(boxes, results, strict=True)
    ]
    return pixels, faces
