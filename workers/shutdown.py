"""SIGTERM while the broker is unreachable: the worker still exits within its pod's grace period.

A warm shutdown says goodbye to the broker step by step from the event loop (restore what it
holds, an offline event, the control queue, the consumer's last BRPOP read); with the broker
partitioned each step waits out the socket timeout (``shared/redisconn.py``), and a task still
running retries its sends in place. Measured on the 2-core VM (load ~8), an idle CPU worker took
70 s to exit after SIGTERM in a partition with a 10 s timeout, more than its pod's 60 s grace.

So on SIGTERM a thread watches the broker: while it answers PING, the warm shutdown goes on as
always (finish the batch, return what is held). Once it has not answered for
``unreachable_limit_s`` since the signal, nothing the worker still does can reach Redis: it
logs why and exits at once (exit 1), killing its pool processes. Nothing is lost: the messages
it held are unacknowledged in Redis and come back after ``VEIL_VISIBILITY_TIMEOUT_S``; a key
whose sidecar was written is skipped and counted when it comes back.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

from shared.settings import Settings

log = logging.getLogger(__name__)

EXIT_BROKER_UNREACHABLE = 1


def unreachable_limit_s(settings: Settings) -> float:
    """Two PINGs' worth of silence (each at most a connect and a socket timeout)."""
    return 2 * (settings.redis_socket_timeout_s + settings.redis_connect_timeout_s)


def _kill_pool_processes() -> None:
    import billiard

    for child in billiard.active_children():
        try:
            os.kill(child.pid, signal.SIGKILL)
        except (ProcessLookupError, TypeError):
            pass


def watch(settings: Settings, exit_now: Any = os._exit) -> None:
    """Runs until the process ends; exits it once the broker has been silent too long."""
    from shared import redisconn

    client = redisconn.client(settings.broker_url, settings)
    last_pong = began = time.monotonic()
    limit = unreachable_limit_s(settings)
    while True:
        try:
            if client.ping():
                last_pong = time.monotonic()
        except Exception as exc:  # any failure is silence
            log.warning("shutdown: broker PING failed (%s)", exc)
        silent = time.monotonic() - last_pong
        if silent >= limit:
            log.error(
                "shutdown: broker unreachable for %.0f s (%.0f s after SIGTERM): exiting now; the messages "
                "this worker holds come back after VEIL_VISIBILITY_TIMEOUT_S",
                silent,
                time.monotonic() - began,
            )
            _kill_pool_processes()
            exit_now(EXIT_BROKER_UNREACHABLE)
            return
        time.sleep(1.0)


def install(settings: Settings) -> None:
    """Arms the watch when this worker is asked to shut down (in its main process)."""
    from celery.signals import worker_shutting_down

    armed = threading.Event()

    @worker_shutting_down.connect(weak=False)
    def _arm(**_: object) -> None:
        if not armed.is_set():
            armed.set()
            threading.Thread(target=watch, args=(settings,), name="veil-shutdown-watch", daemon=True).start()
