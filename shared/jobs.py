"""Job bookkeeping in Redis: counters only. Results live in object storage, so losing Redis
never loses a finished image or sidecar; it only loses the progress counts.

Keys: ``veil:jobs`` (sorted set of job ids by creation time), ``veil:job:{id}`` (hash: name,
input, output, total, created, and one counter per status), ``veil:job:{id}:keys`` (set of
finished input URIs, so a redelivered message is never counted twice).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from shared.errors import BrokerError
from shared.messages import Status

STATUSES = tuple(s.value for s in Status)

# Add the key to the job's finished set and count its status, atomically (Lua runs whole).
_RECORD = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
  return 1
end
return 0
"""


@dataclass
class JobInfo:
    job_id: str
    name: str
    input: str
    output: str
    total: int
    created: float
    counts: dict[str, int]

    @property
    def finished(self) -> int:
        return sum(self.counts.values())


class JobStore:
    def __init__(self, client: redis.Redis):
        self._r = client

    @classmethod
    def from_url(cls, url: str) -> JobStore:
        return cls(redis.Redis.from_url(url, decode_responses=True))

    def create(self, job_id: str, *, name: str, input: str, output: str) -> None:
        now = time.time()
        self._r.hset(
            f"veil:job:{job_id}", mapping={"name": name, "input": input, "output": output, "total": 0, "created": now}
        )
        self._r.zadd("veil:jobs", {job_id: now})

    def add_total(self, job_id: str, n: int) -> None:
        self._r.hincrby(f"veil:job:{job_id}", "total", n)

    def record(self, job_id: str, input_uri: str, status: str) -> bool:
        """Counts a finished key once; returns False when it was already counted. Both writes go
        in one MULTI, so a Redis cut between them cannot mark a key counted without counting it.
        Redis unreachable: ``BrokerError`` (transient)."""
        script = self._r.register_script(_RECORD)
        try:
            return bool(script(keys=[f"veil:job:{job_id}:keys", f"veil:job:{job_id}"], args=[input_uri, status]))
        except redis.RedisError as exc:
            raise BrokerError(f"job counters: {type(exc).__name__}: {exc}") from exc

    def get(self, job_id: str) -> JobInfo | None:
        h: dict[str, str] = self._r.hgetall(f"veil:job:{job_id}")  # type: ignore[assignment]  # decode_responses
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
        )

    def list(self, limit: int = 50) -> list[JobInfo]:
        ids: list[str] = self._r.zrevrange("veil:jobs", 0, limit - 1)  # type: ignore[assignment]  # decode_responses
        return [j for j in (self.get(i) for i in ids) if j is not None]
