"""What a task does with a transient failure: send the message again, by task name, after
``RETRY_POLICY.countdown`` (backoff with jitter), or, once ``RETRY_POLICY.max_retries`` is spent,
write the key's sidecar as failed with the reason."""

from __future__ import annotations

import logging

from shared.errors import RETRY_POLICY, TransientError
from shared.messages import ImageTask, PromptTask, Status
from shared.results import error_record, publish
from workers.celery_app import app
from workers.runtime import Runtime

log = logging.getLogger(__name__)


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
        app.send_task(
            task_name, args=[retry.model_dump(mode="json")], queue=queue, countdown=RETRY_POLICY.countdown(task.attempt)
        )
        return "retrying"
    publish(error_record(task, exc, model_sha256), task.output_uri, rt.storage, rt.jobs)
    return Status.FAILED.value
