"""GPU-tier Celery task: a batch of PromptTasks -> images and sidecars in object storage.

``celery-batches`` hands the task up to ``flush_every`` (= VEIL_BATCH_SIZE) requests, or what
arrived within ``flush_interval`` (= VEIL_GPU_BATCH_WAIT_S). The worker runs with the solo
pool, one process per CUDA device, and a prefetch window of two batches. Requests are
acknowledged after the batch returns (acks_late): a worker killed mid-batch leaves them
unacknowledged and Redis redelivers them; keys whose sidecar exists are skipped, so each key
ends with exactly one image and one sidecar.
"""

from __future__ import annotations

from celery.utils.log import get_task_logger
from celery_batches import Batches

from shared.errors import TransientError
from shared.messages import PromptTask
from shared.results import done_record, error_record, publish, read_sidecar
from workers.celery_app import GPU_TASK, app
from workers.gpu.stage import GpuModels, generate_batch, store_images
from workers.retries import retry_or_fail
from workers.runtime import get_runtime

log = get_task_logger(__name__)

@app.task(name=GPU_TASK, base=Batches, acks_late=True, reject_on_worker_lost=True, flush_every=4, flush_interval=2.0)
def generate_portraits(requests) -> None:
    rt = get_runtime(app.conf.veil_settings)
    # 1. Parse the batch and drop keys already finished (redelivery after a crash)
    tasks = [t for t in (PromptTask.model_validate(r.args[0]) for r in requests) if _needs_work(t, rt)]
    log.info("batch of %d requests, %d to generate", len(requests), len(tasks))
    if not tasks:
        return
    gpu = rt.models("gpu", GpuModels.load)
    # 2. Generate the whole batch in one diffusion call
    try:
        images = generate_batch(tasks, gpu)
    except TransientError as exc:
        for task in tasks:
            retry_or_fail(task, exc, {**task.models, **gpu.models}, rt, GPU_TASK, rt.settings.gpu_queue)
        return
    except Exception as exc:  # noqa: BLE001 - a bug or bad model: every key gets its sidecar
        log.exception("batch failed")
        for task in tasks:
            publish(error_record(task, exc, {**task.models, **gpu.models}), task.output_uri, rt.storage, rt.jobs)
        return
    # 3. Encode and upload the images in parallel, then write each stored key's sidecar
    tasks = [t.model_copy(update={"models": {**t.models, **gpu.models}}) for t in tasks]
    for task, error in zip(tasks, store_images(tasks, images, rt.storage)):
        if error is None:
            publish(done_record(task), task.output_uri, rt.storage, rt.jobs)
        elif isinstance(error, TransientError):
            retry_or_fail(task, error, task.models, rt, GPU_TASK, rt.settings.gpu_queue)
        else:
            publish(error_record(task, error), task.output_uri, rt.storage, rt.jobs)


def _needs_work(task: PromptTask, rt) -> bool:
    if task.overwrite:
        return True
    existing = read_sidecar(rt.storage, task.output_uri)
    if existing is None:
        return True
    rt.jobs.record(task.job_id, task.input_uri, existing.status.value)
    return False
