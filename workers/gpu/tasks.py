"""GPU-tier Celery task: a batch of PromptTasks -> images and sidecars in object storage.

``celery-batches`` hands the task up to ``flush_every`` (= VEIL_BATCH_SIZE) requests, or what
arrived within ``flush_interval`` (= VEIL_GPU_BATCH_WAIT_S), both set by ``configure_batching``
at start-up. The worker runs with the solo pool, one process per CUDA device, and a prefetch
window of two batches. Requests are acknowledged after the batch returns (acks_late): a worker
killed mid-batch leaves them unacknowledged and Redis redelivers them; keys whose sidecar
exists are skipped, so each key ends with exactly one image and one sidecar.

A batch commits as a batch (``workers.gpu.commit``): its sidecars PUT in parallel, its counters
in one Redis round trip, each message parsed once. Plain celery-batches acknowledges every
request once the task returns, raised or not; ``CommitBatches`` acknowledges only the requests
the task settled and gives the others back (``reject(requeue=True)``): the task returns the ids
of the requests whose outcome it could not write nor re-send (Redis or S3 down). Why that is
safe: delivery is at-least-once and a key's sidecar is its commit marker, written after its
image; a given-back message comes back (at once when Redis takes the reject; when Redis is
down, the message is still in kombu's unacked hash and is restored when the channel closes or
after ``VEIL_VISIBILITY_TIMEOUT_S``), and its redelivery either skips the key (its sidecar
exists: counted then, once, by digest) or does it again, writing the same image and sidecar. So
an outage costs the batch a bounded wait (``workers.gpu.commit``: ~35 s at worst with both down,
~13 s with Redis down), never minutes of blocking retries, and no key is acknowledged unended.
A task that raises (a bug) gives its whole batch back rather than acknowledge unended keys.

Watching it (Flower): while the batch runs, ``beacon`` sends the worker's heartbeats from a
side thread (the solo pool's event loop is blocked by the batch) and each request's task events,
so Flower shows the worker Online and every key as a ``veil.generate`` task with its state and
runtime; ``workers.metrics`` counts the batch's size, each key's outcome and stage times.
"""

from __future__ import annotations

import time
from typing import Any

from celery.utils.log import get_task_logger
from celery_batches import SimpleRequest, partition
from celery_batches.trace import apply_batches_task
from pydantic import ValidationError

from shared.errors import TransientError
from shared.messages import PromptTask, Status
from shared.results import count_if_finished_may_end_job, error_record
from shared.settings import Settings
from workers import metrics, runtime
from workers.admission import Refused, admit, refused
from workers.celery_app import GPU_TASK, app
from workers.gpu.beacon import BeaconStep, VisibleBatches, beacon_of
from workers.gpu.commit import GIVEN_BACK, KeyEnd, commit
from workers.gpu.gpumodels import GpuModels
from workers.gpu.stage import finish_batch
from workers.retries import settle_invalid

log = get_task_logger(__name__)


beacon = beacon_of(app)
app.steps["consumer"].add(BeaconStep)


class CommitBatches(VisibleBatches):
    """``Batches`` whose late acknowledgement spares the requests the task gives back: the task
    returns their ids, and they are rejected with requeue instead (if Redis refuses even that,
    they stay in its unacked hash and come back after the visibility timeout)."""

    abstract = True

    def flush(self, requests: Any) -> Any:  # celery-batches' flush, with the acks chosen
        acks_early, acks_late = partition(lambda r: bool(r.task.acks_late), requests)
        serializable = ([SimpleRequest.from_request(r) for r in requests],)

        def on_accepted(pid: int, time_accepted: float) -> None:
            for req in acks_early:
                req.acknowledge()

        def on_return(result: Any) -> None:
            if not isinstance(result, list):
                log.error("GPU batch raised: its %d requests are given back", len(acks_late))
            back = set(result) if isinstance(result, list) else {r.id for r in acks_late}
            for req in acks_late:
                try:
                    req.reject(requeue=True) if req.id in back else req.acknowledge()
                except Exception:  # noqa: BLE001 - Redis down: the message stays unacked in Redis
                    log.warning("request %s neither acknowledged nor given back", req.id, exc_info=True)

        return self._pool.apply_async(
            apply_batches_task, (self, serializable, 0, None), accept_callback=on_accepted, callback=on_return
        )


