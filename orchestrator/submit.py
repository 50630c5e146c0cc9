"""``veil submit``: a job's keys streamed into its pending list in Redis, page by page.

1. The job is found by ``--name`` (a re-run resumes it after its last whole page) or created,
   with its ``JobSpec`` (input root, output root, seed, overwrite) stored once.
2. Keys already done are skipped from ONE listing of the output prefix's sidecars (a set of
   8-byte digests here, not a HEAD per key).
3. Each page: its keys checked (none outside OUTPUT, none onto an input, no two on one output),
   then, in one MULTI, pushed as relative keys onto the pending list with the total and the
   resume cursor; the feeder (``workers/feeder.py``) tops ``veil.cpu`` up after each page.

Nothing per key is held in this process but two sets of 8-byte digests (keys seen, keys done).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass

from orchestrator.inputs import InputItem, OutputPlan, plan_outputs
from orchestrator.listing import open_listing
from shared.errors import InputError, UnsafeKeyError
from shared.imageio import output_name
from shared.jobs import JobStore, job_key
from shared.jobsummary import is_sidecar
from shared.messages import ImageTask, JobSpec
from shared.results import seed_for
from shared.settings import Settings
from shared.storage import Storage, check_key, is_local, relative_key, safe_join


@dataclass(frozen=True)
class Submitted:
    job_id: str
    count: int  # keys listed by this run: queued + skipped
    repeats: int = 0  # inputs listed more than once, enqueued once
    unsafe: tuple[str, ...] = ()  # input URIs refused (``unsafe_key``), counted failed in the job
    skipped: int = 0  # their sidecar was already in the output
    resumed: bool = False  # a job of this name was part-listed: this run continued it
    complete: bool = False  # a job of this name was fully listed already: nothing was done


def image_task(item: InputItem, out: str, settings: Settings, job_id: str, *, overwrite: bool = False) -> ImageTask:
    """The one builder of a key's ImageTask for ``veil run`` (the distributed path builds it
    from the job's spec: ``workers.feeder.task_for``, the same fields): its output mirrors its
    relative key under ``out`` (``safe_join``: a key that would leave ``out`` raises
    ``UnsafeKeyError``), its seed derives from the run's seed and the key."""
    return ImageTask(
        job_id=job_id,
        input_uri=item.uri,
        output_uri=safe_join(out, output_name(item.key)),
        seed=seed_for(settings.seed, item.key),
        overwrite=overwrite,
        method=settings.method,  # the distributed path takes these three from the job's spec
        mode=settings.mode,
        guard=settings.guard,
    )


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def done_outputs(out: str, storage: Storage) -> set[int]:
    """Digests of the relative output keys whose sidecar exists: one listing, page by page."""
    done: set[int] = set()
    for page in storage.list_pages(out if out.endswith("/") or is_local(out) else out + "/"):
        for uri in page:
            if is_sidecar(out, uri):
                done.add(_digest(relative_key(out, uri)[: -len(".json")]))
    return done


def _plan_object_page(items: list[InputItem], out: str, source: str) -> OutputPlan:
    """``plan_outputs`` for an object-store OUTPUT, the same checks at a fraction of the cost
    (no per-key URI parsing): each output is ``out`` + a checked relative name."""
    base = out if out.endswith("/") else out + "/"
    outputs: list[tuple[InputItem, str]] = []
    unsafe: list[tuple[InputItem, UnsafeKeyError]] = []
    for item in items:
        try:
            outputs.append((item, base + check_key(output_name(item.key))))
        except UnsafeKeyError as exc:
            unsafe.append((item, exc))
    inputs = {i.uri for i in items}
    writers: dict[str, int] = {}
    for _, o in outputs:
        writers[o] = writers.get(o, 0) + 1
    if any(o in inputs for _, o in outputs) or any(n > 1 for n in writers.values()):
        return plan_outputs(items, out, source)  # raises, naming the keys
    return OutputPlan(outputs, unsafe)


def submit(
    source: str,
    out: str,
    settings: Settings,
    storage: Storage,
    jobs: JobStore,
    *,
    name: str | None = None,
    overwrite: bool = False,
    page_size: int = 1000,
    feed: bool = True,
) -> Submitted:
    # 1. Find the job of this name (resume) or create it with its spec
    job_id = jobs.by_name(name) if name else None
    job = jobs.get(job_id) if job_id else None
    listing = open_listing(source, storage, page_size)
    if job is not None and job.spec is not None:
        if job.listed:
            return Submitted(job.job_id, job.total, complete=True)
        if (job.spec.source, job.spec.output) != (source, out):
            raise InputError(f"job {name!r} lists {job.spec.source} into {job.spec.output}: use another --name")
        spec, resumed = job.spec, True
        cursor = str(jobs.redis.hget(job_key(spec.job_id), "cursor") or "")
    else:
        new_id = uuid.uuid4().hex[:12]
        spec = JobSpec(
            job_id=new_id, name=name or new_id, input=listing.root, source=source, output=out,
            seed=settings.seed, overwrite=overwrite, created=time.time(),
            method=settings.method, mode=settings.mode, guard=settings.guard,
        )  # fmt: skip
        jobs.create(spec.job_id, name=spec.name, input=source, output=out, spec=spec)
        resumed, cursor = False, ""
    feeder = _feeder(settings, jobs) if feed else None
    # 2. What is already done: one listing of the output's sidecars
    done = set() if spec.overwrite else done_outputs(out, storage)
    # 3. Page by page: check, skip, push with the cursor, top the queue up
    seen: set[int] = set()
    count = repeats = skipped = 0
    unsafe: list[str] = []
    for items, after in listing.pages(cursor):
        kept = []
        for item in items:
            ident = _digest(item.uri)
            if ident in seen:
                repeats += 1
                continue
            seen.add(ident)
            kept.append(item)
        plan = plan_outputs(kept, out, source) if is_local(out) else _plan_object_page(kept, out, source)
        for item, exc in plan.unsafe:
            jobs.record(spec.job_id, item.uri, "failed", f"{exc.reason}: {exc}")
            unsafe.append(item.uri)
        keys = [i.key for i, _ in plan.outputs]
        if done:
            keys = [k for k in keys if _digest(output_name(k)) not in done]
        page_skipped = len(plan.outputs) - len(keys)
        jobs.add_page(spec.job_id, keys, after, skipped=page_skipped, failed=len(plan.unsafe))
        count += len(plan.outputs)
        skipped += page_skipped
        if feeder is not None:
            feeder.feed_once()
    if not resumed and count == 0 and not unsafe:
        jobs.delete(spec.job_id)
        raise InputError(f"INPUT: no images found in {source!r}")
    jobs.end_listing(spec.job_id)  # every key skipped: it ends now; a CPU worker's finalize writes its files
    if feeder is not None:
        feeder.feed_once()
    return Submitted(spec.job_id, count, repeats, tuple(unsafe), skipped, resumed)


def _feeder(settings: Settings, jobs: JobStore):  # noqa: ANN202 - workers.feeder.Feeder, imported late
    from workers.feeder import Feeder  # the Celery app only: tasks are sent by name

    return Feeder(settings, jobs)
