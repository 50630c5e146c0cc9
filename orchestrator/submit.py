"""``veil submit``: enqueue one ImageTask per input key and return a job id at once."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from orchestrator.inputs import InputItem, list_inputs
from shared.imageio import output_name
from shared.jobs import JobStore
from shared.messages import ImageTask
from shared.results import seed_for
from shared.settings import Settings
from shared.storage import Storage, join_uri


@dataclass(frozen=True)
class Submitted:
    job_id: str
    count: int


def image_task(item: InputItem, out: str, settings: Settings, job_id: str, *, overwrite: bool = False) -> ImageTask:
    """The one builder of a key's ImageTask (``veil submit`` and ``veil run``): its output mirrors
    its relative key under ``out``, its seed derives from the run's seed and the key."""
    return ImageTask(
        job_id=job_id,
        input_uri=item.uri,
        output_uri=join_uri(out, output_name(item.key)),
        seed=seed_for(settings.seed, item.key),
        overwrite=overwrite,
    )


def submit(
    source: str,
    out: str,
    settings: Settings,
    storage: Storage,
    jobs: JobStore,
    *,
    name: str | None = None,
    overwrite: bool = False,
    chunk: int = 1000,
) -> Submitted:
    from workers.celery_app import CPU_TASK, app  # the app only: the task is sent by name

    # 1. List the keys (an s3:// prefix, a folder, or a manifest file of keys)
    items = list_inputs(source, storage)
    # 2. Create the job record
    job_id = uuid.uuid4().hex[:12]
    jobs.create(job_id, name=name or job_id, input=source, output=out)
    # 3. Enqueue in chunks over one producer connection, counting as we go
    with app.producer_or_acquire() as producer:
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            for item in part:
                task = image_task(item, out, settings, job_id, overwrite=overwrite)
                app.send_task(
                    CPU_TASK, args=[task.model_dump(mode="json")], queue=settings.cpu_queue, producer=producer
                )
            jobs.add_total(job_id, len(part))
    return Submitted(job_id, len(items))
