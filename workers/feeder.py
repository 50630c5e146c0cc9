"""The feeder: moves keys from the jobs' pending lists in Redis into the Celery ``veil.cpu``
queue as ImageTasks, keeping what sits in ``veil.cpu`` + ``veil.gpu`` + unacknowledged under a
window, and sharing that window FAIRLY across active jobs.

The window (``window``): ``VEIL_QUEUE_WINDOW_S`` seconds of the jobs' measured finish rate, at
least ``MIN_WINDOW`` keys and twice what the workers hold, at most ``VEIL_QUEUE_WINDOW`` keys.
Redis then holds one relative key per waiting key (tens of bytes) instead of a ~1.4 kB Celery
message, whatever the job's size, and what is queued drains in about ``VEIL_QUEUE_WINDOW_S``.

The share (``fair_shares``): every pass, max-min fair. Each job's keys already in the window
count against it; the room goes to the jobs with the fewest first, up to a common level, and
what a job cannot use (nothing more waiting) goes to the others. A small job submitted after a
1M-key one gets the room as it frees, so its first key waits behind at most one window.

Publishing (``_Chunk``, ``_COMMIT``): the Celery messages, byte for byte what ``send_task``
writes through kombu's Redis transport (``workers.transport.CeleryMessages``: protocol 2,
priority 0, so the list named like the queue), are moved ``CHUNK`` at a time by ONE Lua call
that checks the feeder still holds its lock and that the pending list's head is still the chunk
it read, LPUSHes the chunk's messages, LTRIMs the chunk off the pending list and renews the
lock. A feeder killed at any moment sends no key twice and loses none; a Lua call that the
client re-sends after a lost reply finds another head and does nothing; a feeder that lost its
lock stops its fill.

A key ``task_for`` refuses (an output that now leaves OUTPUT through a symlink, a name too
long) is counted failed with its reason before its chunk is committed (``JobStore.record_failed``,
idempotent), so its job still ends. A job whose spec is missing or unreadable fails loudly:
every key it has waiting is counted failed (``job_spec_missing``), chunk by chunk.

Where it runs: a thread in every CPU worker's main process (``start_thread``); a Redis lock
(``veil:feed:lock``) lets one feed at a time. ``veil submit`` also tops the window up after
each page it lists, so ``veil.cpu`` grows (and KEDA scales the CPU tier) before any worker runs.
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
from dataclasses import dataclass, field

from shared.errors import NameTooLongError
from shared.imageio import output_name
from shared.jobs import FeedLoad, JobStore, job_key
from shared.messages import ImageTask, JobSpec
from shared.results import seed_for
from shared.settings import Settings
from shared.storage import is_local, join_uri, safe_join
from workers.celery_app import CPU_TASK, app
from workers.transport import CeleryMessages, queue_depth

log = logging.getLogger(__name__)

LOCK = "veil:feed:lock"
TURN = "veil:feed:turn"
LOCK_TTL_MS = 10_000  # renewed by every chunk's commit: a dead feeder's lock frees within 10 s
CHUNK = 500  # keys per Lua call (one round trip, ~0.7 MB of messages)
MIN_WINDOW = 32  # keys: the window before any rate is measured
RATE_S = 30  # the finish rate the window is sized from: over the last 30 whole seconds
NAME_MAX = 255  # bytes of one path segment on a local file system (the sidecar's included)
S3_KEY_MAX = 1024  # bytes of an object key
SIDECAR = ".json"
SPEC_MISSING = "job_spec_missing"

_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"

# KEYS: the lock, the job's list (pending or redo), the queue. ARGV: the lock token, the lock's
# TTL (ms), n, the n keys read from the list's head, then the messages to push (<= n).
# Returns -1: the lock is not ours (stop); 0: the head is not these keys (nothing done); 1: done.
_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local n = tonumber(ARGV[3])
local head = redis.call('LRANGE', KEYS[2], 0, n - 1)
if #head ~= n then return 0 end
for i = 1, n do
  if head[i] ~= ARGV[3 + i] then return 0 end
end
for i = 4 + n, #ARGV, 200 do
  redis.call('LPUSH', KEYS[3], unpack(ARGV, i, math.min(i + 199, #ARGV)))
end
redis.call('LTRIM', KEYS[2], n, -1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


class LockLost(Exception):
    """Another feeder holds the lock now (this one stalled past its TTL): stop filling."""


def _check_length(output_uri: str) -> None:
    """The output and its sidecar must be nameable: each segment of a local path at most
    ``NAME_MAX`` bytes, an object key at most ``S3_KEY_MAX`` bytes."""
    if is_local(output_uri):
        for part in output_uri.split("/"):
            size = len((part + SIDECAR).encode())
            if part and size > NAME_MAX:
                raise NameTooLongError(
                    f"output name {part[:40]!r}... is {size} bytes with its sidecar, over {NAME_MAX}"
                )
    else:
        key = output_uri.split("://", 1)[-1].split("/", 1)[-1]
        size = len((key + SIDECAR).encode())
        if size > S3_KEY_MAX:
            raise NameTooLongError(f"output key {key[:40]!r}... is {size} bytes with its sidecar, over {S3_KEY_MAX}")


def task_for(spec: JobSpec, key: str, *, overwrite: bool = False) -> ImageTask:
    """A key's ImageTask from its job's spec and its relative key (the one place they meet).
    A key that would leave the output root (a symlink planted since ``veil submit``), or whose
    output name is too long to write (``NameTooLongError``, as the storage would say on the write,
    but before any analysis is spent on the key), raises a ``PermanentError``."""
    output_uri = safe_join(spec.output, output_name(key))
    _check_length(output_uri)
    return ImageTask(
        job_id=spec.job_id,
        input_uri=join_uri(spec.input, key),
        output_uri=output_uri,
        seed=seed_for(spec.seed, key),
        overwrite=overwrite or spec.overwrite,
        method=spec.method,
        mode=spec.mode,
        guard=spec.guard,
    )


def fair_shares(loads: list[FeedLoad], room: int, first: int = 0) -> dict[str, int]:
    """Max-min fair split of ``room`` keys: job j may be given g_j <= waiting_j keys, and the
    level ``in_window_j + g_j`` is raised equally for all, the emptiest first; room a job
    cannot use goes to the others (nothing left idle while keys wait). The remainder of an
    uneven split goes one key each from job ``first`` on (rotated per pass)."""
    loads = [w for w in loads if w.waiting > 0]
    if room <= 0 or not loads:
        return {}

    def given(level: int) -> int:
        return sum(min(w.waiting, max(0, level - w.in_window)) for w in loads)

    lo, hi = 0, max(w.in_window + w.waiting for w in loads)
    while lo < hi:  # the highest level whose gifts fit in the room
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if given(mid) <= room else (lo, mid - 1)
    shares = {w.job_id: min(w.waiting, max(0, lo - w.in_window)) for w in loads}
    left = room - sum(shares.values())
    order = loads[first % len(loads) :] + loads[: first % len(loads)]
    for w in order:
        if left <= 0:
            break
        if shares[w.job_id] < w.waiting and w.in_window + shares[w.job_id] <= lo:
            shares[w.job_id] += 1
            left -= 1
    return shares


@dataclass
class _Chunk:
    """One chunk of a job's list: its keys, their messages, the keys refused and why."""

    keys: list[str]
    redo: bool
    messages: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (input URI, reason: message)


