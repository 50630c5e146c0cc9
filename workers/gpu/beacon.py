"""What Flower sees of the GPU worker while a batch runs.

The GPU worker runs its batch in the main thread (solo pool), which is also the thread of the
worker's event loop: while a batch runs, the worker's own heartbeats stop, and Flower marks it
Offline once a heartbeat is ~4 s late. celery-batches also never sends the task events of the
requests it batches, so ``veil.generate`` never showed in Flower.

``Beacon`` is a daemon thread with its own broker connection and its own ``EventDispatcher``
(a dispatcher is not thread-safe: the thread is its only user). While a batch runs it sends the
worker's ``worker-heartbeat`` every ``interval`` s, under the worker's node name, and it sends the
per-request ``task-started`` / ``task-succeeded`` / ``task-failed`` events the batch queues with
``task_event`` (a non-blocking put: a slow or dead broker never slows or fails a batch; past
``MAX_QUEUED`` events are dropped). ``task-received`` is sent by ``VisibleBatches``' strategy, on the
worker's own dispatcher, in the event loop's thread, before the request is buffered (the one that
fills a batch runs it), as Celery's default strategy does.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery, bootsteps
from celery_batches import Batches

log = logging.getLogger(__name__)

#: Celery's worker heartbeat interval (``--heartbeat-interval``'s default); Flower marks a
#: worker Offline when no heartbeat came for 2 intervals (celery.events.state)
HEARTBEAT_INTERVAL_S = 2.0
MAX_QUEUED = 10_000


class Beacon:
    def __init__(self, app: Celery, interval: float = HEARTBEAT_INTERVAL_S):
        self._app = app
        self._interval = interval
        self._events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue(MAX_QUEUED)
        self._hostname: str | None = None
        self._active = 0  # requests of the batch that runs now (0: none)
        self._active_info: list[dict[str, Any]] = []  # what ``inspect active`` lists for them
        self._processed = 0
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._consumer: Any = None  # the worker's Celery consumer (``BeaconStep``)
        self.heartbeats_sent = 0

    def attach(self, consumer: Any) -> None:
        """The worker's consumer, for ``inspect stats`` answered during a batch."""
        self._consumer = consumer

    @contextmanager
    def batch(self, hostname: str | None, requests: list[dict[str, Any]]) -> Iterator[None]:
        """Heartbeats go out for ``hostname``, and remote-control commands (``inspect ping``,
        ``active``, ``stats``) are answered, while the body runs. ``requests``: each request's
        ``inspect active`` entry (id, name, args...)."""
        try:
            self._hostname = hostname or self._hostname
            self._active_info = requests
            self._active = len(requests)
            self._ensure_thread()
        except Exception:  # noqa: BLE001 - Flower's view is never worth a failed batch
            log.debug("beacon: could not start", exc_info=True)
        try:
            yield
        finally:
            self._processed += len(requests)
            self._active = 0
            self._active_info = []
            _count_processed(len(requests))

    def task_event(self, type_: str, **fields: Any) -> None:
        """Queues a task event (sent by the thread, stamped now)."""
        try:
            self._events.put_nowait((type_, {**fields, "timestamp": time.time()}))
        except queue.Full:
            log.debug("beacon: event queue full; %s dropped", type_)

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="veil-beacon", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        dispatcher = None
        mailbox: _Mailbox | None = None
        next_beat = 0.0
        pending: tuple[str, dict[str, Any]] | None = None
        while True:
            try:
                hostname = self._hostname
                if hostname is not None and (mailbox is None or mailbox.hostname != hostname):
                    if mailbox is not None:
                        mailbox.close()
                    mailbox = None
                    mailbox = _Mailbox(self._app, hostname, self._control_state(hostname), self._serving)
                if pending is None:
                    if mailbox is not None:
                        mailbox.drain(0.2)  # answers commands (during a batch); at most 0.2 s
                    try:
                        pending = self._events.get(timeout=0.2 if mailbox is None else 0)
                    except queue.Empty:
                        pending = None
                if hostname is None:
                    time.sleep(0.2)
                    continue
                if pending is None and (not self._active or time.monotonic() < next_beat):
                    continue
                if dispatcher is None or dispatcher.hostname != hostname:
                    dispatcher = self._dispatcher(hostname, dispatcher)
                if pending is not None:
                    dispatcher.send(pending[0], **pending[1])
                    pending = None
                if self._active and time.monotonic() >= next_beat:
                    self._heartbeat(dispatcher)
                    next_beat = time.monotonic() + self._interval
            except Exception:  # noqa: BLE001 - broker down: drop the connection, try again later
                log.debug("beacon: send failed", exc_info=True)
                self._close(dispatcher)
                dispatcher = None
                if mailbox is not None:
                    mailbox.close()
                mailbox = None
                time.sleep(1.0)

    def _serving(self) -> bool:
        """Commands are the beacon's to answer only while a batch blocks the worker's own loop
        (idle, the worker answers them itself: both receive every broadcast)."""
        return self._active > 0

    def _control_state(self, hostname: str) -> Any:
        from celery.utils.collections import AttributeDict

        return AttributeDict(app=self._app, hostname=hostname, consumer=self._consumer, tset=set)

    def active_requests(self) -> list[dict[str, Any]]:
        return list(self._active_info)

    def _dispatcher(self, hostname: str, old: Any) -> Any:
        self._close(old)
        connection = self._app.connection_for_write()
        return self._app.events.Dispatcher(connection, hostname=hostname, enabled=True, buffer_while_offline=False)

    def _heartbeat(self, dispatcher: Any) -> None:
        from celery.utils.sysinfo import load_average
        from celery.worker.state import SOFTWARE_INFO

        dispatcher.send(
            "worker-heartbeat",
            freq=self._interval,
            active=self._active,
            processed=self._processed,
            loadavg=load_average(),
            **SOFTWARE_INFO,
        )
        self.heartbeats_sent += 1

    @staticmethod
    def _close(dispatcher: Any) -> None:
        if dispatcher is None:
            return
        for close in (dispatcher.close, dispatcher.connection.release):
            try:
                close()
            except Exception:  # noqa: BLE001
                pass


