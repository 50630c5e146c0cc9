"""A worker's health file: what the Kubernetes probes of a worker pod check.

With ``VEIL_HEALTH_FILE`` set, a consumer bootstep rewrites the file every
``VEIL_HEALTH_INTERVAL_S`` from the worker's event loop: the loop that takes messages from Redis
and, in the GPU tier's solo pool, runs the batch itself. So the file's age tells

- **ready**: the step starts once the consumer is connected and its queue consumed (the GPU
  worker loads its model before that), so a file fresher than the probe's ``--max-age`` means
  the worker is taking work;
- **alive**: the loop goes round. A batch blocks it (solo pool), so the age grows to at most one
  batch + the interval; a hung device call or a deadlock lets it grow without bound, and
  ``veil health --max-age S`` (S above the longest batch) fails;
- the step stops while the broker connection is lost (Celery stops and restarts a consumer's
  steps around a reconnection) and on shutdown, so the age also counts a broker outage;
- **heard from the broker**: a consumer can sit on a half-open connection (a network
  partition: no RST, the peer just goes silent) while its loop still goes round, and a CPU
  worker whose processes are all busy sends no BRPOP at all. So a side thread PINGs the broker
  every interval on its own connection (``shared/redisconn.py``'s bounds: no PING waits more
  than ~15 s), and the loop writes the file only while the last PONG is at most
  ``broker_bound_s`` old. A partition stops the writes within that bound, and the liveness
  probe fails ``--max-age`` later.

A worker removes a file left by an earlier run of its container when it starts (``reset``), so
a restarted container is not taken as alive from its predecessor's file while it loads models.
``veil health`` reads only the file: no broker round trip and no Celery import per probe.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)


def write(path: Path, **fields: Any) -> None:
    """Rewrites the file whole (temp file + rename), so a probe never reads half of it."""
    body = json.dumps({"time": time.time(), "pid": os.getpid(), "host": socket.gethostname(), **fields})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(body + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def reset(settings: Settings) -> None:
    """At worker start-up: no file until this worker consumes (drops an earlier run's file)."""
    if settings.health_file is not None:
        settings.health_file.parent.mkdir(parents=True, exist_ok=True)
        settings.health_file.unlink(missing_ok=True)


def age_s(path: Path, now: float | None = None) -> float | None:
    """Seconds since the file was last written, None when there is none."""
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    return max(0.0, (time.time() if now is None else now) - mtime)


def check(path: Path, max_age_s: float, now: float | None = None) -> tuple[bool, str]:
    """(healthy, one line saying why): the file exists and is at most ``max_age_s`` old."""
    age = age_s(path, now)
    if age is None:
        return False, f"unhealthy: no health file {path} (worker starting, or not consuming)"
    if age > max_age_s:
        return False, f"unhealthy: {path} last written {age:.0f} s ago (> {max_age_s:g} s)"
    return True, f"healthy: {path} written {age:.1f} s ago"


def broker_bound_s(settings: Settings) -> float:
    """How old the last PONG may be for the file to be written: one interval, plus the longest a
    PING can take on a dead path (two tries of the socket timeout, plus a connect)."""
    return settings.health_interval_s + 2 * settings.redis_socket_timeout_s + settings.redis_connect_timeout_s


class BrokerPing:
    """A thread that PINGs the broker every ``interval`` s; ``fresh()`` is False once the last
    PONG is older than ``broker_bound_s``. Its own connection, never the consumer's (not
    thread-safe), with the socket bounds of every Veil connection."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._bound = broker_bound_s(settings)
        self._last_ok = time.monotonic()  # started by a consumer that has just connected
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="veil-health-ping", daemon=True)

    def start(self) -> BrokerPing:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def age_s(self) -> float:
        return time.monotonic() - self._last_ok

    def fresh(self) -> bool:
        return self.age_s() <= self._bound

    def _run(self) -> None:
        from shared import redisconn

        client = redisconn.client(self._settings.broker_url, self._settings)
        while not self._stop.is_set():
            try:
                if client.ping():
                    self._last_ok = time.monotonic()
            except Exception as exc:  # any failure is "not heard from the broker"
                log.warning("health: broker PING failed (%s); last PONG %.0f s ago", exc, self.age_s())
            self._stop.wait(self._settings.health_interval_s)
        client.close()


def install(app: Celery, settings: Settings, tier: str) -> None:
    """Adds the health-file step to this worker's consumer (no-op without VEIL_HEALTH_FILE)."""
    from celery import bootsteps  # here, so `veil health` (a probe, run every few seconds) skips celery

    if settings.health_file is None:
        return
    path, interval = settings.health_file, settings.health_interval_s

    class HealthFile(bootsteps.StartStopStep):
        """Rewrites the health file from the consumer's timer while the consumer runs."""

        requires = ("celery.worker.consumer.tasks:Tasks",)  # started once the queue is consumed

        def __init__(self, c: Any, **kwargs: Any) -> None:
            self.tref: Any = None
            self.ping: BrokerPing | None = None
            super().__init__(c, **kwargs)

        def start(self, c: Any) -> None:
            ping = self.ping = BrokerPing(settings).start()

            def beat() -> None:
                if ping.fresh():  # else no write: the file ages, and the probes fail
                    write(path, tier=tier, state="consuming", broker_pong_age_s=round(ping.age_s(), 1))

            beat()
            self.tref = c.timer.call_repeatedly(interval, beat)

        def stop(self, c: Any) -> None:
            if self.tref is not None:
                self.tref.cancel()
                self.tref = None
            if self.ping is not None:
                self.ping.stop()
                self.ping = None

        shutdown = stop

    app.steps["consumer"].add(HealthFile)
