"""``veil status`` and ``veil jobs``: counts by status, rate, ETA and a progress bar."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from shared.jobs import JobInfo, JobStore
from shared.messages import Status


def describe(job: JobInfo, now: float | None = None) -> str:
    now = time.time() if now is None else now
    elapsed = max(1e-9, now - job.created)
    rate = job.finished / elapsed
    left = max(0, job.total - job.finished)
    eta = f"{left / rate:.0f}s" if rate > 0 and left else ("done" if not left and job.total else "?")
    counts = " ".join(f"{k}={v}" for k, v in job.counts.items())
    return f"{job.job_id} {job.name!r}: {job.finished}/{job.total} ({counts}) {rate:.2f}/s ETA {eta}"


def show_status(jobs: JobStore, job_id: str, *, watch: bool, interval: float = 2.0) -> int:
    job = jobs.get(job_id)
    if job is None:
        print(f"veil: no job {job_id!r} (veil jobs lists them)", file=sys.stderr)
        return 2
    if not watch:
        print(describe(job))
        return 1 if job.counts[Status.FAILED.value] else 0
    with tqdm(total=job.total, initial=job.finished, unit="img", desc=job_id, dynamic_ncols=True) as bar:
        while True:
            job = jobs.get(job_id) or job
            bar.total = job.total
            bar.update(job.finished - bar.n)
            bar.set_postfix(job.counts)
            if job.total and job.finished >= job.total:
                break
            time.sleep(interval)
    print(describe(job))
    return 1 if job.counts[Status.FAILED.value] else 0


def list_jobs(jobs: JobStore) -> int:
    found = jobs.list()
    if not found:
        print("no jobs")
    for job in found:
        print(describe(job))
    return 0
