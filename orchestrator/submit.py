"""``veil submit``: enqueue one ImageTask per input key and return a job id at once."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from orchestrator.inputs import InputItem, list_inputs_with_repeats, plan_outputs
from shared.imageio import output_name
from shared.jobs import JobStore
from shared.messages import ImageTask
from shared.results import seed_for
from shared.settings import Settings
from shared.storage import Storage, safe_join


@dataclass(frozen=True)
class Submitted:
    job_id: str
    count: int
    repeats: int = 0  # inputs listed more than once, enqueued once
    unsafe: tuple[str, ...] = ()  # input URIs refused (``unsafe_key``), counted failed in the job


def image_task(item: InputItem, out: str, settings: Settings, job_id: str, *, overwrite: bool = False) -> ImageTask:
    """The one builder of a key's ImageTask (``veil submit`` and ``veil run``): its output mirrors
    its relative key under ``out`` (``safe_join``: a key that would leave ``out`` raises
    ``UnsafeKeyError``), its seed derives from the run's seed and the key."""
    return ImageTask(
        job_id=job_id,
        input_uri=item.uri,
        output_uri=safe_join(out, output_name(item.key)),
        seed=seed_for(settings.seed, item.key),
        overwrite=overwrite,
        method=settings.method,  # issue 13 (job-wide: may move into the job's spec)
        mode=settings.mode,  # issue 14
        guard=settings.guard,
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

    # 1. List the keys (an s3:// prefix, a folder, or a manifest file of keys), each once, and
    #    check their outputs: none outside ``out``, none on an input, no two inputs on one output
    all_items, repeats = list_inputs_with_repeats(source, storage)
    plan = plan_outputs(all_items, out, source)
    items = [item for item, _ in plan.outputs]
    # 2. Create the job record; an unsafe key is counted failed at once (it has no safe place
    #    for a sidecar, so the CLI lists it)
    job_id = uuid.uuid4().hex[:12]
    jobs.create(job_id, name=name or job_id, input=source, output=out)
    if plan.unsafe:
        jobs.add_total(job_id, len(plan.unsafe))
        for item, _ in plan.unsafe:
            jobs.record(job_id, item.uri, "failed")
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
    return Submitted(job_id, len(items), len(repeats), tuple(i.uri for i, _ in plan.unsafe))
