"""GPU-tier Celery task: a batch of PromptTasks -> images and sidecars in object storage.

``celery-batches`` hands the task up to ``flush_every`` (= VEIL_BATCH_SIZE) requests, or what
arrived within ``flush_interval`` (= VEIL_GPU_BATCH_WAIT_S), both set by ``configure_batching``
at start-up. The worker runs with the solo pool, one process per CUDA device, and a prefetch
window of two batches. Requests are acknowledged after the batch returns (acks_late): a worker
killed mid-batch leaves them unacknowledged and Redis redelivers them; keys whose sidecar
exists are skipped, so each key ends with exactly one image and one sidecar.
"""

from __future__ import annotations

from celery.utils.log import get_task_logger
from celery_batches import Batches

from shared.messages import PromptTask
from shared.results import already_done, publish
from shared.settings import Settings
from workers import runtime
from workers.celery_app import GPU_TASK, app
from workers.gpu.stage import GpuModels, finish_batch
from workers.retries import retry_or_fail

log = get_task_logger(__name__)


@app.task(name=GPU_TASK, base=Batches, acks_late=True, reject_on_worker_lost=True)
def generate_portraits(requests) -> None:
    rt = runtime.current()
    # 1. Parse the batch and drop keys already finished (redelivery after a crash)
    tasks = [PromptTask.model_validate(r.args[0]) for r in requests]
    tasks = [t for t in tasks if not already_done(t, rt.storage, rt.jobs)]
    log.info("batch of %d requests, %d to generate", len(requests), len(tasks))
    if not tasks:
        return
    # 2. Generate, store, and build each key's record
    for key in finish_batch(tasks, rt.models("gpu", GpuModels.load), rt.storage):
        # 3. Publish its sidecar, or send a transient failure again
        if key.transient is not None:
            retry_or_fail(key.task, key.transient, key.task.model_sha256, rt, GPU_TASK, rt.settings.gpu_queue)
        elif key.record is not None:
            publish(key.record, key.task.output_uri, rt.storage, rt.jobs)


def configure_batching(settings: Settings) -> None:
    """Batch size and wait come from the settings, at worker start-up."""
    generate_portraits.flush_every = settings.batch_size
    generate_portraits.flush_interval = settings.gpu_batch_wait_s
