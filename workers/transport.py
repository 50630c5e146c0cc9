"""Celery's Redis transport, as Veil relies on it: the one module that knows how kombu lays a
queue out in Redis and what a Celery message looks like there. The feeder, ``veil exporter``,
``veil status``, ``veil cancel``, the Celery app's queue declarations and the KEDA manifests
(``deploy/k8s/base/keda.yaml``: the list each ScaledObject watches) all take it from here.

- **Queues.** Each queue is declared on its own direct exchange (``declare``). kombu keeps queue
  ``Q`` as Redis LISTs in the broker URL's database: ``Q`` for priority 0 and ``Q\\x06\\x16P``
  for each other step P of its ``priority_steps`` (0, 3, 6, 9); a message of priority p goes to
  the highest step <= p (``list_name``), and workers pop step 0 first. Veil sends no priority,
  so its messages wait in the plain list ``Q`` (what KEDA counts), but a message another client
  sends with a priority waits in a suffixed list, so depth sums them all (``depths``).
- **Unacknowledged.** A message a worker has reserved (prefetched or running) leaves the lists
  for the ``unacked`` hash (all queues together) until it is acknowledged, or restored to its
  list after the visibility timeout (``UNACKED``, ``queue_depth``).
- **Messages.** JSON: ``headers`` (task name, ids, ``argsrepr``...), ``properties`` (priority,
  delivery info, ``body_encoding: base64``) and ``body``: base64 of the JSON
  ``[args, kwargs, embed]`` of Celery's task protocol 2. ``CeleryMessages`` builds them byte for
  byte as ``send_task`` does (the feeder pushes them itself); ``task_args`` reads one back.

Checked against kombu and Celery themselves (real Redis, messages sent by ``send_task`` at
several priorities, a message reserved and acknowledged): ``tests/integration/test_transport.py``.
"""

from __future__ import annotations

import base64
import bisect
import json
import os
import random
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from kombu import Exchange, Queue

if TYPE_CHECKING:
    import redis
    from celery import Celery

    from shared.messages import ImageTask
    from shared.settings import Settings

#: kombu's Redis transport: the separator of a priority list's name (``Channel.sep``)
PRIORITY_SEP = "\x06\x16"
#: kombu's Redis transport: the priorities that have a list of their own (``Channel.priority_steps``)
PRIORITY_STEPS = (0, 3, 6, 9)
#: kombu's Redis transport: the hash of delivered, not yet acknowledged messages (all queues)
UNACKED = "unacked"


def declare(name: str) -> Queue:
    """Queue ``name`` bound to its own direct exchange by routing key ``name``. With Celery's
    shared default exchange both queues were bound to the same routing key and every message
    reached both tiers."""
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def list_name(queue: str, priority: int = 0) -> str:
    """The Redis list that holds ``queue``'s messages of ``priority`` (kombu's ``_q_for_pri``)."""
    step = PRIORITY_STEPS[bisect.bisect(PRIORITY_STEPS, max(0, priority)) - 1]
    return f"{queue}{PRIORITY_SEP}{step}" if step else queue


def list_names(queue: str) -> list[str]:
    """Every Redis list of ``queue``, in the order workers pop them (priority 0 first)."""
    return [list_name(queue, p) for p in PRIORITY_STEPS]


def depths(r: redis.Redis, queues: Iterable[str]) -> dict[str, int]:
    """Messages waiting in each queue (every priority list), in one round trip. Reserved
    (unacknowledged) messages are not in any list, so not counted."""
    queues = list(queues)
    pipe = r.pipeline(transaction=False)
    for queue in queues:
        for name in list_names(queue):
            pipe.llen(name)
    lengths = [int(n) for n in pipe.execute()]
    steps = len(PRIORITY_STEPS)
    return {queue: sum(lengths[i * steps : (i + 1) * steps]) for i, queue in enumerate(queues)}


def unacked(r: redis.Redis) -> int:
    """Messages reserved by workers and not yet acknowledged (every queue of this database)."""
    return int(r.hlen(UNACKED))  # type: ignore[arg-type]


def queue_depth(r: redis.Redis, settings: Settings) -> dict[str, int]:
    """Messages waiting in ``veil.cpu``, in ``veil.gpu`` (every priority list), and held
    unacknowledged by workers: what the feeder's window counts and ``veil status`` shows."""
    waiting = depths(r, [settings.cpu_queue, settings.gpu_queue])
    return {"cpu": waiting[settings.cpu_queue], "gpu": waiting[settings.gpu_queue], "unacked": unacked(r)}


#: Celery's ``auth`` serializer (signed messages, SECURITY.md): its content type, and the
#: separator of its fields (``celery.security.serialization``: base64 of signer, signature,
#: content type, content encoding and the JSON body, joined by it)
SIGNED_CONTENT_TYPE = "application/data"
SIGNED_SEPARATOR = b"\x00\x01"


