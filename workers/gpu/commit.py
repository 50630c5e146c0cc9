"""A GPU batch's end, as a batch: every key's sidecar PUT in parallel, the counters of
all of them in one Redis round trip, re-sends only where a key needs one, and when Redis or S3
is down, the messages handed back at once rather than waited on.

Outcomes are those of ``workers.retries.settle``, key by key: a record is published (sidecar,
then counted once) as done / no_face / failed; a transient failure with retries left is re-sent
with ``attempt + 1`` after ``RETRY_POLICY.countdown``, and once they are spent its sidecar says
failed; an output URI that refuses any write (a permanent storage error) is counted failed
without a sidecar; a key whose outcome could not be written (S3 or the counters down) is re-sent
unchanged after a backoff. A re-send that the broker refuses (``BrokerError`` after
``SEND_POLICY``) marks the broker down for the rest of the batch: that key and every later one
that needed a send are ``GIVEN_BACK``: the task does not acknowledge their messages (see
``workers.gpu.tasks``), so Redis has them back and nothing is lost.

Bounds, with S3 and Redis refusing connections: the sidecar PUTs are waited on for at most
``SIDECAR_WAIT_S`` (boto3's own 3 tries are inside), the counters fail at once, one send fails
within ~13 s (``SEND_POLICY``), then no other send is tried.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field

from shared.errors import RETRY_POLICY, BrokerError, PermanentError, StorageError, TransientError
from shared.messages import PromptTask, ResultRecord, Status
from shared.results import count_many, error_record, write_sidecar
from workers import metrics
from workers.celery_app import GPU_TASK
from workers.gpu.batching import io_pool
from workers.retries import send
from workers.runtime import Runtime

log = logging.getLogger(__name__)

#: the outcome of a key whose message goes back to Redis unacknowledged
GIVEN_BACK = "given_back"
#: the longest a batch waits on its sidecar PUTs; one still running after it counts as failed
#: (transient): its key is re-sent, and a late PUT only writes the same commit marker early
SIDECAR_WAIT_S = 20.0


@dataclass
class KeyEnd:
    """One parsed message of a batch and what became of it: a ``record`` to publish, or a
    ``transient`` failure to retry."""

    index: int
    task: PromptTask
    record: ResultRecord | None = None
    transient: TransientError | None = None
    model_sha256: dict[str, str] = field(default_factory=dict)


@dataclass
class _Send:
    end: KeyEnd
    message: dict
    countdown: float
    outcome: str  # "retrying" or "requeued" once sent
    why: str  # the retry metric's reason


def commit(ends: list[KeyEnd], rt: Runtime, queue: str) -> dict[int, tuple[str, str | None]]:
    """Ends every key of ``ends``; returns each one's (outcome, failure reason) by ``index``."""
    outcomes: dict[int, tuple[str, str | None]] = {}
    sends: list[_Send] = []
    # 1. A transient failure: re-sent with the next attempt while retries are left, else failed
    for end in ends:
        if end.transient is not None and end.record is None:
            if end.task.attempt < RETRY_POLICY.max_retries:
                retry = end.task.model_copy(update={"attempt": end.task.attempt + 1})
                delay = RETRY_POLICY.countdown(end.task.attempt)
                sends.append(_Send(end, retry.model_dump(mode="json"), delay, "retrying", end.transient.reason))
                continue
            end.record = error_record(end.task, end.transient, end.model_sha256 or None)
    _log_retries([s for s in sends if s.outcome == "retrying"])
    publishing = [e for e in ends if e.record is not None]
    # 2. Every sidecar at once (the commit markers), on the process's storage pool
    errors = _write_sidecars(publishing, rt)
    counting: list[KeyEnd] = []
    for end, error in zip(publishing, errors, strict=True):
        assert end.record is not None
        if error is None:
            counting.append(end)
        elif isinstance(error, PermanentError):  # the output URI refuses any write: counted failed
            log.error("%s: outcome cannot be recorded (%s); counted failed", end.task.input_uri, error)
            end.record = end.record.model_copy(update={"status": Status.FAILED, "reason": f"{error.reason}: {error}"})
            counting.append(end)
        else:
            log.warning("%s: sidecar not written (%s); message re-sent", end.task.input_uri, error)
            sends.append(_requeue(end))
    # 3. The counters of every published key, in one Redis round trip
    counted = [e for e in counting if e.record is not None and e.record.job_id]
    try:
        count_many(rt.jobs, rt.storage, [e.record for e in counted if e.record is not None])
    except Exception as exc:  # noqa: BLE001 - Redis down: the sidecars exist, the redelivery counts them
        log.warning("counters of %d keys not written (%s); messages re-sent", len(counted), exc)
        sends += [_requeue(e) for e in counted]
        counting = [e for e in counting if e not in counted]
    for end in counting:
        assert end.record is not None
        if end.record.status == Status.FAILED:
            metrics.failure("gpu", end.record.reason)
        outcomes[end.index] = (end.record.status.value, end.record.reason)
    # 4. The re-sends; the first the broker refuses gives it and every later one back
    broker_down = False
    for s in sends:
        reason = s.end.record.reason if s.end.record else _reason(s.end.transient)
        if not broker_down:
            try:
                send(s.message, GPU_TASK, queue, s.countdown)
                metrics.retry(s.why)
                outcomes[s.end.index] = (s.outcome, reason)
                continue
            except BrokerError as exc:
                log.error("broker down (%s): this batch's unsettled messages are given back", exc)
                broker_down = True
        metrics.retry(GIVEN_BACK)
        outcomes[s.end.index] = (GIVEN_BACK, reason)
    return outcomes


def _log_retries(sends: list[_Send]) -> None:
    """One line per reason, with the first failure's text: an outage is seen in the log, once
    per batch rather than once per key."""
    by_reason: dict[str, list[_Send]] = {}
    for s in sends:
        by_reason.setdefault(s.why, []).append(s)
    for why, group in by_reason.items():
        first = group[0]
        log.warning(
            "%d key(s) re-sent for retry (%s), next in %.0f s: %s: %s",
            len(group),
            why,
            first.countdown,
            first.end.task.input_uri,
            first.end.transient,
        )


def _requeue(end: KeyEnd) -> _Send:
    """The message again, unchanged (same attempt), after a backoff: ``settle``'s way."""
    delay = RETRY_POLICY.countdown(min(end.task.attempt, RETRY_POLICY.max_retries))
    return _Send(end, end.task.model_dump(mode="json"), delay, "requeued", "outcome_not_recorded")


def _reason(exc: TransientError | None) -> str | None:
    return f"{exc.reason}: {exc}" if exc is not None else None


def _write_sidecars(ends: list[KeyEnd], rt: Runtime) -> list[BaseException | None]:
    """Each key's sidecar PUT, in parallel; each one's exception or None (written, or an unsafe
    output URI that gets none: ``write_sidecar``)."""
    pool = io_pool()
    futures: list[Future] = [
        pool.submit(write_sidecar, e.record, e.task.output_uri, rt.storage) for e in ends if e.record is not None
    ]
    wait_futures(futures, timeout=SIDECAR_WAIT_S)
    return [
        f.exception(0) if f.done() else StorageError(f"sidecar PUT still running after {SIDECAR_WAIT_S:.0f} s")
        for f in futures
    ]
