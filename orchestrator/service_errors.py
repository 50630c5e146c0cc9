"""One line, naming the setting to fix, for a service that is not there or refuses Veil.

Every ``veil`` subcommand that talks to Redis (the broker and the job store) or to S3 ends the
same way when that service is unreachable or refuses the credentials: ``veil: <what>`` on
stderr and exit code ``EXIT_SERVICE`` (4), instead of a page of chained tracebacks and exit 1
(which the README keeps for "some keys failed"). The exception's cause chain is searched, so a
Redis or botocore error wrapped by Veil (``BrokerError``, ``StorageError``) is found too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

from shared.errors import BrokerError, InvalidCredentialsError, StorageError

#: the exit code of a service failure (README: "Exit codes")
EXIT_SERVICE = 4


def service_error(exc: BaseException) -> str | None:
    """The line to print if ``exc`` (or its cause) is a service failure, else ``None``."""
    for e in _chain(exc):
        line = _redis(e) or _s3(e)
        if line:
            return line
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _redis(e: BaseException) -> str | None:
    import redis.exceptions as rx

    where = f"VEIL_BROKER_URL={redact(os.environ.get('VEIL_BROKER_URL', 'redis://localhost:6379/0'))}"
    if os.environ.get("VEIL_JOBS_URL"):
        where += f", VEIL_JOBS_URL={redact(os.environ['VEIL_JOBS_URL'])}"
    if isinstance(e, rx.AuthenticationError) or (
        isinstance(e, rx.ResponseError) and _first_line(e).startswith(("NOAUTH", "WRONGPASS", "NOPERM"))
    ):
        return f"Redis refused Veil's credentials ({where}): {_first_line(e)}"
    if isinstance(e, (rx.ConnectionError, rx.TimeoutError)):
        return f"cannot reach Redis ({where}): {_first_line(e)}"
    if isinstance(e, BrokerError):
        return f"cannot reach the broker ({where}): {_first_line(e)}"
    return None


def _s3(e: BaseException) -> str | None:
    endpoint = os.environ.get("VEIL_S3_ENDPOINT_URL") or "AWS's default endpoint"
    if isinstance(e, InvalidCredentialsError) or type(e).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
        return (
            f"S3 refused or found no credentials (set VEIL_S3_ACCESS_KEY_ID and VEIL_S3_SECRET_ACCESS_KEY; "
            f"endpoint {endpoint}): {_first_line(e)}"
        )
    if isinstance(e, StorageError) and _first_line(e).startswith("S3 connection"):
        return f"cannot reach S3 (VEIL_S3_ENDPOINT_URL={endpoint}): {_first_line(e)}"
    if type(e).__name__ in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
        return f"cannot reach S3 (VEIL_S3_ENDPOINT_URL={endpoint}): {_first_line(e)}"
    return None


def redact(url: str) -> str:
    """The URL with its password (if any) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))
