"""``veil submit``: a job's keys streamed into its pending list in Redis, page by page.

1. Refused at once, as ``veil run`` refuses it: OUTPUT inside INPUT (or the same).
2. One submit per ``--name`` at a time (``SubmitLock``): a second one is refused (exit 2) while
   the first runs; one whose holder died takes over and resumes.
3. The job is found by ``--name`` (a re-run resumes it after its last whole page), or its spec made.
4. Before the job exists: the WHOLE listing checked as ``veil run`` checks it, through the same
   listing and planner (``orchestrator/listing.py``: no output on an input, no two inputs on one
   output, across pages too: ``check_whole_listing``, one extra listing pass), and the finished
   keys (a sidecar, whatever its outcome: ``shared.keys.is_finished``) read from ONE listing of
   the output's sidecars.
   Any refusal here (an ``InputError``, exit 2) leaves no job behind.
5. The job made (``JobStore.create``: it takes its name atomically), then each page: keys the
   one task builder refuses (``shared.keys.task_for``: unsafe, a name too long) counted failed,
   the rest, in one MULTI, pushed as relative keys onto the pending list with the total and the
   resume cursor; the feeder (``workers/feeder.py``) tops ``veil.cpu`` up after
   each page. A refusal after the job exists deletes it; so does any failure before its first page.

Nothing per key is held in this process but sets of 8-byte digests: the inputs' and planned
outputs' during the check, then the keys seen and the keys done while pushing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import redis

from orchestrator.listing import Listing, check_whole_listing, open_listing, planned_pages
from orchestrator.outputcheck import check_output_outside_input
from shared.errors import InputError, StorageRefusedError
from shared.imageio import output_name
from shared.jobs import JobStore, job_key
from shared.jobsummary import is_sidecar
from shared.keys import digest, spec_for
from shared.roots import AllowedRoots, check_job_roots
from shared.settings import Settings
from shared.storage import Storage, is_local, relative_key

T = TypeVar("T")


@dataclass(frozen=True)
class Submitted:
    job_id: str
    count: int  # keys listed by this run: queued + skipped
    repeats: int = 0  # inputs listed more than once, enqueued once
    unsafe: tuple[str, ...] = ()  # input URIs refused (``unsafe_key``, ``name_too_long``), counted failed in the job
    skipped: int = 0  # their sidecar was already in the output
    resumed: bool = False  # a job of this name was part-listed: this run continued it
    complete: bool = False  # a job of this name was fully listed already: nothing was done


def done_outputs(out: str, storage: Storage, tick: Callable[[], None] | None = None) -> set[bytes]:
    """Digests of the relative output keys whose sidecar exists (finished keys, whatever their
    outcome: ``shared.keys.is_finished``): one listing, page by page (``tick`` once per page)."""
    done: set[bytes] = set()
    for page in storage.list_pages(out if out.endswith("/") or is_local(out) else out + "/"):
        if tick is not None:
            tick()
        for uri in page:
            if is_sidecar(out, uri):
                done.add(digest(relative_key(out, uri)[: -len(".json")]))
    return done


#: how long the submit lock outlives its holder's last page when the holder is cut off (a
#: holder that dies frees it at once: its Redis connection closes)
LOCK_TTL_MS = 120_000

# compare-and-set: the lock goes from ARGV[1] ('' = free) to ARGV[2] ('' = released), with a TTL
_SWAP = """
local v = redis.call('GET', KEYS[1]) or ''
if v ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 1
"""


class SubmitLock:
    """One ``veil submit --name NAME`` at a time (``veil:submitting:NAME``), from before the
    listing is checked until its last page is pushed, so two submits of one name can never push
    the same pages twice. Its value is the holder's Redis client id on a connection held for the
    purpose: a submit killed (SIGKILL included) closes that connection and a later submit of
    the name takes the lock over at once (``CLIENT LIST ID``) and resumes the job; a holder cut
    off from Redis loses it ``LOCK_TTL_MS`` after its last page and stops at its next page."""

    def __init__(self, client: redis.Redis, name: str):
        self.name = name
        self.key = f"veil:submitting:{name}"
        self._r = redis.Redis(connection_pool=client.connection_pool, single_connection_client=True)
        self._swap = self._r.register_script(_SWAP)
        self.token = ""

    def _id(self) -> str:
        return str(self._r.client_id())

    def _alive(self, holder: str) -> bool:
        try:
            return bool(holder.isdigit() and self._r.client_list(client_id=[holder]))
        except redis.ResponseError:
            return False

    def acquire(self) -> None:
        raw = self._r.get(self.key)
        holder = raw.decode() if isinstance(raw, bytes) else str(raw or "")
        mine = self._id()
        if holder and self._alive(holder):
            raise InputError(
                f"another veil submit --name {self.name!r} is running: only one may list a job; "
                "run this command again once it has ended (it then finds the job complete, or resumes it)"
            )
        if not self._swap(keys=[self.key], args=[holder, mine, LOCK_TTL_MS]):
            raise InputError(f"another veil submit --name {self.name!r} started at the same moment: this one stops")
        self.token = mine

    def keep(self) -> None:
        """Called once per page: the TTL renewed (and the id, should the connection have been
        remade); ``InputError`` when another submit has taken the lock over meanwhile."""
        mine = self._id()
        if not self._swap(keys=[self.key], args=[self.token, mine, LOCK_TTL_MS]):
            raise InputError(f"veil submit --name {self.name!r}: lost its lock to another submit; stopped")
        self.token = mine

    def release(self) -> None:
        try:
            if self.token:
                self._swap(keys=[self.key], args=[self.token, "", 0])
        finally:
            self._r.close()


def _nothing() -> None:
    pass


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
    # 1. Refuse what ``veil run`` refuses before anything is written: OUTPUT inside INPUT
    check_output_outside_input(source, out)
    listing = _storage_refusal("INPUT", source, lambda: open_listing(source, storage, page_size))
    #    and a job outside the allowed roots (issue 23: workers would refuse every key of it)
    check_job_roots(AllowedRoots.of(settings.input_roots, settings.output_roots), [listing.root, source], out)
    # 2. One submit per name at a time
    lock = SubmitLock(jobs.redis, name) if name else None
    if lock is None:
        return _submit(source, out, settings, storage, jobs, listing, _nothing, name, overwrite, feed)
    try:
        lock.acquire()
        return _submit(source, out, settings, storage, jobs, listing, lock.keep, name, overwrite, feed)
    finally:
        lock.release()


def _submit(
    source: str,
    out: str,
    settings: Settings,
    storage: Storage,
    jobs: JobStore,
    listing: Listing,
    tick: Callable[[], None],
    name: str | None,
    overwrite: bool,
    feed: bool,
) -> Submitted:
    # 3. Find the job of this name (resume), or the spec of a new one
    job_id = jobs.by_name(name) if name else None
    job = jobs.get(job_id) if job_id else None
    if job is not None and job.spec is not None:
        if job.listed:
            return Submitted(job.job_id, job.total, complete=True)
        if (job.spec.source, job.spec.output) != (source, out):
            raise InputError(f"job {name!r} lists {job.spec.source} into {job.spec.output}: use another --name")
        spec, resumed = job.spec, True
        cursor = str(jobs.redis.hget(job_key(spec.job_id), "cursor") or "")
    else:
        new_id = uuid.uuid4().hex[:12]
        spec = spec_for(new_id, name or new_id, listing.root, source, out, settings, overwrite=overwrite)
        resumed, cursor = False, ""
    # 4. Every output checked across the whole listing, and what is already done (one listing
    #    of the output's sidecars), before the job exists: a refused submit leaves no job
    listed = _storage_refusal("INPUT", source, lambda: check_whole_listing(listing, spec, tick))
    if listed == 0 and not resumed:
        raise InputError(f"INPUT: no images found in {source!r}")
    done = set() if spec.overwrite else _storage_refusal("OUTPUT", out, lambda: done_outputs(out, storage, tick))
    if not resumed and not jobs.create(spec.job_id, name=spec.name, input=source, output=out, spec=spec):
        raise InputError(f"job {spec.name!r} was created by another veil submit meanwhile: use another --name")
    pushed, feeder = False, None
    try:
        feeder = _feeder(settings, jobs) if feed else None
        # 5. Page by page: skip repeats and done keys, push with the cursor, top the queue up
        count = repeats = skipped = 0
        unsafe: list[str] = []
        for page in planned_pages(listing, spec, cursor):
            tick()
            for item, exc in page.refused:
                jobs.record(spec.job_id, item.uri, "failed", f"{exc.reason}: {exc}")
                unsafe.append(item.uri)
            keys = [i.key for i, _ in page.tasks]
            if done:
                keys = [k for k in keys if digest(output_name(k)) not in done]
            page_skipped = len(page.tasks) - len(keys)
            jobs.add_page(spec.job_id, keys, page.cursor, skipped=page_skipped, failed=len(page.refused))
            pushed = True
            count += len(page.tasks)
            repeats += page.repeats
            skipped += page_skipped
            if feeder is not None:
                feeder.feed_once()
        if not resumed and count == 0 and not unsafe:  # the listing emptied since step 4
            raise InputError(f"INPUT: no images found in {source!r}")
    except BaseException as exc:
        # a refusal leaves no job behind; nor does a failure before the first page (a job that
        # has pages stays, to be resumed by the same command)
        if not resumed and (isinstance(exc, InputError) or not pushed):
            jobs.delete(spec.job_id)
        raise
    jobs.end_listing(spec.job_id)  # every key skipped: it ends now; a CPU worker's finalize writes its files
    if feeder is not None:
        feeder.feed_once()
    return Submitted(spec.job_id, count, repeats, tuple(unsafe), skipped, resumed)


def _storage_refusal(what: str, uri: str, fn: Callable[[], T]) -> T:
    """``fn()``; a storage refusal (no such bucket, access denied) is the operator's to fix: an
    ``InputError`` naming INPUT or OUTPUT (exit 2), before any job exists."""
    try:
        return fn()
    except StorageRefusedError as exc:
        raise InputError(f"{what} {uri!r} cannot be read: {exc.reason}: {exc}") from None


def _feeder(settings: Settings, jobs: JobStore):  # noqa: ANN202 - workers.feeder.Feeder, imported late
    from workers.feeder import Feeder  # the Celery app only: tasks are sent by name

    return Feeder(settings, jobs)
