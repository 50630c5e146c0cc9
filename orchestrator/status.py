"""``veil status`` and ``veil jobs``: counts by outcome, what is queued and in flight, the depth
of each tier's queue, the rate over the last minute and an ETA from it.

A job whose keys are all counted shows ``finalizing`` until its ``_veil/JOB/summary.json`` is
written (``workers/finalize.py``), then ``finished``; a cancelled one shows ``cancelled
(finalizing)`` until then. ``--watch`` returns once the job is finished or cancelled.

Exit codes of ``veil status`` (also after ``--watch``): 0 the job has no failed key (finished,
finalizing, or still running); 1 some keys failed (``--failed`` lists them with reasons); 2 no
such job (never submitted, or its record expired: ``VEIL_JOB_TTL_S``); 3 the job was cancelled.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from tqdm import tqdm

from shared.jobs import CANCELLED, FINALIZING, FINISHED, RATE_WINDOW_S, JobInfo, JobStore
from shared.messages import Status
from shared.printable import printable

EXIT_OK, EXIT_FAILED, EXIT_UNKNOWN, EXIT_CANCELLED = 0, 1, 2, 3

#: () -> {"cpu": n, "gpu": n, "unacked": n}: the tiers' queues (``workers.feeder.queue_depth``)
Depth = Callable[[], dict[str, int]]


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def describe(job: JobInfo, rate: float, depth: dict[str, int] | None = None) -> str:
    """One line: ``ID 'name' running: 12/40 (done=.. no_face=.. failed=.. skipped=.. cancelled=..)
    queued=.. in_flight=.. | cpu=.. gpu=.. unacked=.. | 1.50/s over 60s, ETA 19s``. The rate is
    keys finished per second over the last minute; the ETA divides what is left by it."""
    counts = job.counts | {"skipped": job.skipped, "cancelled": job.cancelled}
    text = " ".join(f"{k}={v}" for k, v in counts.items())
    left = max(0, job.total - job.finished)
    if job.state == FINALIZING or (job.state == CANCELLED and job.finalized is None):
        eta = "done, writing its manifest and summary"
    elif job.state in (FINISHED, CANCELLED) or (job.listed and not left):
        eta = "done"
    elif not job.listed:
        eta = "? (still listing)"
    else:
        eta = _duration(left / rate) if rate > 0 else "?"
    state = f"{job.state} (finalizing)" if job.state == CANCELLED and job.finalized is None else job.state
    line = f"{job.job_id} {job.name!r} {state}: {job.finished}/{job.total} ({text})"
    line += f" queued={job.pending} in_flight={job.in_flight}"
    if job.finalize_error:
        line += f" | no summary or manifest: {job.finalize_error}"
    if depth is not None:
        line += " | queues " + " ".join(f"{k}={v}" for k, v in depth.items())
    return line + f" | {rate:.2f}/s over {RATE_WINDOW_S}s, ETA {eta}"


def _exit(job: JobInfo) -> int:
    if job.state == CANCELLED:
        return EXIT_CANCELLED
    return EXIT_FAILED if job.counts[Status.FAILED.value] else EXIT_OK


def show_status(
    jobs: JobStore,
    job_id: str,
    *,
    watch: bool,
    interval: float = 2.0,
    failed: bool = False,
    depth: Depth | None = None,
) -> int:
    job = jobs.get(job_id)
    if job is None:
        print(
            f"veil: no job {job_id!r} (veil jobs lists them; records expire VEIL_JOB_TTL_S after the end)",
            file=sys.stderr,
        )
        return EXIT_UNKNOWN
    if watch:
        with tqdm(total=job.total, initial=job.finished, unit="img", desc=job_id, dynamic_ncols=True) as bar:
            while job.state not in (FINISHED, CANCELLED):
                time.sleep(interval)
                job = jobs.get(job_id) or job
                bar.total = job.total
                bar.update(job.finished - bar.n)
                bar.set_postfix(job.counts | {"queued": job.pending, "rate": f"{jobs.rate(job_id):.2f}/s"})
    print(describe(job, jobs.rate(job_id), depth() if depth else None))
    if failed:
        for uri, reason in sorted(jobs.failed(job_id).items()):
            print(f"{printable(uri)}\t{printable(reason)}")
    return _exit(job)


def list_jobs(jobs: JobStore) -> int:
    found = jobs.list()
    if not found:
        print("no jobs")
    for job in found:
        print(describe(job, jobs.rate(job.job_id)))
    return 0
