"""CPU-tier Celery task: ImageTask -> PromptTask on the GPU queue, or a sidecar for a key
that ends here (no face, undecodable). Stage logic lives in ``workers.cpu.stage``; the GPU
task is sent by name, so this process never imports the GPU stack.

Every storage and broker call is inside the transient/permanent handling (``settle``): a key
ends done / no_face / failed, or its message is back on a queue. Only when the broker itself
refuses the re-send is the message rejected with requeue (Redis restores it if even that fails).
"""

from __future__ import annotations

from celery.exceptions import Reject
from celery.utils.log import get_task_logger
from pydantic import ValidationError

from shared.errors import BrokerError, PermanentError, TransientError
from shared.inputfiles import read_input
from shared.messages import ImageTask
from shared.results import already_done, error_record
from workers import runtime
from workers.celery_app import CPU_TASK, GPU_TASK, app
from workers.cpu.stage import CpuModels, analyze
from workers.retries import send, settle, settle_invalid

log = get_task_logger(__name__)


@app.task(name=CPU_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def analyze_image(self, message: dict) -> str:
    rt = runtime.current()
    queue = rt.settings.cpu_queue
    try:
        # 1. Validate the message: an invalid one fails alone
        try:
            task = ImageTask.model_validate(message)
        except ValidationError as exc:
            return settle_invalid(rt, message, exc, CPU_TASK, queue)
        return _analyze(task, rt, queue)
    except BrokerError as exc:
        log.error("broker unreachable, message returned to Redis: %s", exc)
        raise Reject(exc, requeue=True) from exc


def _analyze(task: ImageTask, rt: runtime.Runtime, queue: str) -> str:
    models: dict[str, str] = {}
    try:
        # 2. Drop a cancelled job's key; skip a key whose result already exists (idempotent
        #    redelivery, reruns)
        if rt.jobs.is_cancelled(task.job_id):
            return "cancelled"
        if already_done(task, rt.storage, rt.jobs):
            return "skipped"
        cpu = rt.models("cpu", CpuModels.load)
        models = cpu.model_sha256
        # 3. Read the image and analyse its biggest face
        prompt = analyze(task, read_input(rt.storage, task.input_uri, max_bytes=rt.settings.max_input_bytes), cpu)
        # 4. Hand the prompt to the GPU tier, by task name
        send(prompt.model_dump(mode="json"), GPU_TASK, rt.settings.gpu_queue)
    except TransientError as exc:
        return settle(rt, task, CPU_TASK, queue, transient=exc, model_sha256=models)
    except Exception as exc:  # noqa: BLE001 - permanent, missing input, or a bug: never a lost key
        # 5. A key that can't succeed: its sidecar says why, at once
        if not isinstance(exc, (PermanentError, FileNotFoundError)):
            log.exception("analysis of %s failed", task.input_uri)
        return settle(rt, task, CPU_TASK, queue, record=error_record(task, exc, models))
    return "prompted"
