"""Job end as its own work: an ended job's ``_veil/JOB/manifest.jsonl`` and ``summary.json``.

A job that ends (its last key counted, or cancelled) joins the Redis sorted set
``veil:jobs:finalize`` in the same atomic step (``shared/jobs.py``), due now. Three parts:

- ``finalize_job``: the stage function. Streams this job's sidecars into the manifest, then
  writes the summary, then marks the job finalized (``finalizing`` -> ``finished``, out of the
  set). Called by the task and, inline, by ``veil finalize JOB``. Idempotent: the same sidecars
  give the same files (``written`` in summary.json aside), so one that dies is just redone.
- the Celery task ``veil.finalize`` (CPU queue): validates its ``FinalizeTask``, calls
  ``finalize_job``. Acknowledged early: the set, not the message, makes the work durable.
- the dispatcher (``start_thread``, a thread of each CPU worker): every
  ``VEIL_FINALIZE_POLL_S`` it takes the due ids, re-scoring each to now + ``VEIL_FINALIZE_LEASE_S``
  in the same Lua call, and sends one task per job. A lost message, a dead worker or a finalize
  that failed (S3 down past its retries) makes the job due again when the lease runs out; a
  finalize at work renews its lease.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from pydantic import ValidationError

from shared.errors import RETRY_POLICY, OutsideAllowedRootsError, RetryPolicy, StorageRefusedError
from shared.jobs import FINALIZE, JobStore
from shared.jobsummary import (
    Progress,
    read_summary,
    summary_from_rows,
    summary_of,
    write_manifest,
    write_summary,
)
from shared.messages import FinalizeTask
from shared.roots import AllowedRoots
from shared.settings import Settings
from shared.storage import Storage
from workers.celery_app import FINALIZE_TASK, app

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinalizeResult:
    job_id: str
    outcome: str  # "finalized", "written" (files written, job not ended), "no_record", "no_spec",
    # "unwritable" (a permanent refusal: no such bucket, access denied; kept in ``finalize_error``),
    # "outside_allowed_roots" (a job record whose output lies outside VEIL_OUTPUT_ROOTS: nothing written)
    rows: int = 0
    listed: int = 0
    summary: str | None = None
    seconds: float = 0.0


def finalize_job(
    job_id: str,
    jobs: JobStore,
    storage: Storage,
    settings: Settings,
    *,
    out: str | None = None,
    policy: RetryPolicy = RETRY_POLICY,
    progress: Progress | None = None,
) -> FinalizeResult:
    """Writes a job's manifest, then its summary, and marks it finalized. ``out``: the OUTPUT
    of a job whose record has expired (counts then come from its rows). Storage failures past
    ``policy``'s retries raise (``StorageError``): the job stays due and is redone. A permanent
    refusal (``StorageRefusedError``: the OUTPUT bucket is gone, access denied) can never be
    redone into files: the job is finalized with its reason (``finalize_error``, shown by
    ``veil status``) rather than retried forever."""
    started = time.monotonic()
    # 1. The job as Redis has it, and the end this finalize is for
    token = jobs.end_token(job_id)
    job = jobs.get(job_id)
    if job is None and out is None:
        jobs.mark_finalized(job_id, token)  # no record: leaves the set
        return FinalizeResult(job_id, "no_record")
    if job is not None and job.spec is None:  # counters only (not made by veil submit): no output to write
        jobs.mark_finalized(job_id, token)
        return FinalizeResult(job_id, "no_spec")
    output = job.output if job is not None else out
    assert output is not None
    # (issue 23: a job record is Redis's word, like a message: its output must be inside the roots)
    if not AllowedRoots.of((), settings.output_roots).output_allowed(output):
        log.error("job %s: output %r is outside VEIL_OUTPUT_ROOTS: no manifest or summary written", job_id, output)
        if job is not None:
            jobs.mark_finalized(job_id, token, f"{OutsideAllowedRootsError.reason}: {output}")
        return FinalizeResult(job_id, OutsideAllowedRootsError.reason)

    # 2. The manifest, streamed; the lease renewed while it is written
    def renew(listed: int, rows: int) -> None:
        try:
            jobs.renew_finalize(job_id, settings.finalize_lease_s)
        except Exception as exc:  # noqa: BLE001 - Redis down: the lease may lapse, a redo is harmless
            log.warning("job %s: finalize lease not renewed: %s", job_id, exc)
        if progress is not None:
            progress(listed, rows)

    try:
        tally = write_manifest(storage, output, job_id, threads=settings.finalize_threads, policy=policy,
                               progress=renew)  # fmt: skip
        # 3. The summary (counts and failures by reason from Redis; from the rows without a record)
        if job is not None:
            summary = summary_of(job, jobs.failed_reasons(job_id), tally.rows)
        else:
            summary = summary_from_rows(job_id, output, tally, read_summary(storage, output, job_id))
        uri = write_summary(storage, output, job_id, summary, policy)
    except StorageRefusedError as exc:
        log.error("job %s: its manifest and summary cannot be written under %s: %s: %s", job_id, output,
                  exc.reason, exc)  # fmt: skip
        if job is not None:
            jobs.mark_finalized(job_id, token, f"{exc.reason}: {exc}")
        return FinalizeResult(job_id, "unwritable", seconds=time.monotonic() - started)
    # 4. Finalized: finished (or cancelled with a ``finalized`` time), out of the set
    marked = job is not None and jobs.mark_finalized(job_id, token)
    seconds = time.monotonic() - started
    log.info(
        "job %s: %d manifest rows (%d sidecars listed), summary %s, %.1f s",
        job_id,
        tally.rows,
        tally.listed,
        uri,
        seconds,
    )
    return FinalizeResult(job_id, "finalized" if marked else "written", tally.rows, tally.listed, uri, seconds)


# -- the task ----------------------------------------------------------------------------------
@app.task(name=FINALIZE_TASK, acks_late=False, ignore_result=True)
def finalize(message: dict) -> str:
    from workers import runtime

    rt = runtime.current()
    # 1. Validate the message: an invalid one is dropped (the set still holds every ended job)
    try:
        task = FinalizeTask.model_validate(message)
    except ValidationError as exc:
        log.error("invalid %s message dropped: %s", FINALIZE_TASK, exc.errors()[:3])
        return "invalid"
    # 2. Finalize; any failure leaves the job in the set, due again when its lease runs out
    try:
        result = finalize_job(task.job_id, rt.jobs, rt.storage, rt.settings)
    except Exception:  # noqa: BLE001 - S3/Redis down past the retries, or a bug: redone later
        log.exception("job %s: finalize failed; redone after %.0f s", task.job_id, rt.settings.finalize_lease_s)
        return "failed"
    return result.outcome


# -- the dispatcher ----------------------------------------------------------------------------
def dispatch_once(jobs: JobStore, settings: Settings) -> list[str]:
    """Sends one ``veil.finalize`` per due job (each re-scored to now + lease first)."""
    due = jobs.take_due_finalizes(settings.finalize_lease_s)
    sent = []
    for job_id in due:
        try:
            message = FinalizeTask(job_id=job_id).model_dump(mode="json")
        except ValidationError:
            log.error("finalize set: %r is not a job id; dropped", job_id)
            jobs.redis.zrem(FINALIZE, job_id)
            continue
        try:
            app.send_task(FINALIZE_TASK, args=[message], queue=settings.cpu_queue)
            sent.append(job_id)
        except Exception as exc:  # noqa: BLE001 - broker down: due again at once, next pass retries
            log.warning("job %s: finalize not sent (%s)", job_id, exc)
            jobs.finalize_due(job_id)
    return sent


def run(settings: Settings, stop: threading.Event, jobs: JobStore | None = None) -> None:
    jobs = jobs or JobStore.from_url(settings.jobs_url, settings.job_ttl_s)
    while not stop.is_set():
        try:
            dispatch_once(jobs, settings)
        except Exception as exc:  # noqa: BLE001 - Redis restarting: next pass
            log.warning("finalize dispatcher: %s: %s", type(exc).__name__, exc)
        stop.wait(settings.finalize_poll_s)


def start_thread(settings: Settings) -> threading.Event:
    """The dispatcher as a daemon thread of this process; set the returned event to stop it."""
    stop = threading.Event()
    threading.Thread(target=run, args=(settings, stop), name="veil-finalize", daemon=True).start()
    return stop
