"""The Celery application of both tiers.

``app`` is created unconfigured at import (cheap, no settings read); ``configure(settings)``
is called once at start-up by ``veil worker`` / ``veil submit`` / ``veil flower`` and sets
broker, queues, delivery guarantees and Flower events from the one ``Settings`` object. Loaded
by Celery's own CLI (``celery -A workers.celery_app ...``), it configures itself from the
``VEIL_*`` environment when its configuration is first read.

This module imports no task module: each worker imports its own tier's tasks
(``workers/launch.py``), and the orchestrator and the tiers send tasks by name
(``CPU_TASK``, ``GPU_TASK``), so ``veil submit`` and the CPU worker never import the GPU stack.

Delivery is at-least-once with idempotent results: tasks are acknowledged late and rejected
(so redelivered) when their worker dies; Redis redelivers unacknowledged messages after
``visibility_timeout_s`` (default 300 s; see ``shared/settings.py`` for how it relates to the
longest batch). On SIGTERM a worker finishes the batch it runs (warm shutdown) and returns the
messages it holds but has not started to the queue as it closes its channel.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery

from shared import redisconn
from shared.settings import Settings
from workers.transport import declare

app = Celery("veil")

CPU_TASK = "veil.analyze"
GPU_TASK = "veil.generate"
FINALIZE_TASK = "veil.finalize"  # an ended job's manifest and summary (workers/finalize.py), CPU queue


def _forget_broker_connections() -> None:
    """Connections and producers cached for a previous broker URL would still be used by
    ``send_task`` after the URL changes (seen: sends went to a broker the process had left)."""
    if app._pool is not None:
        app._pool.force_close_all()
        app._pool = None
    app.amqp._producer_pool = None


def _heartbeats_sent_once() -> None:
    """Celery's worker heartbeat is published from the event loop with ``retry=True`` and no
    retry limit (kombu's ``Connection.ensure``, ``max_retries=None``). With the broker
    partitioned, every reconnect waits out the socket timeout, forever, and the loop never
    reaches its shutdown check: a CPU worker with nothing running was still up 60 s after SIGTERM
    (py-spy: ``Heart._send`` -> ``Connection._ensure_connection``). A heartbeat goes out again
    every 2 s anyway, so it is sent once: a failure reaches the loop as a connection error, and
    the consumer reconnects the way it always does (its retry checks for shutdown)."""
    from celery.worker import heartbeat

    send = heartbeat.Heart._send
    if getattr(send, "veil_once", False):
        return

    def once(self: heartbeat.Heart, event: str, retry: bool = True) -> Any:
        return send(self, event, retry=False)

    once.veil_once = True  # type: ignore[attr-defined]
    heartbeat.Heart._send = once  # type: ignore[method-assign]


_configured_by_veil = False


def _configure_from_environment(sender: Celery, **_: object) -> None:
    """Celery's own CLI (``celery -A workers.celery_app inspect ping``, ``celery status``...)
    loads ``app`` without calling ``configure``: it then falls back to Celery's default broker,
    ``amqp://localhost:5672`` (and found "no nodes" on a machine running a RabbitMQ). When the
    app's configuration is first read and Veil has not configured it, it is built from the
    ``VEIL_*`` environment, as ``veil worker`` would (``on_configure``: lazy, never at import)."""
    if _configured_by_veil:
        return
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        raise SystemExit(f"veil: {exc}") from None
    sender.config_from_object(celery_conf(settings))


app.on_configure.connect(_configure_from_environment, weak=False)


def configure(settings: Settings, *, tier: str | None = None) -> Celery:
    global _configured_by_veil
    _configured_by_veil = True
    if tier is not None:
        _heartbeats_sent_once()
    if app.configured and app.conf.broker_url not in (None, settings.broker_url):
        _forget_broker_connections()
    app.conf.update(**celery_conf(settings, tier))
    if settings.signing:
        _sign_messages(settings)
    if tier is not None and settings.broker_url.startswith(("redis://", "rediss://")):
        # a worker consumes through Veil's transport (kombu's Redis transport with a pop a killed
        # worker cannot lose, and poison envelopes dead-lettered instead of ending the worker)
        from workers import envelopes

        envelopes.configure(settings.max_message_bytes, tier, signed=settings.signing)
        app.conf.broker_transport = "workers.redis_transport:Transport"
    if tier is not None and not (settings.input_roots and settings.output_roots):
        logging.getLogger(__name__).warning(
            "VEIL_INPUT_ROOTS / VEIL_OUTPUT_ROOTS unset: this %s worker reads and writes wherever a broker "
            "message says (development only; SECURITY.md)",
            tier,
        )
    return app


def _sign_messages(settings: Settings) -> None:
    """Celery's message signing (``app.setup_security``): registers the ``auth`` serializer with
    this process's key, certificate and store, and makes it kombu's default. It also disables
    every other serializer for decoding where no ``accept`` list is given; JSON stays enabled
    (``allowed_serializers``), which events and remote control use (they pass their own
    ``accept``). Process-wide (kombu's registry), so called once at start-up, before the pool
    forks. A file that is missing or unreadable, a key that is not RSA, an expired certificate or
    a store without one is a ``ValueError`` naming the settings (``veil``: one line, exit 2)."""
    import glob

    names = "VEIL_SECURITY_KEY, VEIL_SECURITY_CERTIFICATE, VEIL_SECURITY_CERT_STORE"
    store = settings.security_cert_store or ""
    if not glob.glob(os.path.join(store, "*") if os.path.isdir(store) else store):
        raise ValueError(f"message signing: VEIL_SECURITY_CERT_STORE={store!r} holds no certificate")
    try:
        app.setup_security(allowed_serializers=["json"])
    except Exception as exc:  # noqa: BLE001 - Celery's own errors (ImproperlyConfigured, SecurityError), OSError
        raise ValueError(f"message signing ({names}): {type(exc).__name__}: {exc}") from None


def signing_conf(settings: Settings) -> dict[str, Any]:
    """Celery's settings for signed task messages (``auth``: the JSON body signed with RSA-PSS and
    SHA-256, ``security_digest``'s default), or plain JSON when signing is off."""
    if not settings.signing:
        return dict(task_serializer="json", accept_content=["json"])
    return dict(
        task_serializer="auth",
        accept_content=["auth"],
        security_key=str(settings.security_key),
        security_certificate=str(settings.security_certificate),
        security_cert_store=settings.security_cert_store,
    )


def celery_conf(settings: Settings, tier: str | None = None) -> dict[str, Any]:
    """Celery's settings from Veil's: broker, queues, delivery guarantees, Flower events."""
    return dict(
        broker_url=settings.broker_url,
        broker_connection_retry_on_startup=True,
        # No connection waits forever on a half-open socket (a partition); the bounds
        # and why they hold are in shared/redisconn.py. Retry the broker forever (default: 100
        # tries, ~50 min), so a long partition or Redis outage never ends a worker.
        broker_connection_timeout=settings.redis_connect_timeout_s,
        broker_connection_max_retries=None,
        # rediss://: the URL's TLS options (its CA) also for Flower's Broker tab, which reads only these
        broker_use_ssl=redisconn.tls_options(settings.broker_url) or False,
        broker_transport_options={
            **redisconn.transport_options(settings),
            "visibility_timeout": settings.visibility_timeout_s,
            # kombu scans for expired unacknowledged messages every interval x throttle s
            # (default 10 x 10): scan every ~visibility/5 s, so a dead worker's keys come back
            # within ~1.2 x the visibility timeout, on any live or restarted worker.
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 5)),
            "unacked_restore_throttle": 1,
            # The restore scan's lock (SET NX) expires after this (kombu's default: 300 s). A
            # worker that took it and then lost the broker (a partition; its SET arrived, the
            # reply did not) kept every worker from restoring for 5 minutes: measured, the keys
            # a killed worker held came back 300 s after the partition instead of
            # visibility_timeout_s. The scan itself takes well under a second at the window's size.
            "unacked_mutex_expire": 30,
        },
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        **signing_conf(settings),  # JSON, or JSON signed (SECURITY.md)
        # Each queue on its own direct exchange (workers/transport.py).
        task_queues=[declare(settings.cpu_queue), declare(settings.gpu_queue)],
        task_routes={
            CPU_TASK: {"queue": settings.cpu_queue},
            GPU_TASK: {"queue": settings.gpu_queue},
            FINALIZE_TASK: {"queue": settings.cpu_queue},
        },
        task_default_queue=settings.cpu_queue,
        worker_send_task_events=True,  # Flower: received, started, succeeded, failed
        # No "sent" event per enqueued key: one more Redis publish per key on `veil submit`;
        # queue depth is in Flower's Broker tab (both queues: `workers/flower_patches.py`)
        # and in `veil exporter`'s veil_queue_depth.
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        # CPU: one message at a time per process. GPU: two batches' worth, so the next batch is
        # already reserved while the current one runs (celery-batches needs >= flush_every).
        worker_prefetch_multiplier=2 * settings.batch_size if tier == "gpu" else 1,
    )