def _count_processed(n: int) -> None:
    """celery-batches never marks its requests accepted, so ``inspect stats`` showed
    ``"total": {}`` after 46 requests: count them as Celery's ``task_accepted`` does."""
    from celery.worker import state

    state.total_count[GPU_TASK_NAME] += n
    state.all_total_count[0] += n


#: the GPU task's name (``workers.celery_app.GPU_TASK``; not imported here: no cycle)
GPU_TASK_NAME = "veil.generate"


class _Mailbox:
    """The worker's remote-control mailbox, on the beacon's own connection: Celery's pidbox
    ``Node`` with Celery's own command handlers, except ``active`` (celery-batches' requests
    are not in Celery's active set): the batch's requests. A broadcast reaches both this and the
    worker's own consumer (Redis pub/sub); ``serving()`` says whether this one answers."""

    def __init__(self, app: Celery, hostname: str, state: Any, serving: Callable[[], bool]):
        from celery.worker.control import Panel

        self.hostname = hostname
        self._serving = serving
        self._connection = app.connection_for_write()
        handlers = dict(Panel.data)
        handlers["active"] = lambda state, **kw: beacon_of(app).active_requests()
        self._node = app.control.mailbox.Node(hostname, handlers=handlers, state=state)
        self._node.channel = self._connection.channel()
        self._consumer = self._node.listen(callback=self._on_message)

    def _on_message(self, body: Any, message: Any) -> None:
        if self._serving():
            self._node.handle_message(body, message)

    def drain(self, timeout: float) -> None:
        try:
            self._connection.drain_events(timeout=timeout)
        except TimeoutError:
            pass
        except OSError as exc:  # socket.timeout is an OSError: nothing came
            if "timed out" not in str(exc):
                raise

    def close(self) -> None:
        for close in (self._consumer.cancel, self._node.channel.close, self._connection.release):
            try:
                close()
            except Exception:  # noqa: BLE001
                pass


_BEACONS: dict[int, Beacon] = {}


def beacon_of(app: Celery) -> Beacon:
    """The process's one beacon for ``app``."""
    return _BEACONS.setdefault(id(app), Beacon(app))


class BeaconStep(bootsteps.StartStopStep):
    """A consumer bootstep that hands the worker's consumer to the beacon (``inspect stats``)."""

    def start(self, parent: Any) -> None:
        beacon_of(parent.app).attach(parent)


class VisibleBatches(Batches):
    """celery-batches' ``Batches`` that also sends each request's ``task-received`` event, as
    Celery's default strategy does (same fields), from the event loop's thread, on the worker's
    own dispatcher."""

    abstract = True

    def Strategy(self, task: Any, app: Celery, consumer: Any) -> Callable[..., None]:  # noqa: N802 - Celery's name
        handler = super().Strategy(task, app, consumer)
        eventer = consumer.event_dispatcher

        def handle(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> None:
            # received first: the request that fills a batch runs the batch inside ``handler``,
            # and its received event came after the batch (Flower had no received time or args
            # for it mid-batch, and Active + Succeeded did not add up to Processed)
            try:
                if eventer is not None and eventer.enabled:
                    headers = message.headers or {}
                    eventer.send(
                        "task-received",
                        uuid=headers.get("id"),
                        name=headers.get("task"),
                        args=headers.get("argsrepr"),
                        kwargs=headers.get("kwargsrepr"),
                        root_id=headers.get("root_id"),
                        parent_id=headers.get("parent_id"),
                        retries=headers.get("retries", 0),
                        eta=headers.get("eta"),
                        expires=headers.get("expires"),
                    )
            except Exception:  # noqa: BLE001
                log.debug("task-received event not sent", exc_info=True)
            handler(message, body, ack, reject, callbacks, **kw)

        return handle