def task_args(raw: bytes | str) -> list[Any]:
    """The positional arguments of a Celery message as it lies in a queue list, signed or not (a
    signature is not verified here: the workers verify; this only finds a job's messages). Raises
    ``ValueError`` (JSON, base64) or ``KeyError``/``TypeError``/``IndexError`` for anything else."""
    message = json.loads(raw)
    body = base64.b64decode(message["body"])
    if message.get("content-type") == SIGNED_CONTENT_TYPE:
        body = base64.b64decode(body).split(SIGNED_SEPARATOR, 4)[4]
    args = json.loads(body)[0]
    if not isinstance(args, list):
        raise TypeError(f"a protocol-2 body starts with a list of args, not {type(args).__name__}")
    return args


def job_of(raw: bytes | str) -> str | None:
    """The job id of a message whose first argument is a Veil task (``ImageTask``,
    ``PromptTask``, ``FinalizeTask``...), or None for any other message."""
    try:
        args = task_args(raw)
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    job_id = args[0].get("job_id") if args and isinstance(args[0], dict) else None
    return job_id if isinstance(job_id, str) else None


def drop_job_messages(r: redis.Redis, queue: str, job_id: str) -> int:
    """Removes one job's messages from every list of a queue (``veil cancel``): each message is
    read (the feeder's window bounds how many there are) and the job's are removed by value, so
    a worker taking one at the same moment is harmless. Messages a worker already holds are
    dropped by the worker itself (``JobStore.is_cancelled``)."""
    removed = 0
    for name in list_names(queue):
        for raw in r.lrange(name, 0, -1):  # type: ignore[union-attr]
            if job_of(raw) == job_id:
                removed += int(r.lrem(name, 1, raw))  # type: ignore[arg-type]
    return removed


_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class CeleryMessages:
    """Protocol-2 messages for ``task`` exactly as ``app.send_task(task, args=[...], queue=Q)``
    writes them through kombu's Redis transport (``celery.app.amqp.as_task_v2``, kombu's
    ``Channel.prepare_message``/``_inplace_augment_message``): JSON body, base64 body encoding,
    priority 0 (so they belong in ``list_name(Q)``), anonymous exchange, routing key Q. Built
    from one JSON template (only the ids, ``argsrepr`` and the body change per message);
    ``argsrepr`` is ``repr`` cut at Celery's ``argsrepr_maxsize`` (what ``saferepr`` gives for
    these plain dicts, at 1/50 of its cost); the ids are random version-4 UUIDs from a generator
    seeded once from the OS (unique, not secret: ``os.urandom`` per id was a third of the
    feeder's time). With signing on (``app.conf.task_serializer == "auth"``, after
    ``app.setup_security``) each body is signed by kombu's registered ``auth`` serializer, as
    ``send_task`` signs it, with its content type."""

    _FIELDS = ("@@ID@@", "@@ARGSREPR@@", "@@BODY@@", "@@TAG@@")
    PRIORITY = 0

    def __init__(self, app: Celery, task: str, queue: str):
        from celery.utils.nodenames import anon_nodename

        self.maxsize = app.amqp.argsrepr_maxsize
        self.redis_list = list_name(queue, self.PRIORITY)
        self._random = random.Random(os.urandom(32))
        task_id, argsrepr, body, tag = self._FIELDS
        headers = {
            "lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None, "expires": None,
            "group": None, "group_index": None, "retries": 0, "timelimit": [None, None], "root_id": task_id,
            "parent_id": None, "argsrepr": argsrepr, "kwargsrepr": "{}", "origin": anon_nodename(),
            "ignore_result": False, "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
        }  # fmt: skip
        properties = {
            "correlation_id": task_id, "reply_to": app.thread_oid, "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue}, "priority": self.PRIORITY,
            "body_encoding": "base64", "delivery_tag": tag,
        }  # fmt: skip
        self._signed = app.conf.task_serializer == "auth"
        content_type = SIGNED_CONTENT_TYPE if self._signed else "application/json"
        message = {"body": body, "content-encoding": "utf-8", "content-type": content_type,
                   "headers": headers, "properties": properties}  # fmt: skip
        template = json.dumps(message).replace("{", "{{").replace("}", "}}")
        for i, name in enumerate(self._FIELDS):
            template = template.replace(name, f"{{{i}}}")
        self._template = template

    def _uuid4(self) -> str:
        n = self._random.getrandbits(128) & ~(0xF000 << 64) & ~(0xC000 << 48) | (0x4000 << 64) | (0x8000 << 48)
        h = f"{n:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def build(self, task: ImageTask) -> str:
        args = [task.model_dump(mode="json")]
        argsrepr = repr(args)
        if len(argsrepr) > self.maxsize:
            argsrepr = argsrepr[: self.maxsize - 3] + "..."
        if self._signed:
            from kombu.serialization import registry

            _, _, signed = registry.dumps([args, {}, _EMBED], serializer="auth")
            body = base64.b64encode(signed if isinstance(signed, bytes) else signed.encode()).decode()
        else:
            body = base64.b64encode(json.dumps([args, {}, _EMBED]).encode()).decode()
        return self._template.format(self._uuid4(), json.dumps(argsrepr)[1:-1], body, self._uuid4())
