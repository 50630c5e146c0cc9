"""The feeder: moves keys from the jobs' pending lists in Redis into the Celery ``veil.cpu``
queue as ImageTasks, keeping what sits in ``veil.cpu`` + ``veil.gpu`` + unacknowledged under
``VEIL_QUEUE_WINDOW``, and sharing that room ROUND ROBIN across active jobs.

Why a window: Redis then holds one relative key per waiting key (tens of bytes) instead of a
~1.4 kB Celery message, whatever the job's size, and the GPU queue cannot grow to millions of
PromptTasks. Why round robin: a job submitted after a 1M-key one gets an equal share of each
top-up, so its keys wait behind at most a window, not behind the other job.

Where it runs: a thread in every CPU worker's main process (``start_thread``); a Redis lock
(``veil:feed:lock``) lets one feed at a time. ``veil submit`` also tops the window up after
each page it lists, so ``veil.cpu`` grows (and KEDA scales the CPU tier) before any worker runs.

A key leaves its pending list only after its message is sent (``JobStore.peek`` / ``taken``):
a feeder killed in between sends it again; the sidecar check makes that harmless.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import uuid

import redis

from shared.imageio import output_name
from shared.jobs import JobStore, queue_depth
from shared.messages import ImageTask, JobSpec
from shared.results import seed_for
from shared.settings import Settings
from shared.storage import join_uri, safe_join
from workers.celery_app import CPU_TASK, app

log = logging.getLogger(__name__)

LOCK = "veil:feed:lock"
TURN = "veil:feed:turn"
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def task_for(spec: JobSpec, key: str, *, overwrite: bool = False) -> ImageTask:
    """A key's ImageTask from its job's spec and its relative key (the one place they meet).
    A key that would leave the output root raises ``UnsafeKeyError`` (``veil submit`` refuses
    those before they reach a pending list)."""
    return ImageTask(
        job_id=spec.job_id,
        input_uri=join_uri(spec.input, key),
        output_uri=safe_join(spec.output, output_name(key)),
        seed=seed_for(spec.seed, key),
        overwrite=overwrite or spec.overwrite,
        method=spec.method,
        mode=spec.mode,
        guard=spec.guard,
    )


class Feeder:
    def __init__(self, settings: Settings, jobs: JobStore | None = None):
        self.settings = settings
        self.jobs = jobs or JobStore.from_url(settings.jobs_url, settings.job_ttl_s)
        self._specs: dict[str, JobSpec | None] = {}
        self._token = uuid.uuid4().hex

    def feed_once(self) -> int:
        """One top-up of the window; returns the number of keys sent (0 when another process
        holds the lock, the window is full, or nothing is pending)."""
        r = self.jobs.redis
        if not r.set(LOCK, self._token, nx=True, px=30_000):
            return 0
        try:
            room = self.settings.queue_window - sum(queue_depth(r, self.settings).values())
            return self._fill(room) if room > 0 else 0
        finally:
            r.eval(_RELEASE, 1, LOCK, self._token)

    def _fill(self, room: int) -> int:
        active = self.jobs.active()
        if not active:
            return 0
        turn = int(self.jobs.redis.incr(TURN)) % len(active)  # who goes first rotates per pass
        active = active[turn:] + active[:turn]
        sent = 0
        with app.producer_or_acquire() as producer:
            while room > 0 and active:
                share = max(1, room // len(active))
                for job_id in list(active):
                    n = self._feed_job(job_id, min(share, room), producer)
                    if n == 0:
                        active.remove(job_id)
                    sent += n
                    room -= n
                    if room <= 0:
                        break
        return sent

    def _feed_job(self, job_id: str, n: int, producer) -> int:  # noqa: ANN001 - a kombu Producer
        spec = self._spec(job_id)
        keys, redo = self.jobs.peek(job_id, n) if spec is not None else ([], False)
        if not keys:
            self.jobs.deactivate_if_drained(job_id)
            return 0
        for key in keys:
            try:
                task = task_for(spec, key, overwrite=redo)  # type: ignore[arg-type]  # spec checked above
            except Exception:  # noqa: BLE001 - checked at submit; never let one key stop the feed
                log.exception("job %s: key %r cannot be fed; dropped", job_id, key)
                continue
            app.send_task(
                CPU_TASK, args=[task.model_dump(mode="json")], queue=self.settings.cpu_queue, producer=producer
            )
        self.jobs.taken(job_id, len(keys), redo)
        return len(keys)

    def _spec(self, job_id: str) -> JobSpec | None:
        if job_id not in self._specs:
            self._specs[job_id] = self.jobs.spec(job_id)
        return self._specs[job_id]

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


def drop_job_messages(r: redis.Redis, queue: str, job_id: str) -> int:
    """Removes one job's messages from a Celery queue list (``veil cancel``): each message is
    read (the window bounds how many there are) and the job's are removed by value, so a
    worker taking one at the same moment is harmless. Messages a worker already holds are
    dropped by the worker itself (``JobStore.is_cancelled``)."""
    removed = 0
    for raw in r.lrange(queue, 0, -1):
        try:
            args = json.loads(base64.b64decode(json.loads(raw)["body"]))[0]
            ours = bool(args) and isinstance(args[0], dict) and args[0].get("job_id") == job_id
        except (ValueError, KeyError, TypeError, IndexError):
            continue  # not a message of ours: left alone
        if ours:
            removed += int(r.lrem(queue, 1, raw))  # type: ignore[arg-type]
    return removed


def start_thread(settings: Settings) -> threading.Event:
    """The feeder as a daemon thread of this process; set the returned event to stop it."""
    stop = threading.Event()
    threading.Thread(target=Feeder(settings).run, args=(stop,), name="veil-feeder", daemon=True).start()
    return stop
