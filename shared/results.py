"""Building the manifest row / sidecar (``ResultRecord``) of a key, whatever became of it."""

from __future__ import annotations

import logging

from shared.errors import NoFaceError, UnsafeKeyError, VeilError
from shared.keys import is_finished
from shared.messages import FaceRecord, ImageTask, PromptTask, ResultRecord, Status
from shared.settings import Mode, SamplerNoise
from shared.storage import check_output_uri


def done_record(
    task: PromptTask, timings_s: dict[str, float] | None = None, sampler_noise: SamplerNoise | None = None
) -> ResultRecord:
    """``sampler_noise``: the GPU generator's Brownian noise scheme (``PortraitGenerator.sampler_noise``)."""
    a = task.analysis
    return ResultRecord(
        input=task.input_uri,
        output=task.output_uri,
        status=Status.DONE,
        face_box=a.face_box,
        celeba_scores=a.celeba_scores,
        age=a.age,
        ethnicity=a.ethnicity,
        deepface_gender=a.deepface_gender,
        prompt=task.prompt,
        negative_prompt=task.negative_prompt,
        seed=task.seed,
        model_sha256=task.model_sha256,
        job_id=task.job_id,
        timings_s=timings_s or {},
        mode=task.mode,
        sampler_noise=sampler_noise,
    )


def scene_record(
    task: PromptTask,
    faces: list[dict],
    timings_s: dict[str, float] | None = None,
    sampler_noise: SamplerNoise | None = None,
) -> ResultRecord:
    """Scene mode's ``done`` row: the portrait fields describe the biggest face (``faces[0]``),
    ``faces`` every face replaced (``FaceRecord``)."""
    record = done_record(task, timings_s, sampler_noise)
    return record.model_copy(update={"mode": Mode.SCENE, "faces": [FaceRecord(**f) for f in faces]})


def error_record(
    task: ImageTask | PromptTask,
    exc: BaseException,
    model_sha256: dict[str, str] | None = None,
    timings_s: dict[str, float] | None = None,
) -> ResultRecord:
    """``no_face`` for NoFaceError, ``failed`` with the error's reason code and message otherwise.
    No output is ever written for these: the original is never copied."""
    status = Status.NO_FACE if isinstance(exc, NoFaceError) else Status.FAILED
    code = exc.reason if isinstance(exc, VeilError) else type(exc).__name__
    message = str(exc).splitlines()[0] if str(exc) else ""
    extra: dict = {"method": task.method} if isinstance(task, ImageTask) else {}
    if isinstance(task, PromptTask):
        extra = dict(
            face_box=task.analysis.face_box,
            celeba_scores=task.analysis.celeba_scores,
            age=task.analysis.age,
            ethnicity=task.analysis.ethnicity,
            deepface_gender=task.analysis.deepface_gender,
            prompt=task.prompt,
            negative_prompt=task.negative_prompt,
        )
    return ResultRecord(
        input=task.input_uri,
        output=None,
        status=status,
        reason=f"{code}: {message}" if message else code,
        seed=task.seed,
        model_sha256=model_sha256 or getattr(task, "model_sha256", {}) or {},
        job_id=task.job_id,
        timings_s=timings_s or {},
        mode=task.mode,
        **extra,
    )


def classical_record(
    task: ImageTask,
    face_box: list[float],
    model_sha256: dict[str, str],
    timings_s: dict[str, float] | None = None,
    faces: list[FaceRecord] | None = None,
) -> ResultRecord:
    """The ``done`` row of a key a classical method (blur, pixelate, mask) finished on the CPU
    tier: its face box and method; no attributes or prompts (the method reads none)."""
    return ResultRecord(
        input=task.input_uri,
        output=task.output_uri,
        status=Status.DONE,
        face_box=face_box,
        seed=task.seed,
        model_sha256=model_sha256,
        job_id=task.job_id,
        timings_s={k: round(v, 4) for k, v in (timings_s or {}).items()},
        method=task.method,
        mode=task.mode,
        faces=faces,
    )


def refused_record(input_uri: str, exc: VeilError, job_id: str | None = None) -> ResultRecord:
    """The row of a key refused before any task was built for it (``unsafe_key``): no output."""
    return ResultRecord(
        input=input_uri, output=None, status=Status.FAILED, reason=f"{exc.reason}: {exc}", job_id=job_id
    )


def sidecar_uri(output_uri: str) -> str:
    """The sidecar JSON of a key sits beside its output image: ``out/a/b.jpg.json``."""
    return output_uri + ".json"


def read_sidecar(storage, output_uri: str) -> ResultRecord | None:
    try:
        return ResultRecord.model_validate_json(storage.read(sidecar_uri(output_uri)))
    except FileNotFoundError:
        return None
    except ValueError:
        return None  # a damaged sidecar counts as absent: the key is done again


def count_if_finished_may_end_job(task: ImageTask | PromptTask, storage, jobs=None) -> bool:
    """Whether the key is finished (``shared.keys.is_finished``: its sidecar, its commit marker,
    exists, whatever its outcome), unless the task asks to overwrite. A finished key is COUNTED
    for its job (a Redis write, once per key: ``count_key_may_end_job``), which ENDS the job
    when it is its last key; the caller then skips it."""
    existing = None if task.overwrite else read_sidecar(storage, task.output_uri)
    if existing is None or not is_finished(existing.status):
        return False
    if jobs is not None:
        count_key_may_end_job(jobs, task.job_id, task.input_uri, existing.status.value, existing.reason)
    return True


def publish(record: ResultRecord, output_uri: str, storage, jobs=None) -> None:
    """Writes the sidecar (the key's commit marker, after its image) and counts it once."""
    write_sidecar(record, output_uri, storage)
    if jobs is not None and record.job_id:
        count_key_may_end_job(jobs, record.job_id, record.input, record.status.value, record.reason)


def write_sidecar(record: ResultRecord, output_uri: str, storage) -> bool:
    """The sidecar half of ``publish``. An unsafe ``output_uri`` (a forged message) gets no
    sidecar, which would land beside it: logged, False (the key is still counted)."""
    try:
        check_output_uri(output_uri)
    except UnsafeKeyError as exc:
        logging.getLogger(__name__).warning("no sidecar for %s: %s", record.input, exc)
        return False
    storage.write(sidecar_uri(output_uri), record.model_dump_json(indent=1).encode(), "application/json")
    return True


def count_key_may_end_job(jobs, job_id: str, input_uri: str, status: str, reason: str | None = None) -> None:
    """COUNTS a key for its job once (a Redis write), and ENDS the job when it is its last key:
    the same Lua call (``JobStore.record_ending`` returns 2) moves it to ``finalizing`` and into
    the finalize set; its manifest and summary are a task of their own (``workers/finalize.py``),
    never written here, inside a GPU batch."""
    jobs.record_ending(job_id, input_uri, status, reason)


def count_many(jobs, storage, records: list[ResultRecord]) -> list[int]:
    """``count_key_may_end_job`` for many keys (a GPU batch) in one Redis round trip (``JobStore.record_many``):
    each record's 0 (already counted), 1 (counted) or 2 (counted, and it ended its job: it is
    now ``finalizing``, its files a finalize task's work). ``BrokerError`` when Redis is
    unreachable: then none may be taken as counted. ``storage`` is unused."""
    return jobs.record_many([(r.job_id, r.input, r.status.value, r.reason) for r in records])
