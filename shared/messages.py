"""Messages between processes: versioned pydantic models carrying keys and metadata, never
image bytes. ``schema_version`` is checked on receipt; a worker refuses a version it does
not know rather than guessing.

Version 2 renamed three fields to say what they hold: ``models`` -> ``model_sha256``,
``celeba`` (FaceAnalysis) and ``attributes`` (ResultRecord) -> ``celeba_scores``. Version 1
messages and sidecars/manifests are still read, under their old names.

Version 3 added fields with defaults only, so versions 1 and 2 read as before: ``method`` (sd or
a classical method) on ImageTask and ResultRecord (default ``sd``); ``mode`` and ``guard``
(scene mode, the re-identification guard) on ImageTask and PromptTask, ``faces`` (one
``FacePrompt`` per face) on PromptTask, and ``mode`` and ``faces`` (one ``FaceRecord`` per face)
on ResultRecord. A version 1 or 2 message is a portrait message of method ``sd`` with the guard
off.

Also with a default, in version 3: ``sampler_noise`` on ResultRecord (None: records written
before it, and keys the GPU tier did not generate, have none); ``cover`` (which faces a classical
method or scene mode changes, ``VEIL_FACES``) on JobSpec and ImageTask: default ``all``, so a
message or stored spec written before it covers every face (it covered the biggest in portrait
mode then).
"""

from __future__ import annotations

import enum
from typing import Any, Final, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from shared.settings import FaceCover, GuardName, Method, Mode, SamplerNoise

SCHEMA_VERSION: Final = 3


def _renamed(new: str, old: str, **field: Any) -> Any:
    """A field renamed in version 2: written as ``new``, read as ``new`` or (version 1) ``old``."""
    return Field(validation_alias=AliasChoices(new, old), **field)


class Status(str, enum.Enum):
    DONE = "done"
    NO_FACE = "no_face"
    FAILED = "failed"


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: Literal[1, 2, 3] = SCHEMA_VERSION

    @field_validator("schema_version", mode="after")
    @classmethod
    def _now_current(cls, version: int) -> Literal[1, 2, 3]:
        """A known older version is read under its old names and is the current one from then on."""
        return SCHEMA_VERSION


class ImageTask(_Message):
    """Orchestrator -> CPU tier: one input image to analyse."""

    job_id: str
    input_uri: str  # file path or s3://bucket/key
    output_uri: str  # where the anonymized image goes (same relative key)
    seed: int = Field(ge=0, lt=2**64)  # a torch generator's range
    overwrite: bool = False
    attempt: int = Field(0, ge=0)  # transient failures so far
    # how the face is anonymized; a classical method finishes on the CPU tier
    method: Method = Method.SD
    # what the output is, and the re-identification guard (job-wide: copied from the JobSpec)
    mode: Mode = Mode.PORTRAIT
    guard: GuardName = GuardName.OFF
    cover: FaceCover = FaceCover.ALL  # which faces a classical method or scene mode changes


class FaceAnalysis(_Message):
    """What the CPU tier learnt from a face: the inputs of Algorithm 1."""

    face_box: list[float]  # x1, y1, x2, y2, score (input pixels)
    celeba_scores: dict[str, float] = _renamed("celeba_scores", "celeba")  # all 40 FACER CelebA probabilities
    age: int
    ethnicity: str  # DeepFace dominant race
    deepface_gender: str  # kept for the manifest; the prompt uses FACER's Male


class FacePrompt(_Message):
    """Scene mode: one face of an image, its analysis, Algorithm 1's prompts for it, its seed."""

    analysis: FaceAnalysis
    prompt: str
    negative_prompt: str
    seed: int = Field(ge=0, lt=2**64)  # the key's seed and the face's index (``face_seed``)


