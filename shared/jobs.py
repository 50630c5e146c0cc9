"""Jobs in Redis: each job's spec (stored once), its pending keys, counters, failures and state.
Results live in object storage, so losing Redis never loses a finished image or sidecar; it
only loses progress counts and the keys not yet fed to the queue (``veil submit`` again with
the same ``--name`` lists them again and skips every key whose sidecar exists).

Keys, for job ``J`` (all expire ``VEIL_JOB_TTL_S`` after the job ends):

=========================  ====================================================================
``veil:jobs``              sorted set: job id -> created (``veil jobs``)
``veil:jobs:active``       sorted set: jobs with keys waiting to be fed (the feeder's round robin)
``veil:jobs:finalize``     sorted set: job id -> when its finalize is due (an ended job's files to
                           write; re-scored to now + lease when a finalize task is sent for it)
``veil:jobname:NAME``      the id of the job named NAME (a re-run submit resumes it)
``veil:submitting:NAME``   the Redis client id of the ``veil submit --name NAME`` listing it now
                           (``orchestrator.submit.SubmitLock``; 120 s TTL renewed per page)
``veil:job:J``             hash: name, input, output, spec (JobSpec JSON), state, total, cursor,
                           listed, created, ended, finalized, and the counters done / no_face /
                           failed / skipped
``veil:job:J:pending``     list of relative keys not yet fed to ``veil.cpu`` (~the key's bytes each)
``veil:job:J:redo``        list of relative keys to redo with overwrite (``veil retry``)
``veil:job:J:keys``        set of 8-byte digests of the finished input URIs: a redelivered key is
                           counted once (digests, not URIs: ~60 B per key whatever its length)
``veil:job:J:failed``      hash: input URI -> reason, for each key that failed (``--failed``)
``veil:job:J:rate``        hash: unix second -> keys finished in it (the last minutes only)
=========================  ====================================================================

States: ``submitting`` (listing in progress), ``running``, ``finalizing`` (every listed key
counted; its ``_veil/JOB/`` files not yet written), ``finished`` (files written), ``cancelled``
(a ``finalized`` field once its files are written). A cancelled job's keys that are neither
finished nor skipped count as cancelled; a message of it that a worker receives is dropped
(``is_cancelled``). An ended or cancelled job joins ``veil:jobs:finalize`` in the same atomic
step: its finalize (``workers/finalize.py``) is then due until one completes.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass

import redis

from shared import redisconn
from shared.errors import BrokerError
from shared.messages import JobSpec, Status
from shared.settings import Settings

STATUSES = tuple(s.value for s in Status)
SUBMITTING, RUNNING, FINISHED, CANCELLED = "submitting", "running", "finished", "cancelled"
FINALIZING = "finalizing"
JOBS, ACTIVE, FINALIZE = "veil:jobs", "veil:jobs:active", "veil:jobs:finalize"
RATE_WINDOW_S = 60


def job_key(job_id: str, part: str = "") -> str:
    return f"veil:job:{job_id}" + (f":{part}" if part else "")


def name_key(name: str) -> str:
    return f"veil:jobname:{name}"


def digest(input_uri: str) -> bytes:
    return hashlib.blake2b(input_uri.encode(), digest_size=8).digest()


def _all_keys(job_id: str) -> list[str]:
    return [job_key(job_id)] + [job_key(job_id, p) for p in ("pending", "redo", "keys", "failed", "rate")]


def _record_keys(job_id: str) -> list[str]:
    """A job's keys in the order ``_RECORD_ONE`` reads them: hash, keys, failed, rate, pending, redo."""
    return [job_key(job_id)] + [job_key(job_id, p) for p in ("keys", "failed", "rate", "pending", "redo")]


# Shared by record and end_listing: a job whose listing is complete and whose keys are all
# counted ends, once: it goes to ``finalizing`` and joins the finalize set (due now); its keys
# then expire after the TTL.
_MAYBE_END = """
local function maybe_end(job, keys, now, ttl)
  local h = redis.call('HMGET', job, 'state', 'listed', 'total', 'done', 'no_face', 'failed', 'skipped')
  if h[1] ~= 'running' or h[2] ~= '1' then return 0 end
  local seen = 0
  for i = 4, 7 do seen = seen + tonumber(h[i] or '0') end
  if seen < tonumber(h[3] or '0') then return 0 end
  redis.call('HSET', job, 'state', 'finalizing', 'ended', now)
  redis.call('ZREM', 'veil:jobs:active', string.sub(job, 10))
  redis.call('ZADD', 'veil:jobs:finalize', now, string.sub(job, 10))
  for _, k in ipairs(keys) do redis.call('EXPIRE', k, ttl) end
  local name = redis.call('HGET', job, 'name')
  if name then redis.call('EXPIRE', 'veil:jobname:' .. name, ttl) end
  return 1
end
"""

