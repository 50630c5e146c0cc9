"""Every Redis connection Veil opens, with the same bounds (workers survive a partition).

A network partition leaves TCP connections half-open: no RST, no FIN, the peer just goes
silent. Without a socket timeout a blocking read on such a connection waits forever (seen:
both tiers stuck in kombu's close path on a BRPOP read, SIGTERM ignored). So every connection,
Celery's broker connections (``transport_options``, used by ``workers/celery_app.py``) and
Veil's own clients (``client``: the job store, the feeder through it, the exporter, ``veil
status``, the health check), gets:

- ``socket_timeout`` (``VEIL_REDIS_SOCKET_TIMEOUT_S``, 5 s): a read or write waits at most this;
- ``socket_connect_timeout`` (``VEIL_REDIS_CONNECT_TIMEOUT_S``, 5 s);
- TCP keepalive (``VEIL_REDIS_KEEPALIVE_S``, 10 s idle, 3 probes at a third of it) and
  ``TCP_USER_TIMEOUT`` (2x it): the kernel drops a connection to a vanished peer in ~20 s;
- ``health_check_interval`` (``VEIL_REDIS_HEALTH_CHECK_INTERVAL_S``, 10 s): redis-py PINGs a
  connection idle longer than this before using it; kombu (>= 5.7) drops a BRPOP connection
  whose reply is overdue by ``brpop_timeout`` (1 s) + this, checked this often.

The bound, a half-open connection noticed within 30 s: a consumer's BRPOP within
1 + 2 x 10 = 21 s (kombu's check; the kernel's keepalive too in a real partition); a command on
one of Veil's clients within 2 x 5 s + 5 s (one retry on a fresh connection, then
``redis.ConnectionError`` / ``TimeoutError`` reach ``RETRY_POLICY``); Celery's publish and close
paths within 5 s per read. Worker heartbeats are sent once, not retried forever
(``workers/celery_app.py``), and SIGTERM with the broker silent ends a worker within
``workers/shutdown.py``'s limit (20 s of silence).
"""

from __future__ import annotations

import socket
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.settings import Settings

#: kombu's Redis transport polls with ``BRPOP ... timeout`` of this many seconds (its default
#: ``brpop_timeout``); the socket timeout must exceed it or every idle poll times out.
KOMBU_BRPOP_TIMEOUT_S = 1


def _value(settings: Settings | None, name: str) -> Any:
    if settings is not None:
        return getattr(settings, name)
    return Settings.model_fields[name].default  # no settings at hand: the documented defaults


def keepalive_options(keepalive_s: int) -> dict[int, int]:
    """TCP keepalive socket options (those this platform has): idle ``keepalive_s``, then 3 probes
    ``keepalive_s / 3`` apart; unacknowledged data is given up after ``2 x keepalive_s``."""
    interval = max(1, round(keepalive_s / 3))
    wanted = {
        "TCP_KEEPIDLE": keepalive_s,
        "TCP_KEEPINTVL": interval,
        "TCP_KEEPCNT": 3,
        "TCP_USER_TIMEOUT": 2 * keepalive_s * 1000,  # milliseconds
    }
    return {getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)}


def connection_kwargs(settings: Settings | None = None) -> dict[str, Any]:
    """The socket bounds, as both redis-py and kombu's Redis transport name them."""
    timeout = float(_value(settings, "redis_socket_timeout_s"))
    if timeout <= KOMBU_BRPOP_TIMEOUT_S:
        raise ValueError(f"VEIL_REDIS_SOCKET_TIMEOUT_S must exceed kombu's BRPOP poll ({KOMBU_BRPOP_TIMEOUT_S} s)")
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": float(_value(settings, "redis_connect_timeout_s")),
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive_options(int(_value(settings, "redis_keepalive_s"))),
        "health_check_interval": int(_value(settings, "redis_health_check_interval_s")),
    }


def transport_options(settings: Settings) -> dict[str, Any]:
    """For Celery's ``broker_transport_options`` (kombu's Redis transport passes them on to
    redis-py). ``retry_on_timeout`` stays off: a publish that times out is retried by Celery's
    own publish retry on a fresh connection, and the consumer's BRPOP is not a retried command."""
    return connection_kwargs(settings)


#: the TLS options a ``rediss://`` URL may carry in its query (redis-py's names)
_TLS_QUERY = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")


def tls_options(url: str) -> dict[str, Any] | None:
    """The TLS options of a ``rediss://`` URL's query as Celery's ``broker_use_ssl`` wants them,
    or None for ``redis://``. redis-py and kombu read them from the URL, but Flower's Broker tab
    (``flower.utils.broker.RedisSsl``) reads only ``broker_use_ssl``: without it Flower did not
    use the URL's CA (``CERTIFICATE_VERIFY_FAILED``, issue 23)."""
    import ssl
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return None
    query = {k: v[-1] for k, v in parse_qs(parts.query).items() if k in _TLS_QUERY}
    reqs = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
    cert_reqs = query.pop("ssl_cert_reqs", "required").lower()
    options: dict[str, Any] = {"ssl_cert_reqs": reqs.get(cert_reqs, ssl.CERT_REQUIRED)}
    if "ssl_check_hostname" in query:
        options["ssl_check_hostname"] = query.pop("ssl_check_hostname").lower() in ("1", "true", "yes")
    return options | query


def client(url: str, settings: Settings | None = None, *, decode_responses: bool = False) -> redis.Redis:
    """A redis-py client for ``url`` with the bounds above. A command is tried at most twice (the
    second time on a fresh connection, which covers a Redis restart); redis-py's default is 10
    retries, which would turn a 5 s timeout into a minute."""
    return redis.Redis.from_url(
        url,
        decode_responses=decode_responses,
        retry=Retry(NoBackoff(), 1),
        **connection_kwargs(settings),
    )
