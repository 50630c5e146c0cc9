"""How a task ends a key, whatever fails on the way: publish its sidecar, send the message again
after ``RETRY_POLICY.countdown`` (backoff with jitter) on a transient failure, or, once
``RETRY_POLICY.max_retries`` is spent, write the key's sidecar as failed with the reason.

The outcome itself is written to S3 (sidecar) and Redis (job counter, re-sent message), and
either can be down: ``settle`` then sends the message again unchanged after a backoff, so the
key stays queued rather than lost. Only when the broker refuses that too does it raise
``BrokerError``: the caller must then leave the message unacknowledged (the CPU task rejects it
with requeue, the GPU batch gives it back; Redis restores it after the visibility timeout if
even that fails). ``send`` retries in place for seconds only (``SEND_POLICY``), so a broker
outage never holds a worker for minutes: the message the worker holds is the key's safety.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from shared.errors import RETRY_POLICY, SEND_POLICY, BrokerError, PermanentError, TransientError, call_with_retries
from shared.messages import ImageTask, PromptTask, ResultRecord, Status
from shared.results import count_key_may_end_job, error_record, publish
from workers import metrics
from workers.celery_app import GPU_TASK, app
from workers.runtime import Runtime

log = logging.getLogger(__name__)


class BadMessageError(PermanentError):
    reason = "bad_message"


def retry_or_fail(
    task: ImageTask | PromptTask,
    exc: TransientError,
    model_sha256: dict[str, str],
    rt: Runtime,
    task_name: str,
    queue: str,
) -> str:
    if task.attempt < RETRY_POLICY.max_retries:
        retry = task.model_copy(update={"attempt": task.attempt + 1})
        log.warning("transient failure on %s (%s); retry %d", task.input_uri, exc, retry.attempt)
        send(retry.model_dump(mode="json"), task_name, queue, RETRY_POLICY.countdown(task.attempt))
        metrics.retry(exc.reason)
        return "retrying"
    publish(error_record(task, exc, model_sha256), task.output_uri, rt.storage, rt.jobs)
    metrics.failure(tier_of(task_name), exc.reason)
    return Status.FAILED.value


def tier_of(task_name: str) -> str:
    return "gpu" if task_name == GPU_TASK else "cpu"


def send(message: dict[str, Any], task_name: str, queue: str, countdown: float | None = None) -> None:
    """Sends by name, retried in place per ``SEND_POLICY`` (seconds: a Redis restart passes),
    then ``BrokerError``. Each try is one publish without Celery's own retries, so the whole call
    is bounded by the policy's waits plus a failed connect per try. The caller still holds the
    message it is handling, unacknowledged: on ``BrokerError`` it gives that back (nothing lost)."""

    def once() -> None:
        try:
            app.send_task(task_name, args=[message], queue=queue, countdown=countdown, retry=False)
        except Exception as exc:  # noqa: BLE001 - kombu/redis raise many types; all mean "broker down"
            raise BrokerError(f"could not send {task_name}: {type(exc).__name__}: {exc}") from exc

    call_with_retries(once, SEND_POLICY, on_retry=lambda n, exc: log.warning("broker down, send retry %d: %s", n, exc))


def settle(
    rt: Runtime,
    task: ImageTask | PromptTask,
    task_name: str,
    queue: str,
    *,
    record: ResultRecord | None = None,
    transient: TransientError | None = None,
    model_sha256: dict[str, str] | None = None,
) -> str:
    """Ends one key: ``record`` published, or ``transient`` retried / recorded failed. If that
    cannot be written, the message goes back on the queue unchanged (same attempt) after a
    backoff; ``BrokerError`` if even that fails."""
    try:
        if transient is not None:
            return retry_or_fail(task, transient, model_sha256 or {}, rt, task_name, queue)
        assert record is not None
        publish(record, task.output_uri, rt.storage, rt.jobs)
        if record.status == Status.FAILED:
            metrics.failure(tier_of(task_name), record.reason)
        return record.status.value
    except PermanentError as exc:  # the output URI itself is unusable: nothing can be written
        log.error("%s: outcome cannot be recorded (%s); counted failed", task.input_uri, exc)
        metrics.failure(tier_of(task_name), exc.reason)
        try:
            count_key_may_end_job(rt.jobs, task.job_id, task.input_uri, Status.FAILED.value, f"{exc.reason}: {exc}")
        except TransientError:
            pass
        return Status.FAILED.value
    except Exception as exc:  # noqa: BLE001 - S3 or Redis down while recording: keep the key queued
        delay = RETRY_POLICY.countdown(min(task.attempt, RETRY_POLICY.max_retries))
        log.warning("%s: outcome not recorded (%s); message re-sent in %.0f s", task.input_uri, exc, delay)
        send(task.model_dump(mode="json"), task_name, queue, delay)
        metrics.retry("outcome_not_recorded")
        return "requeued"


def settle_invalid(rt: Runtime, message: Any, exc: ValidationError, task_name: str, queue: str) -> str:
    """A message that does not parse fails alone: a failed sidecar where its output URI is known
    (read from the raw dict), a log line otherwise. The message is not sent again."""
    raw = message if isinstance(message, dict) else {}
    output_uri, input_uri = raw.get("output_uri"), raw.get("input_uri")
    job_id = raw.get("job_id") if isinstance(raw.get("job_id"), str) else None
    reason = f"{BadMessageError.reason}: {exc.error_count()} invalid field(s): " + ", ".join(
        ".".join(str(p) for p in e["loc"]) for e in exc.errors()[:5]
    )
    log.error("invalid %s message for %r: %s", task_name, output_uri, reason)
    if not isinstance(output_uri, str) or not output_uri:
        metrics.failure(tier_of(task_name), BadMessageError.reason)
        return Status.FAILED.value
    record = ResultRecord(
        input=input_uri if isinstance(input_uri, str) else "",
        output=None,
        status=Status.FAILED,
        reason=reason,
        job_id=job_id,
    )
    try:
        publish(record, output_uri, rt.storage, rt.jobs if record.input else None)
    except PermanentError as err:
        log.error("invalid message's sidecar %r refused: %s", output_uri, err)
    except Exception as err:  # noqa: BLE001 - storage down: the message goes back, as it came
        delay = RETRY_POLICY.countdown(RETRY_POLICY.max_retries)
        log.warning("invalid message's sidecar not written (%s); re-sent in %.0f s", err, delay)
        send(raw, task_name, queue, delay)
        return "requeued"
    metrics.failure(tier_of(task_name), BadMessageError.reason)
    return Status.FAILED.value