# Count a finished key once (its digest joins the job's set), keep a failure's reason, add it to
# the per-second rate, and end the job when every listed key is counted: one Lua call runs whole,
# so a Redis cut can never leave a key marked counted without its count. A job whose record is
# gone (expired) is not recreated. ``k``: the job's hash, keys, failed, rate, pending, redo.
_RECORD_ONE = """
local function record_one(k, digest, status, input, reason, sec, now, ttl)
  local job = k[1]
  if redis.call('EXISTS', job) == 0 then return 0 end
  if redis.call('SADD', k[2], digest) == 0 then return 0 end
  redis.call('HINCRBY', job, status, 1)
  if status == 'failed' then redis.call('HSET', k[3], input, reason) end
  redis.call('HINCRBY', k[4], sec, 1)
  if redis.call('HLEN', k[4]) > 300 then
    local old = tonumber(sec) - 120
    for _, s in ipairs(redis.call('HKEYS', k[4])) do
      if tonumber(s) < old then redis.call('HDEL', k[4], s) end
    end
  end
  return 1 + maybe_end(job, k, now, ttl)
end
"""

_RECORD = (
    _MAYBE_END
    + _RECORD_ONE
    + """
return record_one({unpack(KEYS, 1, 6)}, ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7]))
"""
)

# Many keys (a GPU batch) in one call, one round trip: KEYS holds 6 keys per item (as
# ``_RECORD``), ARGV the second, now and TTL, then 4 per item (digest, status, input, reason).
# Not a transaction across items: each key is counted whole, as one ``_RECORD`` would.
_RECORD_MANY = (
    _MAYBE_END
    + _RECORD_ONE
    + """
local out = {}
for i = 0, #KEYS / 6 - 1 do
  local a = 4 + 4 * i
  out[i + 1] = record_one({unpack(KEYS, 6 * i + 1, 6 * i + 6)}, ARGV[a], ARGV[a + 1], ARGV[a + 2],
                          ARGV[a + 3], ARGV[1], ARGV[2], tonumber(ARGV[3]))
end
return out
"""
)

# Cancel, as one transition: a job that ended meanwhile (finished, or finalizing: its end is
# being written) is not overwritten. The cancelled job is queued for finalizing (its summary).
# KEYS: the job's 6 keys (hash first), ARGV: job id, now, TTL.
_CANCEL = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'finished' or state == 'finalizing' or state == 'cancelled' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'ended', ARGV[2], 'listed', 1)
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', 'veil:jobs:active', ARGV[1])
for _, k in ipairs(KEYS) do redis.call('EXPIRE', k, tonumber(ARGV[3])) end
local name = redis.call('HGET', KEYS[1], 'name')
if name then redis.call('EXPIRE', 'veil:jobname:' .. name, tonumber(ARGV[3])) end
redis.call('ZADD', 'veil:jobs:finalize', ARGV[2], ARGV[1])
return 1
"""

# The listing is complete: mark it, and end the job at once if nothing is left to count.
_END_LISTING = (
    _MAYBE_END
    + """
redis.call('HSET', KEYS[1], 'listed', '1')
if redis.call('HGET', KEYS[1], 'state') == 'submitting' then redis.call('HSET', KEYS[1], 'state', 'running') end
return maybe_end(KEYS[1], KEYS, ARGV[1], tonumber(ARGV[2]))
"""
)

# The feeder's only write to a job: a job with nothing left to feed and a complete listing
# leaves the round robin (a job still listing stays: more pages are coming).
_DEACTIVATE = """
if redis.call('LLEN', KEYS[1]) == 0 and redis.call('LLEN', KEYS[2]) == 0
   and redis.call('HGET', KEYS[3], 'listed') == '1' then
  redis.call('ZREM', 'veil:jobs:active', ARGV[1])
  return 1
