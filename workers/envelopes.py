"""Poison envelopes never kill a worker (issue 23). kombu's Redis transport pops a message with
BRPOP and parses its envelope (JSON, then the body's ``base64``) inside the worker's event loop,
before Celery or Veil sees it (``kombu.transport.redis.Channel._brpop_read``: ``loads(item)``;
``kombu.transport.virtual.base.Message``: ``channel.decode_body``). An exception there is not a
task's: ``LPUSH veil.gpu garbage`` ended the worker with ``Unrecoverable error: JSONDecodeError``.

The workers' transport (``workers.redis_transport``) parses each envelope with ``parse``: an envelope longer than
``VEIL_MAX_MESSAGE_BYTES``, not JSON, not kombu's shape, or whose body does not decode is logged,
counted (``veil_failures_total{reason="bad_envelope"}`` or ``message_too_large``) and moved to the
dead-letter list ``veil:deadletter`` (its first ``KEPT_BYTES`` bytes; the list holds the last
``DEAD_LETTER_MAX``), which ``veil deadletter`` shows and purges; the worker goes on.
A body that decodes but is not a Celery task (wrong JSON inside) is Celery's own case: it logs
and acknowledges it (``on_unknown_message``, ``on_decode_error``) without stopping.

With message signing on (``VEIL_SECURITY_*``, SECURITY.md) the same step checks the signature:
a message that is not signed (content type other than the ``auth`` serializer's) is
dead-lettered as ``unsigned``, one whose signature does not verify against a certificate of
``VEIL_SECURITY_CERT_STORE`` (a changed body, another key, an unknown signer) as
``bad_signature``; neither reaches Celery, so neither runs. Celery would refuse both too
(``accept_content=["auth"]``), but as a decode error it only logs, and the GPU tier's
celery-batches decodes in the consumer itself.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from kombu.serialization import registry
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from shared.errors import BadEnvelopeError
from workers import metrics
from workers.transport import SIGNED_CONTENT_TYPE

log = logging.getLogger(__name__)

DEAD_LETTERS = metrics.DEAD_LETTERS_LIST
DEAD_LETTER_MAX = 1000
KEPT_BYTES = 4096


class _Limits:
    """Set once at start-up by ``configure`` (the transport is built by kombu, not by us)."""

    max_bytes: int = 1 * 2**20
    tier: str = "cpu"
    signed: bool = False


def configure(max_bytes: int, tier: str, *, signed: bool = False) -> None:
    _Limits.max_bytes, _Limits.tier, _Limits.signed = max_bytes, tier, signed


def parse(item: bytes | str, channel: Any) -> dict:
    """The envelope of ``item`` as kombu's ``_deliver`` wants it, or ``BadEnvelopeError``."""
    if len(item) > _Limits.max_bytes:
        raise BadEnvelopeError("message_too_large", f"{len(item)} bytes > VEIL_MAX_MESSAGE_BYTES={_Limits.max_bytes}")
    try:
        payload = loads(bytes_to_str(item))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadEnvelopeError("bad_envelope", f"not JSON ({type(exc).__name__})") from None
    props = payload.get("properties") if isinstance(payload, dict) else None
    if not isinstance(props, dict) or "delivery_tag" not in props or not isinstance(props.get("delivery_info"), dict):
        raise BadEnvelopeError("bad_envelope", "not a kombu envelope (properties, delivery_tag, delivery_info)")
    body = payload.get("body")
    if body:
        try:
            body = channel.decode_body(body, props.get("body_encoding"))
        except Exception as exc:  # noqa: BLE001 - any codec's error: the body does not decode
            raise BadEnvelopeError("bad_envelope", f"body does not decode ({type(exc).__name__})") from None
    if _Limits.signed:
        check_signature(payload.get("content-type"), payload.get("content-encoding"), body)
    return payload


def check_signature(content_type: object, content_encoding: object, body: object) -> None:
    """``unsigned`` or ``bad_signature`` unless ``body`` is the ``auth`` serializer's and its
    signature verifies against the store ``app.setup_security`` registered (Celery's own
    ``SecureSerializer.deserialize``: the signer's certificate looked up by issuer and serial)."""
    if content_type != SIGNED_CONTENT_TYPE or not body:
        raise BadEnvelopeError("unsigned", f"content type {content_type!r}, not a signed message")
    try:
        registry.loads(body, SIGNED_CONTENT_TYPE, str(content_encoding or "utf-8"), accept=["auth"])
    except Exception as exc:  # noqa: BLE001 - Celery's SecurityError, wrapped by kombu as DecodeError
        # (Celery 5.6 reports a wrong signature as a TypeError of its own error handling)
        raise BadEnvelopeError("bad_signature", f"the signature does not verify: {str(exc)[:300]}") from None


def dead_letter(client: Any, queue: str, item: bytes | str, error: BadEnvelopeError) -> None:
    """Logs, counts and keeps (the head of) a refused envelope; never raises."""
    raw = item if isinstance(item, bytes) else item.encode("utf-8", "surrogateescape")
    log.error("dead-lettered a message from %s (%d bytes): %s", queue, len(raw), error)
    metrics.failure(_Limits.tier, error.reason)
    entry = json.dumps(
        {
            "time": time.time(),
            "queue": queue,
            "reason": error.reason,
            "error": str(error),
            "bytes": len(raw),
            "head": raw[:KEPT_BYTES].decode("utf-8", "backslashreplace"),
        }
    )
    try:
        with client.pipeline() as pipe:
            pipe.lpush(DEAD_LETTERS, entry)
            pipe.ltrim(DEAD_LETTERS, 0, DEAD_LETTER_MAX - 1)
            pipe.execute()
    except Exception:  # noqa: BLE001 - Redis down: the log line is what remains
        log.warning("dead letter not stored", exc_info=True)


def read(client: Any, n: int = 20) -> tuple[int, list[dict]]:
    """How many dead letters there are, and the newest ``n``."""
    total = client.llen(DEAD_LETTERS)
    entries = []
    for raw in client.lrange(DEAD_LETTERS, 0, max(0, n - 1)) if n else []:
        try:
            entries.append(json.loads(raw))
        except ValueError:
            entries.append({"head": repr(raw)})
    return total, entries


def purge(client: Any) -> int:
    with client.pipeline() as pipe:
        pipe.llen(DEAD_LETTERS)
        pipe.delete(DEAD_LETTERS)
        return int(pipe.execute()[0])
