"""The workers' Redis transport: kombu's, with a pop that a killed worker cannot lose, and each
envelope checked before it is delivered (``workers.envelopes``).

**Why.** kombu pops a message with ``BRPOP`` and only then, in the worker, records it in the
``unacked`` hash that the visibility timeout restores from. Between the two the message exists
only in the worker's socket buffer. A GPU worker runs its batch inside the event loop (solo
pool), so a ``BRPOP`` it sent before the batch can pop a message that arrives during the batch,
and the reply waits unread for the whole batch: a worker SIGKILLed (or OOM-killed, or its node
lost) then loses that message. Measured (CI, 2026-12-03): the job of
``test_sigkill_gpu_mid_batch_recovers_within_visibility_timeout`` stayed at 7 of 8 keys, its
queue and ``unacked`` both empty (kombu knows the gap: ``MultiChannelPoller._update_brpop_polling``,
and celery/celery#4354 for warm shutdown, which kombu 5.7 closes by reading the reply on close).

**How.** The pop moves instead (Redis's reliable-queue pattern):

1. ``BLMOVE queue inflight RIGHT LEFT`` (``_brpop_start``): the message moves, atomically, into
   this consumer's own in-flight list ``veil:inflight:<consumer>:<generation>:<queue>``, listed
   with the time it was last seen alive in the sorted set ``veil:inflight`` (refreshed at most
   every ``visibility_timeout / 3`` s while the worker polls).
2. ``claim`` (``_brpop_read``), one Lua script: remove the message from the in-flight list and
   record it in ``unacked`` exactly as kombu's ``QoS.append`` does, in one step; kombu's own
   append then skips its Redis write for that message. Each delivery gets a fresh delivery
   tag: kombu restores a reserved message whose worker outlived the visibility timeout with its
   old tag, and that worker's late acknowledgement then deleted the redelivered copy's record
   (a second crash lost it). If the message is no longer in the list
   (another worker restored it, below), this worker drops its copy: it is delivered once.
3. ``restore_stale`` (on kombu's periodic restore scan, every ``unacked_restore_interval`` s):
   an in-flight list whose consumer was not seen for ``visibility_timeout`` s is moved back to
   its queue by one script that checks the age again. So a message popped by a worker that then
   died is back in its queue after about the visibility timeout, like a reserved one.

A connection error mid-pop, a pop kombu gave up on (``maybe_check_brpop_health``), or a change
of queue starts a new generation: the old list is
marked stale at once, so its message comes back on the next scan rather than waiting forever
under a consumer that is still alive. Per message, Redis sees what it saw before (``BLMOVE``
and one script, against ``BRPOP`` and a ``MULTI``); per consumer, one ``ZADD`` every
``visibility_timeout / 3`` s; per scan, one ``ZRANGE`` plus one script per stale list and one
per consumed queue (below).

**Priorities.** ``BLMOVE`` reads one list. A queue's priority lists (kombu's ``Q\\x06\\x163``...,
``workers.transport``) are folded into its plain list by the same periodic scan: Veil sends no
priority, and a message another client sends with one is served in arrival order, not lost.

Requires Redis >= 6.2 (``BLMOVE``); compose and Kubernetes run ``redis:7``. Checked with real
Redis and real SIGKILLs: ``tests/integration/test_reliable_pop.py``.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import base as virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps

from shared.errors import BadEnvelopeError
from workers.envelopes import dead_letter, parse

log = logging.getLogger(__name__)

#: sorted set: in-flight list name -> when its consumer was last seen alive (epoch seconds)
INFLIGHT = "veil:inflight"
#: at most this many messages move per list per scan (a priority list another client floods)
MOVE_MAX = 1000

_CLAIM = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
if ARGV[2] == '1' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
  redis.call('HSET', KEYS[3], ARGV[3], ARGV[5])
end
return 1
"""