end
return 0
"""


# A job made whole or not at all; with a spec it takes its name (SET NX in effect: a name held
# by another job that still exists is refused, one whose job is gone is taken over).
_CREATE = """
local job, name = KEYS[1], KEYS[2]
local id, now, named = ARGV[1], ARGV[2], ARGV[3] == '1'
if named then
  local holder = redis.call('GET', name)
  if holder and holder ~= id and redis.call('EXISTS', 'veil:job:' .. holder) == 1 then return 0 end
  redis.call('SET', name, id)
end
redis.call('HSET', job, unpack(ARGV, 4))
redis.call('ZADD', 'veil:jobs', now, id)
if named then redis.call('ZADD', 'veil:jobs:active', now, id) end
return 1
"""

# The finalize dispatcher's take: up to ARGV[3] due ids (score <= now), each re-scored to
# now + lease in the same call, so a lost message or a dead finalizer makes it due again.
_TAKE_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""

# A finalize completed for the end it read (``ended`` unchanged: not retried and re-ended since):
# ``finalizing`` -> ``finished``, a ``finalized`` time, out of the finalize set. A job whose
# record is gone leaves the set; one that ended again stays in it for that end's finalize.
# ARGV[4]: why its files cannot be written (a permanent storage refusal), or empty.
_FINALIZED = """
local h = redis.call('HMGET', KEYS[1], 'state', 'ended')
if not h[1] then redis.call('ZREM', KEYS[2], ARGV[1]) return 0 end
if (h[2] or '') ~= ARGV[2] then return 0 end
if h[1] ~= 'finalizing' and h[1] ~= 'finished' and h[1] ~= 'cancelled' then return 0 end
if h[1] == 'finalizing' then redis.call('HSET', KEYS[1], 'state', 'finished') end
redis.call('HSET', KEYS[1], 'finalized', ARGV[3])
if (ARGV[4] or '') ~= '' then redis.call('HSET', KEYS[1], 'finalize_error', ARGV[4])
else redis.call('HDEL', KEYS[1], 'finalize_error') end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class FeedLoad:
    """What the feeder needs of one active job to share the window (``JobStore.loads``)."""

    job_id: str
    exists: bool
    in_window: int  # fed, not yet counted: in veil.cpu, veil.gpu or held by a worker
    waiting: int  # in its pending and redo lists
    rate: float  # keys finished per second, lately


#: finish bursts the rate window spans at least (``JobStore.pace``)
PACE_EVENTS = 4


@dataclass(frozen=True)
class Pace:
    """How fast a job finishes keys lately (``JobStore.pace``)."""

    rate: float  # keys finished per second over the window
    window_s: int
    since_last_s: float | None  # since the last second in which a key finished (None: none yet)


@dataclass
class JobInfo:
    job_id: str
    name: str
    input: str
    output: str
    total: int
    created: float
    counts: dict[str, int]  # done / no_face / failed
    state: str = RUNNING
    skipped: int = 0  # already done before this job (a sidecar in the output listing)
    pending: int = 0  # not yet fed to the queue
    listed: bool = True
    ended: float | None = None
    spec: JobSpec | None = None
    finalized: float | None = None  # when its _veil/JOB/ files were last written
    finalize_error: str | None = None  # why they cannot be written (no such bucket, access denied)

    @property
    def counted(self) -> int:
        return sum(self.counts.values()) + self.skipped

    @property
    def cancelled(self) -> int:
        """A cancelled job's keys that will never be done (in-flight ones may still finish)."""
        return max(0, self.total - self.counted) if self.state == CANCELLED else 0

    @property
    def finished(self) -> int:
        return self.counted + self.cancelled

    @property
    def in_flight(self) -> int:
        return max(0, self.total - self.counted - self.pending) if self.state != CANCELLED else 0


