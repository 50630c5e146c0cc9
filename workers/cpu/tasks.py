"""CPU-tier Celery task: ImageTask -> PromptTask on the GPU queue, or a sidecar for a key
that ends here (no face, undecodable; or a classical method: its image and sidecar written
here). Stage logic lives in ``workers.cpu.stage``; the GPU task is sent by name, so this process
never imports the GPU stack.

Every storage and broker call is inside the transient/permanent handling (``settle``): a key
ends done / no_face / failed, or its message is back on a queue. Only when the broker itself
refuses the re-send is the message rejected with requeue (Redis restores it if even that fails).
"""

from __future__ import annotations

from celery.exceptions import Reject
from celery.utils.log import get_task_logger
from pydantic import ValidationError

from shared.errors import BrokerError, KeyFailed, PermanentError, TransientError
from shared.inputfiles import read_input
from shared.messages import ImageTask, Status
from shared.results import already_done, error_record
from workers import metrics, runtime
from workers.celery_app import CPU_TASK, GPU_TASK, app
from workers.cpu.classical import is_classical
from workers.cpu.stage import CpuModels, analyze, anonymize_classical
from workers.retries import BadMessageError, send, settle, settle_invalid

log = get_task_logger(__name__)


@app.task(name=CPU_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, throws=(KeyFailed,))
def analyze_image(self, message: dict) -> str:
    rt = runtime.current()
    queue = rt.settings.cpu_queue
    reason: str | None
    try:
        # 1. Validate the message: an invalid one fails alone
        try:
            task = ImageTask.model_validate(message)
        except ValidationError as exc:
            outcome, reason = settle_invalid(rt, message, exc, CPU_TASK, queue), BadMessageError.reason
        else:
            outcome, reason = _analyze(task, rt, queue)
    except BrokerError as exc:
        log.error("broker unreachable, message returned to Redis: %s", exc)
        metrics.image("cpu", "rejected")
        raise Reject(exc, requeue=True) from exc
    metrics.image("cpu", outcome)
    if outcome == Status.FAILED.value:
        # 7. Recorded failed: a failed task in Flower, with its reason (acknowledged, not retried)
        raise KeyFailed(f"{message.get('input_uri') if isinstance(message, dict) else '?'}: {reason}")
    return outcome


def _analyze(task: ImageTask, rt: runtime.Runtime, queue: str) -> tuple[str, str | None]:
    """The key's outcome and, when it failed, why."""
    models: dict[str, str] = {}
    timings: dict[str, float] = {}
    try:
        # 2. Drop a cancelled job's key; skip a key whose result already exists (idempotent
        #    redelivery, reruns)
        if rt.jobs.is_cancelled(task.job_id):
            return "cancelled", None
        if already_done(task, rt.storage, rt.jobs):
            return "skipped", None
        cpu = rt.models("cpu", CpuModels.for_worker)
        models = cpu.model_sha256
        # 3. Read the image
        data = read_input(rt.storage, task.input_uri, max_bytes=rt.settings.max_input_bytes)
        try:
            if is_classical(task.method):
                # 3b. A classical method finishes the key here: its image now, its sidecar below
                done = anonymize_classical(task, data, cpu, rt.storage, timings)
            else:
                # 3c. Analyse its biggest face and hand the prompt to the GPU tier, by task name
                prompt = analyze(task, data, cpu, timings)
        finally:
            metrics.stage_times(timings)
        if not is_classical(task.method):
            send(prompt.model_dump(mode="json"), GPU_TASK, rt.settings.gpu_queue)
            return "prompted", None
    except TransientError as exc:
        return settle(rt, task, CPU_TASK, queue, transient=exc, model_sha256=models), f"{exc.reason}: {exc}"
    except Exception as exc:  # noqa: BLE001 - permanent, missing input, or a bug: never a lost key
        # 5. A key that can't succeed: its sidecar says why, at once
        if not isinstance(exc, (PermanentError, FileNotFoundError)):
            log.exception("analysis of %s failed", task.input_uri)
        record = error_record(task, exc, models)
        return settle(rt, task, CPU_TASK, queue, record=record), record.reason
    # 6. A classical key's sidecar (its commit marker, after its image)
    return settle(rt, task, CPU_TASK, queue, record=done), done.reason
