"""CPU-tier Celery task: ImageTask -> PromptTask on the GPU queue, or a sidecar for a key
that ends here (no face, undecodable). Stage logic lives in ``workers.cpu.stage``; the GPU
task is sent by name, so this process never imports the GPU stack."""

from __future__ import annotations

from celery.utils.log import get_task_logger

from shared.errors import PermanentError, TransientError
from shared.messages import ImageTask
from shared.results import already_done, error_record, publish
from workers import runtime
from workers.celery_app import CPU_TASK, GPU_TASK, app
from workers.cpu.stage import CpuModels, analyze
from workers.retries import retry_or_fail

log = get_task_logger(__name__)


@app.task(name=CPU_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def analyze_image(self, message: dict) -> str:
    # 1. Validate the message and get this process's resources
    task = ImageTask.model_validate(message)
    rt = runtime.current()
    # 2. Skip a key whose result already exists (idempotent redelivery, reruns)
    if already_done(task, rt.storage, rt.jobs):
        return "skipped"
    cpu = rt.models("cpu", CpuModels.load)
    try:
        # 3. Read the image and analyse its biggest face
        prompt = analyze(task, rt.storage.read(task.input_uri), cpu)
    except TransientError as exc:
        return retry_or_fail(task, exc, cpu.model_sha256, rt, CPU_TASK, rt.settings.cpu_queue)
    except Exception as exc:  # noqa: BLE001 - permanent, missing input, or a bug: never a lost key
        # 4a. A key that can't succeed: its sidecar says why, at once
        if not isinstance(exc, (PermanentError, FileNotFoundError)):
            log.exception("analysis of %s failed", task.input_uri)
        record = error_record(task, exc, cpu.model_sha256)
        publish(record, task.output_uri, rt.storage, rt.jobs)
        return record.status.value
    # 4b. Hand the prompt to the GPU tier, by task name
    app.send_task(GPU_TASK, args=[prompt.model_dump(mode="json")], queue=rt.settings.gpu_queue)
    return "prompted"