class JobStore:
    def __init__(self, client: redis.Redis, ttl_s: int = 7 * 86400):
        self._r = client
        self.ttl_s = ttl_s
        self._record = client.register_script(_RECORD)
        self._end_listing = client.register_script(_END_LISTING)
        self._deactivate = client.register_script(_DEACTIVATE)
        self._create = client.register_script(_CREATE)
        self._record_many = client.register_script(_RECORD_MANY)
        self._cancel = client.register_script(_CANCEL)
        self._take_due = client.register_script(_TAKE_DUE)
        self._finalized = client.register_script(_FINALIZED)
        self._states: dict[str, tuple[float, str | None]] = {}  # job id -> (read at, state)

    @classmethod
    def from_url(cls, url: str, ttl_s: int = 7 * 86400, settings: Settings | None = None) -> JobStore:
        """A store on ``url`` whose connections have ``settings``' socket bounds (the defaults
        without): none waits forever on a half-open connection (``shared/redisconn.py``)."""
        return cls(redisconn.client(url, settings, decode_responses=True), ttl_s)

    @property
    def redis(self) -> redis.Redis:
        return self._r

    # -- creating and listing ------------------------------------------------------------
    def create(self, job_id: str, *, name: str, input: str, output: str, spec: JobSpec | None = None) -> bool:
        """A job whose listing is already complete (counters only), or, with ``spec``, one that
        ``veil submit`` is about to list (state ``submitting`` until ``end_listing``) and that
        takes the name ``name``. One Lua call: the name is taken and the job made together, or
        neither, so of two submits of one name that get here at once exactly one makes a job.
        Returns False (nothing written) when the name belongs to another job that exists."""
        now = time.time()
        mapping: dict[str, str | float | int] = {"name": name, "input": input, "output": output, "total": 0}
        mapping |= {"created": now, "state": SUBMITTING if spec else RUNNING, "listed": 0 if spec else 1}
        if spec is not None:
            mapping["spec"] = spec.model_dump_json()
        fields = [str(x) for kv in mapping.items() for x in kv]
        keys = [job_key(job_id), name_key(name)]
        return bool(self._create(keys=keys, args=[job_id, now, "1" if spec is not None else "0", *fields]))

    def by_name(self, name: str) -> str | None:
        return self._r.get(name_key(name))  # type: ignore[return-value]  # decode_responses

    def add_total(self, job_id: str, n: int) -> None:
        self._r.hincrby(job_key(job_id), "total", n)

    def add_page(self, job_id: str, keys: list[str], cursor: str, skipped: int = 0, failed: int = 0) -> None:
        """One listing page, in one MULTI: its keys queued, the total counted and the resume
        cursor moved, so a submit killed at any moment resumes after the last whole page."""
        pipe = self._r.pipeline(transaction=True)
        if keys:
            pipe.rpush(job_key(job_id, "pending"), *keys)
        pipe.hincrby(job_key(job_id), "total", len(keys) + skipped + failed)  # failed: counted by record
        if skipped:
            pipe.hincrby(job_key(job_id), "skipped", skipped)
        pipe.hset(job_key(job_id), "cursor", cursor)
        pipe.execute()

    def add_redo(self, job_id: str, keys: list[str]) -> None:
        """Keys of a job re-created from its summary (``veil retry`` after the record expired)."""
        pipe = self._r.pipeline(transaction=True)
        pipe.rpush(job_key(job_id, "redo"), *keys)
        pipe.hincrby(job_key(job_id), "total", len(keys))
        pipe.execute()

    def end_listing(self, job_id: str) -> bool:
        """Returns True when the job ended right away (every key skipped)."""
        return bool(self._end_listing(keys=_all_keys(job_id), args=[time.time(), self.ttl_s]))

    # -- counting ------------------------------------------------------------------------
    def record(self, job_id: str, input_uri: str, status: str, reason: str | None = None) -> bool:
        """Counts a finished key once; returns False when it was already counted (or the job's
        record is gone). Redis unreachable: ``BrokerError`` (transient)."""
        return self.record_ending(job_id, input_uri, status, reason) > 0

    def record_ending(self, job_id: str, input_uri: str, status: str, reason: str | None = None) -> int:
        """0: already counted (or no such job); 1: counted; 2: counted, and it ended the job."""
        now = time.time()
        keys = _record_keys(job_id)
        args: list[bytes | str | float] = [
            digest(input_uri),
            status,
            input_uri,
            reason or "",
            int(now),
            now,
            self.ttl_s,
        ]
        try:
            return int(self._record(keys=keys, args=args))
        except redis.RedisError as exc:
            raise BrokerError(f"job counters: {type(exc).__name__}: {exc}") from exc

    def record_many(self, items: list[tuple[str, str, str, str | None]]) -> list[int]:
        """``record_ending`` for each (job id, input URI, status, reason), in one Redis call (one
        round trip, one Lua script run whole per key): each key's 0 / 1 / 2, in order. Redis
        unreachable: ``BrokerError``, and then no key may be taken as counted."""
        if not items:
            return []
        now = time.time()
        keys: list[str] = []
        args: list[bytes | str | float] = [int(now), now, self.ttl_s]
        for job_id, input_uri, status, reason in items:
            keys += _record_keys(job_id)
            args += [digest(input_uri), status, input_uri, reason or ""]
        try:
            return [int(n) for n in self._record_many(keys=keys, args=args)]
        except redis.RedisError as exc:
            raise BrokerError(f"job counters: {type(exc).__name__}: {exc}") from exc

    # -- control -------------------------------------------------------------------------
    def cancel(self, job_id: str) -> bool:
        """Cancelled: nothing more is fed, the pending keys are dropped, the record expires after
        the TTL, and the job is queued for finalizing. One Lua call: a job that ends meanwhile
        stays ended. Returns False for an unknown or already ended (or finalizing) job."""
        return bool(self._cancel(keys=_all_keys(job_id), args=[job_id, time.time(), self.ttl_s]))

    def delete(self, job_id: str) -> None:
        name: str | None = self._r.hget(job_key(job_id), "name")  # type: ignore[assignment]
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(*_all_keys(job_id))
        if name:
            pipe.delete(name_key(name))
        pipe.zrem(JOBS, job_id)
        pipe.zrem(ACTIVE, job_id)
        pipe.zrem(FINALIZE, job_id)
        pipe.execute()

    def state(self, job_id: str) -> str | None:
        return self._r.hget(job_key(job_id), "state")  # type: ignore[return-value]

    def is_cancelled(self, job_id: str, max_age_s: float = 2.0) -> bool:
        """Whether a worker should drop this job's message: its state, read at most every
        ``max_age_s`` per job and process (a cancel takes effect within that). Redis down:
        ``BrokerError`` (the message goes back, as for any transient failure)."""
        now = time.monotonic()
        read_at, state = self._states.get(job_id, (-1e9, None))
        if now - read_at > max_age_s:
            try:
                state = self.state(job_id)
            except redis.RedisError as exc:
                raise BrokerError(f"job state: {type(exc).__name__}: {exc}") from exc
            self._states[job_id] = (now, state)
        return state == CANCELLED

    def failed(self, job_id: str) -> dict[str, str]:
        """Input URI -> reason of each failed key (the whole hash: ``veil status --failed``)."""
        return self._r.hgetall(job_key(job_id, "failed"))  # type: ignore[return-value]

    def failed_reasons(self, job_id: str, count: int = 1000) -> dict[str, int]:
        """Failed keys per reason code (the text before ``:``), read with HSCAN ``count`` fields
        at a time: memory grows with the number of distinct codes, not of failed keys."""
        tally: dict[str, int] = {}
        for _, reason in self._r.hscan_iter(job_key(job_id, "failed"), count=count):
            code = str(reason).split(":", 1)[0]
            tally[code] = tally.get(code, 0) + 1
        return tally

    # -- job end: the finalize set -------------------------------------------------------
    def take_due_finalizes(self, lease_s: float, limit: int = 100, now: float | None = None) -> list[str]:
        """Ids whose finalize is due, each made due again ``lease_s`` from now in the same call."""
        now = time.time() if now is None else now
        return self._take_due(keys=[FINALIZE], args=[now, now + lease_s, limit])  # type: ignore[return-value]

    def renew_finalize(self, job_id: str, lease_s: float) -> None:
        """A finalize still at work pushes its job's due time on (only if it is still in the set)."""
        self._r.zadd(FINALIZE, {job_id: time.time() + lease_s}, xx=True)

    def finalize_due(self, job_id: str, when: float | None = None) -> None:
        """Puts a job in the finalize set, due at ``when`` (now)."""
        self._r.zadd(FINALIZE, {job_id: time.time() if when is None else when})

    def finalize_pending(self) -> dict[str, float]:
        """Job id -> due time, for every job whose files are still to be written."""
        return dict(self._r.zrange(FINALIZE, 0, -1, withscores=True))  # type: ignore[arg-type]

    def end_token(self, job_id: str) -> str:
        """The job's ``ended`` field as stored: a finalize marks the end it read (``mark_finalized``)."""
        return self._r.hget(job_key(job_id), "ended") or ""  # type: ignore[return-value]

    def mark_finalized(self, job_id: str, end_token: str, error: str = "") -> bool:
        """Its files are written for the end ``end_token`` (or, with ``error``, can never be: a
        permanent storage refusal, kept as ``finalize_error``): ``finalizing`` -> ``finished``, a
        ``finalized`` time, out of the finalize set. False: the job ran and ended again since (it
        stays due), or it is not ended."""
        args: list[str | float] = [job_id, end_token, time.time(), error]
        return bool(self._finalized(keys=[job_key(job_id), FINALIZE], args=args))

    def requeue_failed(self, job_id: str, items: Iterable[tuple[str, str]]) -> int:
        """``veil retry``: each (input URI, relative key) that is counted failed is uncounted and
        queued again, to be redone with overwrite; the job runs again until they are counted."""
        items = list(items)
        if not items:
            return 0
        pipe = self._r.pipeline(transaction=True)
        failed = job_key(job_id, "failed")
        for uri, _ in items:
            pipe.hexists(failed, uri)
        present = [(u, k) for (u, k), there in zip(items, pipe.execute(), strict=True) if there]
        if not present:
            return 0
        pipe = self._r.pipeline(transaction=True)
        pipe.hdel(failed, *[u for u, _ in present])
        pipe.srem(job_key(job_id, "keys"), *[digest(u) for u, _ in present])
        pipe.hincrby(job_key(job_id), "failed", -len(present))
        pipe.rpush(job_key(job_id, "redo"), *[k for _, k in present])
        pipe.hset(job_key(job_id), mapping={"state": RUNNING, "ended": ""})
        for key in _all_keys(job_id):
            pipe.persist(key)
        pipe.zadd(ACTIVE, {job_id: time.time()})
        pipe.zrem(FINALIZE, job_id)  # running again: it is finalized when it ends again
        pipe.execute()
        return len(present)

    # -- the feeder's side -----------------------------------------------------------------
    def active(self) -> list[str]:
        return self._r.zrange(ACTIVE, 0, -1)  # type: ignore[return-value]

    def peek(self, job_id: str, n: int) -> tuple[list[str], bool]:
        """Up to ``n`` keys to feed next (redo keys first) and whether they are redo keys. They
        leave their list only in the feeder's commit of their chunk (``workers/feeder.py``),
        in the same atomic step as their messages enter the queue."""
        redo = self._r.lrange(job_key(job_id, "redo"), 0, n - 1)
        if redo:
            return redo, True  # type: ignore[return-value]
        return self._r.lrange(job_key(job_id, "pending"), 0, n - 1), False  # type: ignore[return-value]

    def loads(self, job_ids: list[str], now: float | None = None, rate_s: int = 30) -> list[FeedLoad]:
        """Per job, in one round trip: its keys in the window (listed, not counted, not waiting),
        its keys waiting to be fed (pending + redo) and its finish rate over the last ``rate_s``
        whole seconds. A job whose record is gone has ``exists`` False."""
        now = time.time() if now is None else now
        pipe = self._r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(job_key(job_id), "total", "done", "no_face", "failed", "skipped", "state")
            pipe.llen(job_key(job_id, "pending"))
            pipe.llen(job_key(job_id, "redo"))
            pipe.hgetall(job_key(job_id, "rate"))
        replies = pipe.execute()
        last = int(now) - 1  # the current second is still filling
        out = []
        for i, job_id in enumerate(job_ids):
            h, pending, redo, per_second = replies[4 * i : 4 * i + 4]
            waiting = int(pending) + int(redo)
            counted = sum(int(v or 0) for v in h[1:5])
            finished = sum(int(c) for sec, c in per_second.items() if last - rate_s < int(sec) <= last)
            out.append(
                FeedLoad(
                    job_id,
                    exists=h[5] is not None,
                    in_window=max(0, int(h[0] or 0) - counted - waiting),
                    waiting=waiting,
                    rate=finished / rate_s,
                )
            )
        return out

    def record_failed(self, job_id: str, failures: list[tuple[str, str]]) -> int:
        """Each (input URI, reason) counted failed, as ``record`` does, in one round trip (the
        feeder's refused keys). Idempotent: a key already counted is not counted again."""
        if not failures:
            return 0
        keys = _all_keys(job_id)
        now = time.time()
        pipe = self._r.pipeline(transaction=False)
        for uri, reason in failures:
            args: list[bytes | str | float] = [digest(uri), "failed", uri, reason, int(now), now, self.ttl_s]
            self._record(keys=[keys[0], keys[3], keys[4], keys[5], *keys[1:3]], args=args, client=pipe)
        try:
            return sum(1 for n in pipe.execute() if int(n) > 0)
        except redis.RedisError as exc:
            raise BrokerError(f"job counters: {type(exc).__name__}: {exc}") from exc

    def forget(self, job_id: str) -> None:
        """A job in the round robin whose record is gone (expired, deleted): its lists go, it
        leaves the round robin (its keys can no longer be counted anywhere)."""
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(job_key(job_id, "pending"), job_key(job_id, "redo"))
        pipe.zrem(ACTIVE, job_id)
        pipe.execute()

    def deactivate_if_drained(self, job_id: str) -> bool:
        keys = [job_key(job_id, "pending"), job_key(job_id, "redo"), job_key(job_id)]
        return bool(self._deactivate(keys=keys, args=[job_id]))

    def spec(self, job_id: str) -> JobSpec | None:
        raw = self._r.hget(job_key(job_id), "spec")
        return JobSpec.model_validate_json(raw) if raw else None  # type: ignore[arg-type]

    # -- reading -------------------------------------------------------------------------
    def get(self, job_id: str) -> JobInfo | None:
        pipe = self._r.pipeline(transaction=False)
        pipe.hgetall(job_key(job_id))
        pipe.llen(job_key(job_id, "pending"))
        pipe.llen(job_key(job_id, "redo"))
        h, pending, redo = pipe.execute()
        if not h:
            return None
        return JobInfo(
            job_id=job_id,
            name=h.get("name", ""),
            input=h.get("input", ""),
            output=h.get("output", ""),
            total=int(h.get("total", 0)),
            created=float(h.get("created", 0)),
            counts={s: int(h.get(s, 0)) for s in STATUSES},
            state=h.get("state", RUNNING),
            skipped=int(h.get("skipped", 0)),
            pending=int(pending) + int(redo),
            listed=h.get("listed", "1") == "1",
            ended=float(h["ended"]) if h.get("ended") else None,
            spec=JobSpec.model_validate_json(h["spec"]) if h.get("spec") else None,
            finalized=float(h["finalized"]) if h.get("finalized") else None,
            finalize_error=h.get("finalize_error") or None,
        )

    def rate(self, job_id: str, now: float | None = None, window_s: int = RATE_WINDOW_S) -> float:
        """Keys finished per second over the last ``window_s`` whole seconds."""
        now = time.time() if now is None else now
        per_second: dict[str, str] = self._r.hgetall(job_key(job_id, "rate"))  # type: ignore[assignment]
        last = int(now) - 1  # the current second is still filling
        counted = sum(int(n) for sec, n in per_second.items() if last - window_s < int(sec) <= last)
        return counted / window_s

    def pace(self, job_id: str, created: float, now: float | None = None, events: int = PACE_EVENTS) -> Pace:
        """The job's finish rate over a window wide enough to hold its last ``events`` seconds in
        which keys finished (at least ``RATE_WINDOW_S``; back to ``created`` while it has fewer):
        keys finished after the window's start / seconds since it. GPU batches longer than a
        minute end in a burst each, and a fixed minute then read 0 between bursts ("ETA ?") or
        froze; this window spans several bursts, and the rate decays as a wait grows (one HGETALL)."""
        now = time.time() if now is None else now
        per_second: dict[str, str] = self._r.hgetall(job_key(job_id, "rate"))  # type: ignore[assignment]
        last = int(now) - 1  # the current second is still filling
        counts = {int(sec): int(n) for sec, n in per_second.items() if int(sec) <= last}
        seconds = sorted(counts, reverse=True)
        oldest = seconds[events - 1] if len(seconds) >= events else int(created) - 1
        start = min(last - RATE_WINDOW_S, oldest)
        finished = sum(n for sec, n in counts.items() if sec > start)
        since_last = now - (seconds[0] + 1) if seconds else None
        return Pace(rate=finished / max(1, last - start), window_s=last - start, since_last_s=since_last)

    def list(self, limit: int = 50) -> list[JobInfo]:
        """The most recent jobs; ids whose record has expired leave the index here."""
        ids: list[str] = self._r.zrevrange(JOBS, 0, limit - 1)  # type: ignore[assignment]  # decode_responses
        found = [(i, self.get(i)) for i in ids]
        gone = [i for i, j in found if j is None]
        if gone:
            self._r.zrem(JOBS, *gone)
        return [j for _, j in found if j is not None]
