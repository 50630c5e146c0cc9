"""What a finished job leaves in object storage, so its results outlive its Redis record:
``OUTPUT/_veil/JOB/summary.json`` (the spec, the counts, failures by reason) and
``OUTPUT/_veil/JOB/manifest.jsonl`` (every sidecar under OUTPUT folded into one row each).

Written by the worker whose key ended the job (``shared.results.count``), by ``veil cancel``,
and again by ``veil retry`` once its keys end. ``veil retry`` reads them back when the record
has expired.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter

from shared.jobs import JobInfo, JobStore
from shared.messages import JobSpec, ResultRecord, Status
from shared.storage import Storage, join_uri, relative_key

log = logging.getLogger(__name__)
JOB_FOLDER = "_veil"


def job_file(output: str, job_id: str, name: str) -> str:
    """``OUTPUT/_veil/JOB/name``."""
    return join_uri(output, f"{JOB_FOLDER}/{job_id}/{name}")


def is_sidecar(output: str, uri: str) -> bool:
    """A key's sidecar (``a/b.jpg.json``), not a job file under ``_veil/``."""
    return uri.endswith(".json") and not relative_key(output, uri).startswith(JOB_FOLDER + "/")


def summary_of(job: JobInfo, failed: dict[str, str]) -> dict:
    return {
        "job_id": job.job_id,
        "name": job.name,
        "state": job.state,
        "input": job.input,
        "output": job.output,
        "total": job.total,
        "counts": job.counts | {"skipped": job.skipped, "cancelled": job.cancelled},
        "failed_by_reason": dict(Counter(r.split(":", 1)[0] for r in failed.values()).most_common()),
        "created": job.created,
        "ended": job.ended,
        "written": time.time(),
        "spec": job.spec.model_dump(mode="json") if job.spec else None,
    }


def write_job_files(job_id: str, jobs: JobStore, storage: Storage) -> str | None:
    """Writes the summary and the folded manifest; returns the summary's URI (None: no record,
    or a record with no spec).
    The manifest streams: one sidecar read at a time, rows joined once at the end."""
    job = jobs.get(job_id)
    if job is None or job.spec is None:  # no record, or counters only (not made by veil submit)
        return None
    rows: list[bytes] = []
    for page in storage.list_pages(job.output):
        for uri in page:
            if not is_sidecar(job.output, uri):
                continue
            try:
                row = ResultRecord.model_validate_json(storage.read(uri))
            except (FileNotFoundError, ValueError):
                continue  # removed meanwhile, or damaged: that key has no row
            rows.append(row.model_dump_json().encode())
    storage.write(
        job_file(job.output, job_id, "manifest.jsonl"),
        b"\n".join(rows) + (b"\n" if rows else b""),
        "application/x-ndjson",
    )
    summary = summary_of(job, jobs.failed(job_id))
    uri = job_file(job.output, job_id, "summary.json")
    storage.write(uri, json.dumps(summary, indent=1).encode(), "application/json")
    log.info("job %s: %d manifest rows and summary written beside %s", job_id, len(rows), uri)
    return uri


def read_job_files(output: str, job_id: str, storage: Storage) -> tuple[JobSpec, list[ResultRecord]]:
    """A job's spec and manifest rows from its ``_veil/JOB/`` folder (``FileNotFoundError``)."""
    summary = json.loads(storage.read(job_file(output, job_id, "summary.json")))
    if not summary.get("spec"):
        raise FileNotFoundError(job_file(output, job_id, "summary.json") + ": no spec")
    rows = [
        ResultRecord.model_validate_json(line)
        for line in storage.read(job_file(output, job_id, "manifest.jsonl")).decode().splitlines()
        if line.strip()
    ]
    return JobSpec.model_validate(summary["spec"]), rows


def failed_rows(rows: list[ResultRecord], job_id: str, reason: str | None = None) -> list[ResultRecord]:
    return [
        r
        for r in rows
        if r.status == Status.FAILED and r.job_id == job_id and (reason is None or (r.reason or "").startswith(reason))
    ]
