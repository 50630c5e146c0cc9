"""What an ended job leaves in object storage, so its results outlive its Redis record:
``OUTPUT/_veil/JOB/manifest.jsonl`` (one row per sidecar of THIS job under OUTPUT, in listing
order) and then ``OUTPUT/_veil/JOB/summary.json`` (the spec, the counts, failures by reason).

Written by the job's finalize (``workers/finalize.py``: a task of its own, or ``veil finalize
JOB`` inline), never inside the task that counted the job's last key. ``veil retry`` reads them
back when the record has expired.

Streamed at any job size: the OUTPUT listing is walked page by page (a local folder one
directory at a time, each sorted), sidecars are read by a bounded thread pool with a bounded
number of reads in flight, and each row of this job is written as it comes through
``Storage.open_writer`` (temp file + rename locally, a multipart upload on S3). Memory depends on
the thread count and the largest local directory, never on the number of keys. The same
sidecars give the same bytes: a finalize that dies is simply done again from the start.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from shared.errors import RETRY_POLICY, RetryPolicy, StorageError, TransientError, call_with_retries
from shared.jobs import FINALIZING, FINISHED, JobInfo
from shared.messages import JobSpec, ResultRecord, Status
from shared.storage import Storage, is_local, join_uri, relative_key

log = logging.getLogger(__name__)
JOB_FOLDER = "_veil"
MANIFEST, SUMMARY = "manifest.jsonl", "summary.json"

#: (sidecars listed so far, rows of this job written so far)
Progress = Callable[[int, int], None]


def job_file(output: str, job_id: str, name: str) -> str:
    """``OUTPUT/_veil/JOB/name``."""
    return join_uri(output, f"{JOB_FOLDER}/{job_id}/{name}")


def is_sidecar(output: str, uri: str) -> bool:
    """A key's sidecar (``a/b.jpg.json``), not a job file under ``_veil/``."""
    return uri.endswith(".json") and not relative_key(output, uri).startswith(JOB_FOLDER + "/")


# -- listing ----------------------------------------------------------------------------------
def _local_sidecars(root: str) -> Iterator[str]:
    """Regular ``*.json`` files under a folder, depth first, each directory's names sorted. The
    sorted names (sidecars and subfolders) of each directory on the path being walked are held,
    one list per level: memory follows the largest directory and the depth, never the number of
    sidecars. ``_veil/`` at the top and symlinks are skipped."""

    def walk(folder: str, top: bool) -> Iterator[str]:
        try:
            with os.scandir(folder) as it:
                names = sorted(
                    (e.name, e.is_dir(follow_symlinks=False))
                    for e in it
                    if (e.name.endswith(".json") and e.is_file(follow_symlinks=False))
                    or e.is_dir(follow_symlinks=False)
                )
        except FileNotFoundError:
            return
        for name, is_dir in names:
            path = os.path.join(folder, name)
            if is_dir:
                if not (top and name == JOB_FOLDER):
                    yield from walk(path, False)
            else:
                yield path

    if os.path.isdir(root):
        yield from walk(os.path.abspath(root) if not os.path.isabs(root) else root, True)


def _object_sidecars(storage: Storage, output: str, policy: RetryPolicy) -> Iterator[str]:
    """An object store's listing page by page; a page that fails is fetched again per ``policy``
    from after the last key already yielded (S3 ``StartAfter``), so nothing repeats."""
    last, failures = "", 0
    while True:
        try:
            for page in storage.list_pages(output, start_after=last):
                for uri in page:
                    last = uri
                    if is_sidecar(output, uri):
                        yield uri
                failures = 0
            return
        except TransientError:
            if failures >= policy.max_retries:
                raise
            time.sleep(policy.countdown(failures))
            failures += 1


def sidecars(storage: Storage, output: str, policy: RetryPolicy = RETRY_POLICY) -> Iterator[str]:
    """Every sidecar under OUTPUT, in a deterministic order, streamed."""
    return _local_sidecars(output) if is_local(output) else _object_sidecars(storage, output, policy)


# -- reading rows -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    line: bytes  # the manifest row, without its newline
    status: str
    reason: str | None


def _read_row(storage: Storage, uri: str, job_id: str, policy: RetryPolicy) -> Row | None:
    """This job's row from one sidecar; None for another job's, a vanished or a damaged one."""
    try:
        data = call_with_retries(lambda: storage.read(uri), policy, retry_on=(StorageError,))
    except FileNotFoundError:
        return None
    if job_id.encode() not in data:  # cheap: most of another job's sidecars are never parsed
        return None
    try:
        record = ResultRecord.model_validate_json(data)
    except ValueError:
        return None
    if record.job_id != job_id:
        return None
    return Row(record.model_dump_json().encode(), record.status.value, record.reason)