class PromptTask(_Message):
    """CPU tier -> GPU tier: one portrait to generate, or (scene mode) one image whose every face
    is regenerated in place. In scene mode ``prompt``, ``analysis`` and ``seed`` are the biggest
    face's (``faces[0]``), so a reader of version 2 fields sees the portrait's face."""

    job_id: str
    input_uri: str
    output_uri: str
    seed: int = Field(ge=0, lt=2**64)  # a torch generator's range
    prompt: str
    negative_prompt: str
    analysis: FaceAnalysis
    model_sha256: dict[str, str] = _renamed("model_sha256", "models")  # model name -> sha256 of its files
    overwrite: bool = False
    attempt: int = Field(0, ge=0)  # transient failures so far
    # issue 14: one message per image carrying every face (see workers/gpu/scene.py for why)
    mode: Mode = Mode.PORTRAIT
    guard: GuardName = GuardName.OFF
    faces: list[FacePrompt] = Field(default_factory=list)  # scene mode: every face, biggest first


class GuardResult(_Message):
    """What the re-identification guard measured for one face."""

    embedder: str  # GuardName value
    threshold: float
    tries: int  # generations made (1 = the first passed)
    distances: list[float]  # new face vs original, one per try
    passed: bool  # the kept face is at least ``threshold`` away
    fallback: str | None = None  # "mask" when no try passed: the face was masked instead


class FaceRecord(_Message):
    """One face of a manifest row / sidecar: every face replaced in scene mode; with a classical
    method, each face the method changed (box, and the guard's result with a guard: it reads no
    attributes). A face the guard found still re-identifiable has ``guard.passed`` false and
    ``guard.fallback`` "mask"."""

    box: list[float]  # x1, y1, x2, y2, score (input pixels)
    region: list[int] | None = None  # x, y, side: the square regenerated and blended back (input pixels)
    celeba_scores: dict[str, float] | None = None
    age: int | None = None
    ethnicity: str | None = None
    deepface_gender: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None  # the seed of the kept generation
    guard: GuardResult | None = None


class ResultRecord(_Message):
    """One row of ``manifest.jsonl`` and the sidecar JSON of a key."""

    input: str
    output: str | None
    status: Status
    reason: str | None = None
    face_box: list[float] | None = None
    celeba_scores: dict[str, float] | None = _renamed("celeba_scores", "attributes", default=None)  # 40 CelebA
    age: int | None = None
    ethnicity: str | None = None
    deepface_gender: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    model_sha256: dict[str, str] = _renamed("model_sha256", "models", default_factory=dict)
    job_id: str | None = None
    timings_s: dict[str, float] = Field(default_factory=dict)
    method: Method = Method.SD  # the method that wrote ``output`` (or was to)
    mode: Mode = Mode.PORTRAIT
    faces: list[FaceRecord] | None = None  # every face changed (scene mode, classical methods)
    # the faithful sampler's Brownian noise scheme that made ``output`` (``exact`` or
    # ``tree``; None for the fast sampler, a classical method, or a record from before)
    sampler_noise: SamplerNoise | None = None


# -- jobs: a job's options, stored once; its finalize ------------------------------------------
class JobSpec(_Message):
    """A job's options, stored ONCE per job in Redis (``shared/jobs.py``) and in its
    ``_veil/JOB/summary.json``: the feeder builds each key's ImageTask from it and the key's
    relative path, so nothing job-wide is repeated per key. Per-job options that other
    features add (method, mode, guard) belong here, with defaults, so older specs still read."""

    job_id: str
    name: str
    input: str  # the root every relative key is under: s3://b/in/, a folder, a list file's common folder
    source: str  # what the user named: the prefix, folder, glob or list file
    output: str  # output root: each key's image and sidecar mirror its relative key here
    seed: int = Field(0, ge=0)  # base seed; each key's seed derives from it and the key
    overwrite: bool = False
    created: float = 0.0
    method: Method = Method.SD  # sd, or a classical method finished on the CPU tier
    mode: Mode = Mode.PORTRAIT  # portrait, or scene (every face replaced in place)
    guard: GuardName = GuardName.OFF  # the re-identification guard
    cover: FaceCover = FaceCover.ALL  # which faces a classical method or scene mode changes (VEIL_FACES)


class FinalizeTask(_Message):
    """Finalize dispatcher -> CPU tier (``veil.finalize``): write one ended job's
    ``_veil/JOB/manifest.jsonl`` and ``summary.json``. Only the id travels: the job's record in
    Redis says where its output is; the finalize set (``veil:jobs:finalize``) is what makes it
    durable, this message only wakes a worker."""

    job_id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")
