"""GPU-tier Celery task: a batch of PromptTasks -> images and sidecars in object storage.

``celery-batches`` hands the task up to ``flush_every`` (= VEIL_BATCH_SIZE) requests, or what
arrived within ``flush_interval`` (= VEIL_GPU_BATCH_WAIT_S), both set by ``configure_batching``
at start-up. The worker runs with the solo pool, one process per CUDA device, and a prefetch
window of two batches. Requests are acknowledged after the batch returns (acks_late): a worker
killed mid-batch leaves them unacknowledged and Redis redelivers them; keys whose sidecar
exists are skipped, so each key ends with exactly one image and one sidecar.

celery-batches acknowledges every request of a batch once the task returns, raised or not, so
this task never raises: each request is settled on its own (``workers.retries.settle``): an
invalid message fails alone, a transient failure re-sends that key's message, and a key whose
outcome cannot be recorded is re-sent unchanged.

Watching it (issue 11): while the batch runs, ``beacon`` sends the worker's heartbeats from a
side thread (the solo pool's event loop is blocked by the batch) and each request's task events,
so Flower shows the worker Online and every key as a ``veil.generate`` task with its state and
runtime; ``workers.metrics`` counts the batch's size, each key's outcome and stage times.
"""

from __future__ import annotations

import time

from celery.utils.log import get_task_logger
from pydantic import ValidationError

from shared.errors import RETRY_POLICY, TransientError
from shared.messages import PromptTask, Status
from shared.results import already_done, error_record
from shared.settings import Settings
from workers import metrics, runtime
from workers.celery_app import GPU_TASK, app
from workers.gpu.beacon import Beacon, VisibleBatches
from workers.gpu.stage import GpuModels, finish_batch
from workers.retries import send, settle, settle_invalid

log = get_task_logger(__name__)


beacon = Beacon(app)


@app.task(name=GPU_TASK, base=VisibleBatches, acks_late=True, reject_on_worker_lost=True)
def generate_portraits(requests) -> None:
    rt = runtime.current()
    queue = rt.settings.gpu_queue
    metrics.gpu_batch(len(requests))
    # 1. Heartbeats from the beacon's thread while the batch blocks this one; each request started
    with beacon.batch(requests[0].hostname if requests else None, len(requests)):
        started = time.monotonic()
        for request in requests:
            beacon.task_event("task-started", uuid=request.id, name=GPU_TASK)
        # 2. Run the batch: every message settled, or handed back unsettled
        outcomes, unsettled = _run_batch([r.args[0] if r.args else None for r in requests], rt, queue)
        # 3. Each request's end, for Flower and Prometheus
        for request, (outcome, reason) in zip(requests, outcomes, strict=True):
            _report(request.id, outcome, reason, time.monotonic() - started)
    for message in unsettled:
        # Not settled (the broker refused even the re-send): one more try, then it is logged;
        # Redis down means the batch's acknowledgement fails too and the message is restored.
        try:
            send(message, GPU_TASK, queue, RETRY_POLICY.countdown(RETRY_POLICY.max_retries))
        except TransientError as exc:
            log.error("GPU message for %r could not be re-sent: %s", (message or {}).get("output_uri"), exc)


def _report(task_id: str, outcome: str, reason: str | None, runtime_s: float) -> None:
    metrics.image("gpu", outcome)
    if outcome == Status.FAILED.value:
        beacon.task_event("task-failed", uuid=task_id, name=GPU_TASK, exception=reason or "failed", traceback="")
    else:
        beacon.task_event("task-succeeded", uuid=task_id, name=GPU_TASK, result=repr(outcome), runtime=runtime_s)


def _run_batch(messages: list, rt: runtime.Runtime, queue: str) -> tuple[list[tuple[str, str | None]], list]:
    """Settles every message. Returns each message's (outcome, failure reason), in order, and
    the raw messages that could not be settled (outcome ``unsettled``)."""
    unsettled: list = []
    outcomes: list[tuple[str, str | None]] = [("unsettled", "outcome not recorded")] * len(messages)

    def end(i: int, **outcome) -> None:
        message = messages[i]
        record, transient = outcome.get("record"), outcome.get("transient")
        reason = record.reason if record is not None else (f"{transient.reason}: {transient}" if transient else None)
        try:
            outcome.setdefault("task", PromptTask.model_validate(message))
            outcomes[i] = (settle(rt, outcome.pop("task"), GPU_TASK, queue, **outcome), reason)
        except Exception:  # noqa: BLE001 - never raise out of a batch
            log.exception("could not settle a GPU message")
            unsettled.append(message)

    # 1. Parse each message alone; drop keys already finished (redelivery after a crash) and
    #    keys of a cancelled job (a batch already generating finishes: it is not interrupted)
    tasks: list[tuple[int, PromptTask]] = []
    for i, message in enumerate(messages):
        try:
            task = PromptTask.model_validate(message)
        except ValidationError as exc:
            try:
                outcomes[i] = (settle_invalid(rt, message, exc, GPU_TASK, queue), "bad_message")
            except Exception:  # noqa: BLE001
                log.exception("could not settle an invalid GPU message")
                unsettled.append(message)
            continue
        try:
            if rt.jobs.is_cancelled(task.job_id):
                outcomes[i] = ("cancelled", None)
            elif already_done(task, rt.storage, rt.jobs):
                outcomes[i] = ("skipped", None)
            else:
                tasks.append((i, task))
        except TransientError as exc:
            end(i, task=task, transient=exc)
        except Exception as exc:  # noqa: BLE001
            end(i, task=task, record=error_record(task, exc))
    log.info("batch of %d requests, %d to generate", len(messages), len(tasks))
    if not tasks:
        return outcomes, unsettled
    # 2. Generate, store, and build each key's record (a failure there is the batch's keys')
    timings: list[dict[str, float]] = [{} for _ in tasks]
    try:
        finished = finish_batch([t for _, t in tasks], rt.models("gpu", GpuModels.load), rt.storage, timings)
    except Exception as exc:  # noqa: BLE001
        log.exception("batch of %d failed", len(tasks))
        for i, task in tasks:
            if isinstance(exc, TransientError):
                end(i, task=task, transient=exc)
            else:
                end(i, task=task, record=error_record(task, exc))
        return outcomes, unsettled
    for tm in timings:
        metrics.stage_times(tm)
    # 3. Publish each key's sidecar, or send a transient failure again
    for (i, _), key in zip(tasks, finished, strict=True):
        if key.transient is not None:
            end(i, task=key.task, transient=key.transient, model_sha256=key.task.model_sha256)
        else:
            end(i, task=key.task, record=key.record)
    return outcomes, unsettled


def configure_batching(settings: Settings) -> None:
    """Batch size and wait come from the settings, at worker start-up."""
    generate_portraits.flush_every = settings.batch_size
    generate_portraits.flush_interval = settings.gpu_batch_wait_s