class Feeder:
    def __init__(self, settings: Settings, jobs: JobStore | None = None):
        self.settings = settings
        self.jobs = jobs or JobStore.from_url(settings.jobs_url, settings.job_ttl_s, settings)
        self._specs: dict[str, JobSpec | str] = {}  # job id -> its spec, or why it has none
        self._token = uuid.uuid4().hex
        self._commit = self.jobs.redis.register_script(_COMMIT)
        self._messages: CeleryMessages | None = None

    def feed_once(self) -> int:
        """One top-up of the window; returns the number of keys taken from pending lists (sent,
        or counted failed), 0 when another process holds the lock, the window is full, or
        nothing is pending."""
        r = self.jobs.redis
        if not r.set(LOCK, self._token, nx=True, px=LOCK_TTL_MS):
            return 0
        try:
            return self._fill()
        except LockLost:
            log.warning("feeder: lost the lock (stalled over %d ms): this fill stops", LOCK_TTL_MS)
            return 0
        finally:
            r.eval(_RELEASE, 1, LOCK, self._token)

    def window(self, loads: list[FeedLoad], depth: dict[str, int]) -> int:
        """Keys allowed in veil.cpu + veil.gpu + unacknowledged now."""
        if not self.settings.queue_window_s:
            return self.settings.queue_window
        measured = math.ceil(sum(w.rate for w in loads) * self.settings.queue_window_s)
        return min(self.settings.queue_window, max(MIN_WINDOW, 2 * depth["unacked"], measured))

    def _fill(self) -> int:
        active = self.jobs.active()
        if not active:
            return 0
        loads = self.jobs.loads(active, rate_s=RATE_S)
        moved = 0
        for w in loads:  # jobs that cannot be fed are dealt with first, whatever the window
            if not w.exists:
                log.error("job %s: its record is gone; its %d waiting key(s) are dropped", w.job_id, w.waiting)
                self.jobs.forget(w.job_id)
            elif w.waiting and isinstance(self._spec(w.job_id), str):
                moved += self._fail_job(w.job_id)
            elif not w.waiting:
                self.jobs.deactivate_if_drained(w.job_id)
        loads = [w for w in loads if w.exists and w.waiting and not isinstance(self._spec(w.job_id), str)]
        depth = queue_depth(self.jobs.redis, self.settings)
        room = self.window(loads, depth) - sum(depth.values())
        if room <= 0 or not loads:
            return moved
        turn = int(self.jobs.redis.incr(TURN))  # who gets an uneven split's remainder rotates per pass
        for job_id, n in fair_shares(loads, room, turn).items():
            if n > 0:
                moved += self._feed_job(job_id, n)
        return moved

    def _feed_job(self, job_id: str, n: int) -> int:
        spec = self._spec(job_id)
        assert isinstance(spec, JobSpec)  # jobs without one are failed in _fill
        moved = 0
        while moved < n:
            keys, redo = self.jobs.peek(job_id, min(CHUNK, n - moved))
            if not keys:
                break
            chunk = _Chunk(keys, redo)
            for key in keys:
                self._add(chunk, spec, key)
            if not self._move(job_id, chunk):
                break
            moved += len(keys)
        return moved

    def _add(self, chunk: _Chunk, spec: JobSpec, key: str) -> None:
        try:
            task = task_for(spec, key, overwrite=chunk.redo)
        except Exception as exc:  # noqa: BLE001 - one key never stops the feed: it is counted failed
            reason = getattr(exc, "reason", "unfeedable")
            chunk.refused.append((_input_uri(spec.input, key), f"{reason}: {exc}"))
            log.warning("job %s: key %r refused: %s: %s", spec.job_id, key, reason, exc)
            return
        chunk.messages.append(self._builder().build(task))

    def _move(self, job_id: str, chunk: _Chunk) -> bool:
        """The chunk's refused keys counted failed, then its messages pushed and its keys
        trimmed in one Lua call. False when the list's head changed (cancelled meanwhile)."""
        self.jobs.record_failed(job_id, chunk.refused)
        keys = [LOCK, job_key(job_id, "redo" if chunk.redo else "pending"), self._builder().redis_list]
        args: list[str | int] = [self._token, LOCK_TTL_MS, len(chunk.keys), *chunk.keys, *chunk.messages]
        result = int(self._commit(keys=keys, args=args))
        if result < 0:
            raise LockLost
        return result == 1

    def _fail_job(self, job_id: str) -> int:
        """Every waiting key of a job without a usable spec counted failed, chunk by chunk."""
        why = self._specs[job_id]
        root = str(self.jobs.redis.hget(job_key(job_id), "input") or "")
        log.error("job %s: %s: each of its waiting keys is counted failed", job_id, why)
        moved = 0
        while True:
            keys, redo = self.jobs.peek(job_id, CHUNK)
            if not keys:
                return moved
            chunk = _Chunk(keys, redo, refused=[(_input_uri(root, k), f"{SPEC_MISSING}: {why}") for k in keys])
            if not self._move(job_id, chunk):
                return moved
            moved += len(keys)

    def _spec(self, job_id: str) -> JobSpec | str:
        if job_id not in self._specs:
            try:
                spec = self.jobs.spec(job_id)
                self._specs[job_id] = spec if spec is not None else "the job's spec is missing"
            except ValueError as exc:  # JSON or validation (pydantic's ValidationError)
                self._specs[job_id] = f"the job's spec is unreadable: {type(exc).__name__}: {str(exc)[:200]}"
        return self._specs[job_id]

    def _builder(self) -> CeleryMessages:
        if self._messages is None:
            self._messages = CeleryMessages(app, CPU_TASK, self.settings.cpu_queue)
        return self._messages

    def run(self, stop: threading.Event) -> None:
        """Feeds every ``VEIL_FEED_INTERVAL_S`` until ``stop``; at once again while it fills."""
        while not stop.is_set():
            try:
                sent = self.feed_once()
            except Exception as exc:  # noqa: BLE001 - Redis restarting: try again next pass
                log.warning("feeder: %s: %s", type(exc).__name__, exc)
                sent = 0
            if not sent:
                stop.wait(self.settings.feed_interval_s)


def _input_uri(root: str, key: str) -> str:
    try:
        return join_uri(root, key) if root else key
    except Exception:  # noqa: BLE001 - only a name for the failure list
        return key


def start_thread(settings: Settings) -> threading.Event:
    """The feeder as a daemon thread of this process; set the returned event to stop it."""
    stop = threading.Event()
    threading.Thread(target=Feeder(settings).run, args=(stop,), name="veil-feeder", daemon=True).start()
    return stop
