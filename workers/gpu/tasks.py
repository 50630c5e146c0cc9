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
"""

from __future__ import annotations

from celery.utils.log import get_task_logger
from celery_batches import Batches
from pydantic import ValidationError

from shared.errors import RETRY_POLICY, TransientError
from shared.messages import PromptTask
from shared.results import already_done, error_record
from shared.settings import Settings
from workers import runtime
from workers.celery_app import GPU_TASK, app
from workers.gpu.stage import GpuModels, finish_batch
from workers.retries import send, settle, settle_invalid

log = get_task_logger(__name__)


@app.task(name=GPU_TASK, base=Batches, acks_late=True, reject_on_worker_lost=True)
def generate_portraits(requests) -> None:
    rt = runtime.current()
    queue = rt.settings.gpu_queue
    for message in _run_batch([r.args[0] if r.args else None for r in requests], rt, queue):
        # Not settled (the broker refused even the re-send): one more try, then it is logged;
        # Redis down means the batch's acknowledgement fails too and the message is restored.
        try:
            send(message, GPU_TASK, queue, RETRY_POLICY.countdown(RETRY_POLICY.max_retries))
        except TransientError as exc:
            log.error("GPU message for %r could not be re-sent: %s", (message or {}).get("output_uri"), exc)


def _run_batch(messages: list, rt: runtime.Runtime, queue: str) -> list:
    """Settles every message; returns the raw messages that could not be settled."""
    unsettled: list = []

    def end(message, **outcome) -> None:
        try:
            outcome.setdefault("task", PromptTask.model_validate(message))
            settle(rt, outcome.pop("task"), GPU_TASK, queue, **outcome)
        except Exception:  # noqa: BLE001 - never raise out of a batch
            log.exception("could not settle a GPU message")
            unsettled.append(message)

    # 1. Parse each message alone; drop keys already finished (redelivery after a crash) and
    #    keys of a cancelled job (a batch already generating finishes: it is not interrupted)
    tasks: list[tuple[dict, PromptTask]] = []
    for message in messages:
        try:
            task = PromptTask.model_validate(message)
        except ValidationError as exc:
            try:
                settle_invalid(rt, message, exc, GPU_TASK, queue)
            except Exception:  # noqa: BLE001
                log.exception("could not settle an invalid GPU message")
                unsettled.append(message)
            continue
        try:
            if not rt.jobs.is_cancelled(task.job_id) and not already_done(task, rt.storage, rt.jobs):
                tasks.append((message, task))
        except TransientError as exc:
            end(message, task=task, transient=exc)
        except Exception as exc:  # noqa: BLE001
            end(message, task=task, record=error_record(task, exc))
    log.info("batch of %d requests, %d to generate", len(messages), len(tasks))
    if not tasks:
        return unsettled
    # 2. Generate, store, and build each key's record (a failure there is the batch's keys')
    try:
        finished = finish_batch([t for _, t in tasks], rt.models("gpu", GpuModels.load), rt.storage)
    except Exception as exc:  # noqa: BLE001
        log.exception("batch of %d failed", len(tasks))
        for message, task in tasks:
            if isinstance(exc, TransientError):
                end(message, task=task, transient=exc)
            else:
                end(message, task=task, record=error_record(task, exc))
        return unsettled
    # 3. Publish each key's sidecar, or send a transient failure again
    for (message, _), key in zip(tasks, finished, strict=True):
        if key.transient is not None:
            end(message, task=key.task, transient=key.transient, model_sha256=key.task.model_sha256)
        else:
            end(message, task=key.task, record=key.record)
    return unsettled


def configure_batching(settings: Settings) -> None:
    """Batch size and wait come from the settings, at worker start-up."""
    generate_portraits.flush_every = settings.batch_size
    generate_portraits.flush_interval = settings.gpu_batch_wait_s
