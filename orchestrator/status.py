"""``veil status`` and ``veil jobs``: counts by outcome, what is queued and in flight, the depth
of each tier's queue, the finish rate over the last few bursts and an ETA from it.

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

from shared.jobs import CANCELLED, FINALIZING, FINISHED, RATE_WINDOW_S, JobInfo, JobStore, Pace
from shared.messages import Status

EXIT_OK, EXIT_FAILED, EXIT_UNKNOWN, EXIT_CANCELLED = 0, 1, 2, 3

#: no key finished for this long: the ETA says what the job is waiting for
QUIET_S = 20

#: () -> {"cpu": n, "gpu": n, "unacked": n}: the tiers' queues (``workers.transport.queue_depth``)
Depth = Callable[[], dict[str, int]]


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def describe(job: JobInfo, pace: Pace | float, depth: dict[str, int] | None = None) -> str:
    """One line: ``ID 'name' running: 12/40 (done=.. no_face=.. failed=.. skipped=.. cancelled=..)
    queued=.. in_flight=.. | cpu=.. gpu=.. unacked=.. | 1.50/s over 60s, ETA 19s``. The rate is
    keys finished per second over a window that spans the last few bursts of finished keys
    (``JobStore.pace``: GPU batches end in bursts, minutes apart); the ETA divides what is left
    by it, and says so when no key has finished for a while and keys are in flight."""
    if not isinstance(pace, Pace):
        pace = Pace(rate=pace, window_s=RATE_WINDOW_S, since_last_s=None)
    counts = job.counts | {"skipped": job.skipped, "cancelled": job.cancelled}
    text = " ".join(f"{k}={v}" for k, v in counts.items())
    state = f"{job.state} (finalizing)" if job.state == CANCELLED and job.finalized is None else job.state
    line = f"{job.job_id} {job.name!r} {state}: {job.finished}/{job.total} ({text})"
    line += f" queued={job.pending} in_flight={job.in_flight}"
    if job.finalize_error:
        line += f" | no summary or manifest: {job.finalize_error}"
    if depth is not None:
        line += " | queues " + " ".join(f"{k}={v}" for k, v in depth.items())
    return line + f" | {pace.rate:.2f}/s over {_duration(pace.window_s)}, ETA {eta(job, pace)}"


def eta(job: JobInfo, pace: Pace) -> str:
    """What is left, at the current pace, in words that never freeze silently."""
    left = max(0, job.total - job.finished)
    if job.state == FINALIZING or (job.state == CANCELLED and job.finalized is None):
        return "done, writing its manifest and summary"
    if job.state in (FINISHED, CANCELLED) or (job.listed and not left):
        return "done"
    if not job.listed:
        return "? (still listing)"
    text = _duration(left / pace.rate) if pace.rate > 0 else "?"
    waited = pace.since_last_s if pace.since_last_s is not None else time.time() - job.created
    if waited >= QUIET_S:
        doing = "waiting for the batch in flight" if job.in_flight else "waiting for keys to be fed"
        text += f" ({doing}: no key finished for {_duration(waited)})"
    return text


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
        # tqdm's own rate and ETA assume steady updates; a job's keys finish in GPU-batch bursts,
        # so the bar shows Veil's pace and ETA instead, redrawn every interval
        bar_format = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"
        with tqdm(total=job.total, initial=job.finished, desc=job_id, bar_format=bar_format, dynamic_ncols=True) as bar:
            while job.state not in (FINISHED, CANCELLED):
                time.sleep(interval)
                job = jobs.get(job_id) or job
                pace = jobs.pace(job_id, job.created)
                bar.total = job.total
                bar.n = job.finished
                bar.set_postfix_str(
                    f"queued={job.pending} in_flight={job.in_flight} {pace.rate:.2f}/s ETA {eta(job, pace)}",
                    refresh=False,
                )
                bar.refresh()
    print(describe(job, jobs.pace(job_id, job.created), depth() if depth else None))
    if failed:
        for uri, reason in sorted(jobs.failed(job_id).items()):
            print(f"{uri}\t{reason}")
    return _exit(job)


def list_jobs(jobs: JobStore) -> int:
    found = jobs.list()
    if not found:
        print("no jobs")
    for job in found:
        print(describe(job, jobs.pace(job.job_id, job.created)))
    return 0