@app.task(name=GPU_TASK, base=CommitBatches, acks_late=True, reject_on_worker_lost=True)
def generate_portraits(requests) -> list[str]:
    """Returns the ids of the requests given back (not acknowledged)."""
    rt = runtime.current()
    metrics.gpu_batch(len(requests))
    # 1. Heartbeats from the beacon's thread while the batch blocks this one; each request started
    with beacon.batch(requests[0].hostname if requests else None, [_active_info(r) for r in requests]):
        started = time.monotonic()
        for request in requests:
            beacon.task_event("task-started", uuid=request.id, name=GPU_TASK)
        # 2. Run and commit the batch: every message ended, re-sent, or given back
        outcomes = _run_batch([r.args[0] if r.args else None for r in requests], rt, rt.settings.gpu_queue)
        # 3. Each request's end, for Flower and Prometheus
        for request, (outcome, reason) in zip(requests, outcomes, strict=True):
            _report(request.id, outcome, reason, time.monotonic() - started)
    back = [r.id for r, (outcome, _) in zip(requests, outcomes, strict=True) if outcome == GIVEN_BACK]
    log.info("batch committed in %.1f s: %d given back", time.monotonic() - started, len(back))
    return back


def _active_info(request: Any) -> dict[str, Any]:
    """A request as ``celery inspect active`` lists one (Celery's ``Request.info`` fields)."""
    return {
        "id": request.id,
        "name": GPU_TASK,
        "args": request.args,
        "kwargs": request.kwargs,
        "hostname": request.hostname,
        "time_start": time.time(),
        "acknowledged": False,
        "delivery_info": request.delivery_info,
        "worker_pid": None,
    }


def _report(task_id: str, outcome: str, reason: str | None, runtime_s: float) -> None:
    metrics.image("gpu", outcome)
    if outcome == Status.FAILED.value:
        beacon.task_event("task-failed", uuid=task_id, name=GPU_TASK, exception=reason or "failed", traceback="")
    else:
        beacon.task_event("task-succeeded", uuid=task_id, name=GPU_TASK, result=repr(outcome), runtime=runtime_s)


def _run_batch(messages: list, rt: runtime.Runtime, queue: str) -> list[tuple[str, str | None]]:
    """Each message's (outcome, failure reason), in order."""
    outcomes: list[tuple[str, str | None]] = [(GIVEN_BACK, "outcome not recorded")] * len(messages)
    ends: list[KeyEnd] = []
    # 1. Parse each message once, alone; drop keys already finished (redelivery after a crash)
    #    and keys of a cancelled job (a batch already generating finishes: it is not interrupted)
    tasks: list[tuple[int, PromptTask]] = []
    for i, message in enumerate(messages):
        try:
            task = PromptTask.model_validate(message)
        except ValidationError as exc:
            try:
                outcomes[i] = (settle_invalid(rt, message, exc, GPU_TASK, queue), "bad_message")
            except Exception:  # noqa: BLE001 - broker down: given back
                log.exception("could not settle an invalid GPU message")
            continue
        try:
            task = admit(rt, task)  # input, output and job inside what this worker may touch
        except Refused as refusal:
            try:
                outcomes[i] = (refused(rt, task, refusal, GPU_TASK, queue), refusal.error.reason)
            except Exception:  # noqa: BLE001 - broker down: given back
                log.exception("could not settle a refused GPU message")
            continue
        except TransientError as exc:
            ends.append(KeyEnd(i, task, transient=exc))
            continue
        try:
            if rt.jobs.is_cancelled(task.job_id):
                outcomes[i] = ("cancelled", None)
            elif count_if_finished_may_end_job(task, rt.storage, rt.jobs):
                outcomes[i] = ("skipped", None)
            else:
                tasks.append((i, task))
        except TransientError as exc:
            ends.append(KeyEnd(i, task, transient=exc))
        except Exception as exc:  # noqa: BLE001
            ends.append(KeyEnd(i, task, record=error_record(task, exc)))
    log.info("batch of %d requests, %d to generate", len(messages), len(tasks))
    # 2. Generate, store, and build each key's record (a failure there is the batch's keys')
    if tasks:
        timings: list[dict[str, float]] = [{} for _ in tasks]
        try:
            finished = finish_batch([t for _, t in tasks], rt.models("gpu", GpuModels.load), rt.storage, timings)
        except Exception as exc:  # noqa: BLE001
            log.exception("batch of %d failed", len(tasks))
            for i, task in tasks:
                if isinstance(exc, TransientError):
                    ends.append(KeyEnd(i, task, transient=exc))
                else:
                    ends.append(KeyEnd(i, task, record=error_record(task, exc)))
        else:
            for tm in timings:
                metrics.stage_times(tm)
            for (i, _), key in zip(tasks, finished, strict=True):
                ends.append(KeyEnd(i, key.task, key.record, key.transient, key.task.model_sha256))
    # 3. Commit: sidecars in parallel, counters in one round trip, re-sends; or give back
    for i, outcome in commit(ends, rt, queue).items():
        outcomes[i] = outcome
    return outcomes


def configure_batching(settings: Settings) -> None:
    """Batch size and wait come from the settings, at worker start-up."""
    generate_portraits.flush_every = settings.batch_size
    generate_portraits.flush_interval = settings.gpu_batch_wait_s
