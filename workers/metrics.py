"""Prometheus metrics of the workers: every definition, the HTTP endpoint, and the small helpers
the tasks call. Nothing else in Veil touches prometheus_client.

Each worker process serves its own metrics on ``VEIL_METRICS_PORT`` (0 = off), started after
fork in the process that does the work: a CPU worker's pool child N (0-based) on port + N, a GPU
worker process on the port it is given (``veil worker gpu`` gives its device children port + i).
Queue depth is not a worker's to tell: ``veil exporter`` serves ``veil_queue_depth`` from Redis.

Every helper swallows its own errors (logged at debug): a metrics failure never fails a key.
Label values are bounded: statuses, stage names and reason codes, never keys or messages.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from shared.settings import Settings

log = logging.getLogger(__name__)

#: the stages timed per image (the keys of the stages' ``timings`` dicts)
STAGES = ("decode", "detect", "attributes", "generate", "encode", "upload")

#: Veil's own registry (plus the process/GC/platform collectors), so a process that imports this
#: module next to another prometheus_client user (Flower) does not mix the two.
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

IMAGES = Counter(
    "veil_images",
    "Keys a worker finished handling, by tier and outcome (cpu: prompted, no_face, failed, skipped, "
    "retrying, requeued; gpu: done, failed, skipped, retrying, requeued)",
    ["tier", "status"],
    registry=REGISTRY,
)
FAILURES = Counter(
    "veil_failures",
    "Keys recorded failed, by tier and reason code (the part of the sidecar's reason before ':')",
    ["tier", "reason"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "veil_retries", "Messages sent again after a transient failure, by reason code", ["reason"], registry=REGISTRY
)
STAGE_SECONDS = Histogram(
    "veil_stage_seconds",
    "Seconds per image in each stage (generate: the batch's diffusion time divided by its images)",
    ["stage"],
    # dense from 1 to 30 s, where per-image generate times and slow uploads live
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 120, 300),
    registry=REGISTRY,
)


def _batch_size_histogram(max_batch: int) -> Histogram:
    """Batch sizes as exact values: a bucket edge at every k + 0.5 up to ``max_batch`` + 0.5, so
    ``histogram_quantile`` reads 8.0 when every batch was 8 (powers-of-two buckets read 6)."""
    return Histogram(
        "veil_gpu_batch_size",
        "Requests per batch that celery-batches handed the GPU task",
        buckets=[k + 0.5 for k in range(max_batch + 1)],
        registry=REGISTRY,
    )


GPU_BATCH_SIZE = _batch_size_histogram(8)  # VEIL_BATCH_SIZE's default; a GPU worker sets its own
GPU_MEMORY = Gauge(
    "veil_gpu_memory_bytes", "CUDA memory allocated by tensors now, by real device index", ["gpu"], registry=REGISTRY
)
GPU_MEMORY_PEAK = Gauge(
    "veil_gpu_memory_peak_bytes",
    "Peak CUDA memory allocated by tensors since the worker started, by real device index",
    ["gpu"],
    registry=REGISTRY,
)


def set_max_batch(max_batch: int) -> None:
    """The GPU worker's batch-size histogram, with an exact bucket for each size up to its
    ``VEIL_BATCH_SIZE`` (called at start-up, before any batch)."""
    global GPU_BATCH_SIZE
    REGISTRY.unregister(GPU_BATCH_SIZE)
    GPU_BATCH_SIZE = _batch_size_histogram(max_batch)


F = TypeVar("F", bound=Callable[..., Any])


def _never_raises(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception:  # noqa: BLE001 - metrics must never fail a key
            log.debug("metrics: %s failed", fn.__name__, exc_info=True)
            return None

    return wrapper  # type: ignore[return-value]


_served: tuple[int, int] | None = None  # (pid, port) of this process's endpoint

#: every outcome each tier's task reports (``image``): their series exist from start-up at 0
OUTCOMES = {
    "cpu": ("prompted", "no_face", "failed", "skipped", "cancelled", "retrying", "requeued", "rejected"),
    "gpu": ("done", "failed", "skipped", "cancelled", "retrying", "requeued", "given_back"),
}
#: reason codes that are not an error class's ``reason`` (shared.errors)
# (bad_envelope, message_too_large, unsigned, bad_signature: BadEnvelopeError's, set per instance)
_OTHER_REASONS = ("bad_message", "unsigned", "bad_signature", "outcome_not_recorded", "given_back", "unknown")


def known_reasons() -> list[str]:
    """Every reason code a failure or retry can carry: each ``VeilError`` subclass's ``reason``
    (imported so far, which at start-up is all of them) and the few codes set by hand."""
    from shared.errors import VeilError

    codes: set[str] = set(_OTHER_REASONS)
    pending: list[type] = [VeilError]
    while pending:
        cls = pending.pop()
        codes.add(str(getattr(cls, "reason", "unknown")))
        pending += cls.__subclasses__()
    return sorted(codes)


@_never_raises
def create_known_series(tier: str) -> None:
    """Creates every labelled counter series this tier can touch, at 0. Prometheus's
    ``increase()`` needs a sample before the first event: a series born at 1 shows no increase,
    so a dashboard's failures panel stayed at 0 while keys failed (issue 24)."""
    for status in OUTCOMES.get(tier, ()):
        IMAGES.labels(tier, status)
    for reason in known_reasons():
        FAILURES.labels(tier, reason)
        RETRIES.labels(reason)


