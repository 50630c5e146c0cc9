"""Object storage by URI: local paths and ``s3://bucket/key`` (AWS S3, MinIO, moto).

``open_storage(settings)`` builds one ``Storage`` that routes each URI to its backend.
Transient failures (S3 5xx, throttling, connection errors) raise ``StorageError``; a missing
object raises ``FileNotFoundError``. Credentials come from the settings, never from messages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol
from urllib.parse import urlparse

from shared.errors import StorageError
from shared.settings import Settings

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def join_uri(base: str, relative: str) -> str:
    if is_s3(base):
        return base.rstrip("/") + "/" + relative.lstrip("/")
    return str(Path(base) / relative)


class Backend(Protocol):
    def read(self, uri: str) -> bytes: ...
    def write(self, uri: str, data: bytes, content_type: str | None = None) -> None: ...
    def exists(self, uri: str) -> bool: ...
    def delete(self, uri: str) -> None: ...
    def list(self, prefix: str) -> Iterator[str]: ...


class LocalBackend:
    def read(self, uri: str) -> bytes:
        return Path(uri).read_bytes()

    def write(self, uri: str, data: bytes, content_type: str | None = None) -> None:
        """Atomic: written to a temporary file, then renamed, so a crash leaves no half file."""
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def exists(self, uri: str) -> bool:
        return Path(uri).is_file()

    def delete(self, uri: str) -> None:
        Path(uri).unlink(missing_ok=True)

    def list(self, prefix: str) -> Iterator[str]:
        root = Path(prefix)
        if root.is_file():
            yield str(root)
            return
        for path in sorted(root.rglob("*")):
            if path.is_file():
                yield str(path)


class S3Backend:
    def __init__(self, settings: Settings):
        import boto3
        from botocore.config import Config

        self._client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id.get_secret_value() if settings.s3_access_key_id else None,
            aws_secret_access_key=settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=32),
        )

    def _call(self, fn, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(kwargs.get("Key", "")) from exc
            if status >= 500 or code in ("SlowDown", "RequestTimeout", "Throttling"):
                raise StorageError(f"S3 {code or status}") from exc
            raise
        except BotoCoreError as exc:  # connection reset, endpoint unreachable, read timeout
            raise StorageError(f"S3 connection: {type(exc).__name__}") from exc

    def read(self, uri: str) -> bytes:
        bucket, key = split_s3(uri)
        return self._call(self._client.get_object, Bucket=bucket, Key=key)["Body"].read()

    def write(self, uri: str, data: bytes, content_type: str | None = None) -> None:
        bucket, key = split_s3(uri)
        extra = {"ContentType": content_type} if content_type else {}
        self._call(self._client.put_object, Bucket=bucket, Key=key, Body=data, **extra)

    def exists(self, uri: str) -> bool:
        bucket, key = split_s3(uri)
        try:
            self._call(self._client.head_object, Bucket=bucket, Key=key)
            return True
        except FileNotFoundError:
            return False

    def delete(self, uri: str) -> None:
        bucket, key = split_s3(uri)
        self._call(self._client.delete_object, Bucket=bucket, Key=key)

    def list(self, prefix: str) -> Iterator[str]:
        bucket, key_prefix = split_s3(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        for page in self._call(lambda **kw: list(paginator.paginate(**kw)), Bucket=bucket, Prefix=key_prefix):
            for obj in page.get("Contents", []):
                yield f"s3://{bucket}/{obj['Key']}"


@dataclass
class Storage:
    """Routes each URI to the local or the S3 backend (S3 client built on first use)."""

    settings: Settings
    _local: LocalBackend = None  # type: ignore[assignment]
    _s3: S3Backend | None = None

    def __post_init__(self) -> None:
        self._local = LocalBackend()

    def backend(self, uri: str) -> Backend:
        if is_s3(uri):
            if self._s3 is None:
                self._s3 = S3Backend(self.settings)
            return self._s3
        return self._local

    def read(self, uri: str) -> bytes:
        return self.backend(uri).read(uri)

    def write(self, uri: str, data: bytes, content_type: str | None = None) -> None:
        self.backend(uri).write(uri, data, content_type)

    def exists(self, uri: str) -> bool:
        return self.backend(uri).exists(uri)

    def delete(self, uri: str) -> None:
        self.backend(uri).delete(uri)

    def list(self, prefix: str) -> Iterator[str]:
        return self.backend(prefix).list(prefix)


def open_storage(settings: Settings) -> Storage:
    return Storage(settings)