def job_rows(
    storage: Storage, uris: Iterable[str], job_id: str, *, threads: int = 16, policy: RetryPolicy = RETRY_POLICY
) -> Iterator[Row]:
    """This job's rows in the order of ``uris``, read by ``threads`` threads with at most
    ``4 x threads`` reads in flight (so memory stays bounded however long ``uris`` is)."""
    window: deque[Future[Row | None]] = deque()
    pool = ThreadPoolExecutor(threads, thread_name_prefix="veil-finalize")
    try:
        for uri in uris:
            window.append(pool.submit(_read_row, storage, uri, job_id, policy))
            if len(window) >= 4 * threads:
                if (row := window.popleft().result()) is not None:
                    yield row
        while window:
            if (row := window.popleft().result()) is not None:
                yield row
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# -- writing ----------------------------------------------------------------------------------
@dataclass
class Tally:
    """What the manifest's rows say: counts by status and failures by reason code."""

    listed: int = 0
    rows: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)


def write_manifest(
    storage: Storage,
    output: str,
    job_id: str,
    *,
    threads: int = 16,
    policy: RetryPolicy = RETRY_POLICY,
    progress: Progress | None = None,
    every_s: float = 10.0,
) -> Tally:
    """``_veil/JOB/manifest.jsonl``: this job's sidecars under ``output``, one row each, written
    as they are read; it appears whole when done, or not at all."""
    tally = Tally()
    last = time.monotonic()

    def counted(uris: Iterable[str]) -> Iterator[str]:
        for uri in uris:
            tally.listed += 1
            yield uri

    with storage.open_writer(job_file(output, job_id, MANIFEST), "application/x-ndjson", policy=policy) as out:
        for row in job_rows(
            storage, counted(sidecars(storage, output, policy)), job_id, threads=threads, policy=policy
        ):
            out.write(row.line + b"\n")
            tally.rows += 1
            tally.statuses[row.status] += 1
            if row.status == Status.FAILED.value:
                tally.reasons[(row.reason or "").split(":", 1)[0]] += 1
            if progress is not None and time.monotonic() - last >= every_s:
                last = time.monotonic()
                progress(tally.listed, tally.rows)
    return tally


def _by_reason(counts: dict[str, int]) -> dict[str, int]:
    """Most frequent first, ties by name: the same counts always give the same bytes."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def summary_of(job: JobInfo, reasons: dict[str, int], rows: int) -> dict:
    """The summary of a job whose record is in Redis. A job being finalized is written as
    ``finished`` (what it becomes once this file exists)."""
    return {
        "job_id": job.job_id,
        "name": job.name,
        "state": FINISHED if job.state == FINALIZING else job.state,
        "input": job.input,
        "output": job.output,
        "total": job.total,
        "counts": job.counts | {"skipped": job.skipped, "cancelled": job.cancelled},
        "failed_by_reason": _by_reason(reasons),
        "manifest_rows": rows,
        "created": job.created,
        "ended": job.ended,
        "written": time.time(),
        "spec": job.spec.model_dump(mode="json") if job.spec else None,
    }


def summary_from_rows(job_id: str, output: str, tally: Tally, previous: dict | None) -> dict:
    """The summary of a job whose record has expired: counts from its manifest rows (keys that
    never got a sidecar are not in them), the rest from the summary written before, if any."""
    previous = previous or {}
    counts = {s.value: tally.statuses.get(s.value, 0) for s in Status}
    return {
        "job_id": job_id,
        "name": previous.get("name", job_id),
        "state": previous.get("state", FINISHED),
        "input": previous.get("input"),
        "output": output,
        "total": previous.get("total", tally.rows),
        "counts": counts | {"skipped": 0, "cancelled": 0},
        "failed_by_reason": _by_reason(dict(tally.reasons)),
        "manifest_rows": tally.rows,
        "created": previous.get("created"),
        "ended": previous.get("ended"),
        "written": time.time(),
        "spec": previous.get("spec"),
        "from": "sidecars (the job's record had expired)",
    }


def write_summary(storage: Storage, output: str, job_id: str, summary: dict, policy: RetryPolicy = RETRY_POLICY) -> str:
    uri = job_file(output, job_id, SUMMARY)
    data = json.dumps(summary, indent=1).encode()
    call_with_retries(lambda: storage.write(uri, data, "application/json"), policy, retry_on=(StorageError,))
    return uri


def read_summary(storage: Storage, output: str, job_id: str) -> dict | None:
    try:
        return json.loads(storage.read(job_file(output, job_id, SUMMARY)))
    except (FileNotFoundError, ValueError):
        return None


# -- reading back (veil retry) ------------------------------------------------------------------
def read_job_files(output: str, job_id: str, storage: Storage) -> tuple[JobSpec, list[ResultRecord]]:
    """A job's spec and manifest rows from its ``_veil/JOB/`` folder (``FileNotFoundError``)."""
    summary = json.loads(storage.read(job_file(output, job_id, SUMMARY)))
    if not summary.get("spec"):
        raise FileNotFoundError(job_file(output, job_id, SUMMARY) + ": no spec")
    rows = [
        ResultRecord.model_validate_json(line)
        for line in storage.read(job_file(output, job_id, MANIFEST)).decode().splitlines()
        if line.strip()
    ]
    return JobSpec.model_validate(summary["spec"]), rows


def failed_rows(rows: list[ResultRecord], job_id: str, reason: str | None = None) -> list[ResultRecord]:
    return [
        r
        for r in rows
        if r.status == Status.FAILED and r.job_id == job_id and (reason is None or (r.reason or "").startswith(reason))
    ]
