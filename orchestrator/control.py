"""``veil cancel`` and ``veil retry``: stopping one job without touching the others, and redoing
only the keys that failed, with the job's own spec.

Cancel: the job's state becomes ``cancelled`` (workers drop its messages from then on, within
the state cache's 2 s), its pending keys are deleted, its messages still waiting in ``veil.cpu``
and ``veil.gpu`` are removed (at most a window of them), and its manifest and summary are
written at once by ``finalize_job`` (the job joined the finalize set as it was cancelled, so if
that fails the workers' finalize dispatcher writes them later). Batches already running finish;
their keys count done (``veil finalize JOB`` writes the files again with them).

Retry: each key counted failed (optionally only those whose reason starts with ``--reason``)
is uncounted and queued again with overwrite. When the job's record has expired, its spec and
failed keys are read back from ``OUTPUT/_veil/JOB/`` (``--out`` says where) and the job is
re-created holding only those keys.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shared.errors import InputError
from shared.jobs import JobStore
from shared.jobsummary import failed_rows, read_job_files
from shared.settings import Settings
from shared.storage import Storage


@dataclass(frozen=True)
class Cancelled:
    found: bool
    cancelled: bool = False  # False: the job had ended already
    removed_from_queues: int = 0
    summary: str | None = None


def cancel_job(job_id: str, settings: Settings, jobs: JobStore, storage: Storage) -> Cancelled:
    from shared import redisconn
    from workers.transport import drop_job_messages  # the Celery message format; no task module

    if not jobs.cancel(job_id):
        return Cancelled(found=jobs.get(job_id) is not None)
    broker = redisconn.client(settings.broker_url, settings)
    removed = sum(drop_job_messages(broker, q, job_id) for q in (settings.cpu_queue, settings.gpu_queue))
    return Cancelled(True, True, removed, _finalize(job_id, settings, jobs, storage))


def _finalize(job_id: str, settings: Settings, jobs: JobStore, storage: Storage) -> str | None:
    from workers.finalize import finalize_job  # the stage function, run inline

    try:
        return finalize_job(job_id, jobs, storage, settings).summary
    except Exception as exc:  # noqa: BLE001 - the job is in the finalize set: a worker writes them later
        logging.getLogger(__name__).warning("job %s: summary not written now (%s); a CPU worker will", job_id, exc)
        return None


def _relative(root: str, uri: str) -> str:
    if not uri.startswith(root):
        raise InputError(f"{uri!r} is not under the job's input root {root!r}")
    return uri[len(root) :]


def retry_job(
    job_id: str,
    settings: Settings,
    jobs: JobStore,
    storage: Storage,
    *,
    reason: str | None = None,
    out: str | None = None,
    feed: bool = True,
) -> int:
    """Returns how many keys were queued again."""
    spec = jobs.spec(job_id)
    if spec is not None:
        failed = [(u, r) for u, r in jobs.failed(job_id).items() if reason is None or r.startswith(reason)]
        n = jobs.requeue_failed(job_id, [(u, _relative(spec.input, u)) for u, _ in failed])
    else:
        if not out:
            raise InputError(f"job {job_id!r} has no record in Redis (expired?): give --out OUTPUT to read its summary")
        try:
            spec, rows = read_job_files(out, job_id, storage)
        except FileNotFoundError as exc:
            raise InputError(f"job {job_id!r}: no summary under {out!r} ({exc})") from None
        keys = [_relative(spec.input, r.input) for r in failed_rows(rows, job_id, reason)]
        if not keys:
            return 0
        jobs.create(job_id, name=spec.name, input=spec.source, output=spec.output, spec=spec)
        jobs.add_redo(job_id, keys)
        jobs.end_listing(job_id)
        n = len(keys)
    if n and feed:
        from workers.feeder import Feeder

        Feeder(settings, jobs).feed_once()
    return n