# KEYS: in-flight list, its queue, the registry. ARGV: stale_before, forget_before, max.
_RESTORE = """
local seen = redis.call('ZSCORE', KEYS[3], KEYS[1])
if seen and tonumber(seen) > tonumber(ARGV[1]) then return -1 end
local n = 0
while n < tonumber(ARGV[3]) do
  if not redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') then break end
  n = n + 1
end
if (not seen or tonumber(seen) < tonumber(ARGV[2])) and redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[3], KEYS[1])
end
return n
"""

# KEYS: the plain list, then its priority lists. ARGV: max per list.
_FOLD = """
local n = 0
for i = 2, #KEYS do
  local moved = 0
  while moved < tonumber(ARGV[1]) do
    if not redis.call('LMOVE', KEYS[i], KEYS[1], 'LEFT', 'RIGHT') then break end
    moved = moved + 1
  end
  n = n + moved
end
return n
"""


def inflight_name(consumer: str, generation: int, queue: str) -> str:
    return f"{INFLIGHT}:{consumer}:{generation}:{queue}"


def queue_of(inflight: str) -> str:
    """The queue an in-flight list's messages came from (queue names may hold ':')."""
    return inflight.split(":", 4)[4]


class QoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: Any) -> None:
        if delivery_tag == self.channel._claimed:  # recorded by the claim script already
            virtual.QoS.append(self, message, delivery_tag)
            return
        super().append(message, delivery_tag)

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        super().restore_visible(*args, **kwargs)
        self.channel.restore_stale()