@_never_raises
def serve(
    port: int, registry: CollectorRegistry = REGISTRY, host: str = "127.0.0.1", tier: str | None = None
) -> int | None:
    """Serves /metrics on ``port`` from a daemon thread of this process (once per process;
    0 = off), with ``tier``'s counters created at 0 first. A port in use is logged, not raised:
    the worker still works, unwatched."""
    global _served
    if port <= 0 or (_served is not None and _served[0] == os.getpid()):
        return None
    if tier is not None:
        create_known_series(tier)
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.warning("metrics: cannot serve on port %d (%s); this process is not scraped", port, exc)
        return None
    _served = (os.getpid(), port)
    log.info("metrics on %s:%d/metrics", host, port)
    return port


def pool_child_port(base: int) -> int:
    """The port of a prefork pool child: base + its 0-based index (billiard numbers children)."""
    if base <= 0:
        return 0
    from billiard.process import current_process

    index = getattr(current_process(), "index", 0) or 0
    return base + int(index)


def _code(reason: str | None) -> str:
    return (reason or "unknown").split(":", 1)[0].strip()[:64] or "unknown"


@_never_raises
def image(tier: str, status: str) -> None:
    IMAGES.labels(tier, status).inc()


@_never_raises
def failure(tier: str, reason: str | None) -> None:
    FAILURES.labels(tier, _code(reason)).inc()


@_never_raises
def retry(reason: str | None) -> None:
    RETRIES.labels(_code(reason)).inc()


@_never_raises
def stage_times(timings: Mapping[str, float]) -> None:
    """Observes the known stages of one image's ``timings`` dict; other keys are ignored."""
    for stage in STAGES:
        if stage in timings:
            STAGE_SECONDS.labels(stage).observe(float(timings[stage]))


@_never_raises
def gpu_batch(size: int) -> None:
    GPU_BATCH_SIZE.observe(size)


@_never_raises
def watch_gpu_memory() -> None:
    """Gauges read at scrape time from torch's allocator (no CUDA: nothing is exported)."""
    import torch

    if not torch.cuda.is_available():
        return
    for index in range(torch.cuda.device_count()):
        gpu = real_device_index(index)
        GPU_MEMORY.labels(gpu).set_function(functools.partial(torch.cuda.memory_allocated, index))
        GPU_MEMORY_PEAK.labels(gpu).set_function(functools.partial(torch.cuda.max_memory_allocated, index))


def real_device_index(index: int, visible: str | None = None) -> str:
    """The machine's index of this process's CUDA device ``index``: each GPU worker process sees
    its one device as 0 (``CUDA_VISIBLE_DEVICES=3``), and labelled so every GPU read "gpu0"."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
    return ids[index] if index < len(ids) else str(index)


# -- queue depth: `veil exporter` ------------------------------------------------------------------

QUEUE_DEPTH = "veil_queue_depth"
#: envelopes the workers could not decode, kept in this Redis list (``workers/envelopes.py``)
DEAD_LETTERS_LIST = "veil:deadletter"
DEAD_LETTERS = "veil_dead_letters"


class QueueDepthCollector(Collector):
    """``veil_queue_depth{queue}``: messages waiting in each Redis queue (every priority list:
    ``workers.transport.depths``), read at scrape time. Messages a worker has reserved
    (prefetched, unacknowledged) are not counted."""

    def __init__(self, redis_url: str, queues: Iterable[str], settings: Settings | None = None):
        from shared import redisconn

        self._client = redisconn.client(redis_url, settings)  # a scrape never waits forever
        self._queues = list(queues)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        from workers.transport import depths

        family = GaugeMetricFamily(QUEUE_DEPTH, "Messages waiting in each queue", labels=["queue"])
        # Redis down: the scrape fails (Prometheus marks it down)
        for queue, depth in depths(self._client, self._queues).items():
            family.add_metric([queue], depth)
        dead = self._client.llen(DEAD_LETTERS_LIST)
        yield family
        yield GaugeMetricFamily(
            DEAD_LETTERS, "Broker messages no worker could decode, kept for `veil deadletter`", value=dead
        )


def exported_samples() -> set[str]:
    """Every sample name these processes can export (``veil_images_total``,
    ``veil_stage_seconds_bucket``, ...): what a dashboard may query."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
    names = {QUEUE_DEPTH, DEAD_LETTERS}
    for family in REGISTRY.collect():
        if family.name.startswith("veil_"):
            names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def exporter_registry(redis_url: str, queues: Iterable[str], settings: Settings | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueDepthCollector(redis_url, queues, settings))
    return registry


def run_exporter(broker_url: str, queues: list[str], port: int, settings: Settings | None = None) -> None:
    """``veil exporter``: serves ``veil_queue_depth`` on ``port`` until killed."""
    import threading

    if not broker_url.startswith(("redis://", "rediss://")):
        raise ValueError("veil exporter reads queue depth from Redis: VEIL_BROKER_URL must be a redis:// URL")
    if port <= 0:
        raise ValueError("veil exporter needs a port: set VEIL_METRICS_PORT or --port")
    host = settings.metrics_host if settings is not None else "127.0.0.1"
    start_http_server(port, addr=host, registry=exporter_registry(broker_url, queues, settings))
    print(f"veil exporter: veil_queue_depth of {', '.join(queues)} on {host}:{port}/metrics", flush=True)
    threading.Event().wait()