class Channel(kombu_redis.Channel):
    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._consumer_id = uuid.uuid4().hex[:16]
        self._generation = 0
        self._inflight: str | None = None
        self._inflight_queue: str | None = None
        self._seen_at = 0.0
        self._claimed: Any = None
        self._awaiting = False  # a pop was sent and its reply not read yet
        self._no_ack_queues: set[str] = set()
        self._scripts: dict[str, Any] = {}
        super().__init__(*args, **kwargs)
        if self.global_keyprefix:
            raise ValueError("global_keyprefix is not supported by Veil's transport (workers/redis_transport.py)")

    # -- consuming --------------------------------------------------------------------------
    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        (self._no_ack_queues.add if no_ack else self._no_ack_queues.discard)(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def _brpop_start(self, timeout: float | None = None) -> None:
        """kombu's ``_brpop_start``, moving one message into this consumer's in-flight list."""
        queues = self._queue_cycle.consume(1)
        if not queues:
            return
        queue = queues[0]
        if queue != self._inflight_queue or self._inflight is None or self._awaiting:
            # (awaiting: kombu dropped the connection of an unanswered pop, whose server side may
            # still move a message into the old list: that list is left for the scan)
            self._new_generation(queue)
        self._keep_alive()
        source = self._q_for_pri(queue, 0)
        wait = self.brpop_timeout if timeout is None else timeout
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]
        self.client.connection.send_command("BLMOVE", source, self._inflight, "RIGHT", "LEFT", wait or 0)
        self._awaiting = True

    def _brpop_read(self, **options: Any) -> bool:
        """kombu's ``_brpop_read`` for the move: check the envelope, claim, deliver."""
        try:
            queue, inflight = self._inflight_queue, self._inflight
            self._awaiting = False
            try:
                item = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                self._abandon()  # a message Redis moved may be in that list: back on the next scan
                raise
            if item is None:
                raise kombu_redis.Empty()
            assert queue is not None and inflight is not None  # set by _brpop_start
            self._queue_cycle.rotate(queue)
            self._deliver_claimed(queue, inflight, item)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()

    def _deliver_claimed(self, queue: str, inflight: str, item: bytes) -> None:
        try:
            payload = parse(item, self)
        except BadEnvelopeError as exc:
            if self._claim(inflight, item):
                with self.conn_or_acquire() as client:
                    dead_letter(client, queue, item, exc)
            return
        # a fresh tag for each delivery: a message the scan restored from a live but slow worker
        # carries the same tag, and that worker's late ack deleted the new copy's record
        payload["properties"]["delivery_tag"] = uuid.uuid4().hex
        if not self._claim(inflight, item, payload, record=queue not in self._no_ack_queues):
            log.info("a message popped from %s was restored by another worker meanwhile: not delivered twice", queue)
            return
        self._claimed = payload["properties"]["delivery_tag"]
        try:
            self.connection._deliver(payload, queue)
        finally:
            self._claimed = None

    def _claim(self, inflight: str, item: bytes, payload: dict | None = None, record: bool = False) -> bool:
        """Atomically: out of the in-flight list and, if ``record``, into ``unacked`` as kombu's
        ``QoS.append`` writes it. False if the message was no longer there."""
        args: list[Any] = [item, "0"]
        if record and payload is not None:
            info = payload["properties"]["delivery_info"]
            value = dumps([payload, info["exchange"], info["routing_key"]])
            args = [item, "1", payload["properties"]["delivery_tag"], time.time(), value]
        try:
            with self.conn_or_acquire() as client:
                claimed = self._script(client, "claim", _CLAIM)(
                    keys=[inflight, self.unacked_index_key, self.unacked_key], args=args
                )
        except self.connection_errors:
            self._abandon()
            raise
        return bool(claimed)

    # -- this consumer's in-flight list ------------------------------------------------------
    def _new_generation(self, queue: str) -> None:
        if self._inflight is not None:
            self._abandon()
        self._generation += 1
        self._inflight_queue = queue
        self._inflight = inflight_name(self._consumer_id, self._generation, queue)
        self._seen_at = 0.0

    def _abandon(self) -> None:
        """Stop using the current list; the next scan moves what it holds back to its queue."""
        old, self._inflight = self._inflight, None
        if old is None:
            return
        try:
            with self.conn_or_acquire() as client:
                client.zadd(INFLIGHT, {old: time.time() - self.visibility_timeout - 1})
        except Exception:  # noqa: BLE001 - Redis down: it goes stale by itself
            log.debug("in-flight list %s not marked stale", old, exc_info=True)

    def _keep_alive(self) -> None:
        now = time.time()
        if now - self._seen_at < self.visibility_timeout / 3:
            return
        with self.conn_or_acquire() as client:
            client.zadd(INFLIGHT, {self._inflight: now})
        self._seen_at = now

    # -- the periodic scan (any worker) ------------------------------------------------------
    def restore_stale(self) -> int:
        """Moves every stale in-flight list back to its queue and folds the consumed queues'
        priority lists into their plain lists. Returns how many messages moved; never raises
        for Redis (the next scan tries again)."""
        moved = 0
        try:
            now = time.time()
            with self.conn_or_acquire() as client:
                stale = client.zrange(INFLIGHT, "-inf", now - self.visibility_timeout, byscore=True)
                restore = self._script(client, "restore", _RESTORE)
                for raw in stale:
                    name = bytes_to_str(raw)
                    n = int(
                        restore(
                            keys=[name, queue_of(name), INFLIGHT],
                            args=[now - self.visibility_timeout, now - 3 * self.visibility_timeout, MOVE_MAX],
                        )
                    )
                    if n > 0:
                        log.warning("restored %d message(s) popped by a consumer that is gone (%s)", n, name)
                        moved += n
                fold = self._script(client, "fold", _FOLD)
                for queue in self.active_queues:
                    keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps]
                    n = int(fold(keys=keys, args=[MOVE_MAX]))
                    if n > 0:
                        log.info("moved %d message(s) sent with a priority into %s", n, queue)
                        moved += n
        except self.connection_errors:
            log.debug("in-flight scan skipped: Redis unreachable", exc_info=True)
        return moved

    def _script(self, client: Any, name: str, source: str) -> Any:
        if name not in self._scripts:
            self._scripts[name] = client.register_script(source)
        script = self._scripts[name]
        return lambda keys, args: script(keys=keys, args=args, client=client)

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        """kombu's ``_get`` (RPOP, used without the event loop) with the envelope checked."""
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                item = client.rpop(self._q_for_pri(queue, pri))
                if item:
                    try:
                        return parse(item, self)
                    except BadEnvelopeError as exc:
                        dead_letter(client, queue, item, exc)
            raise kombu_redis.Empty()


class Transport(kombu_redis.Transport):
    Channel = Channel
