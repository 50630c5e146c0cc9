"""Object storage by URI: local paths, ``s3://bucket/key`` (AWS S3, MinIO, moto), and any scheme
registered with ``register_backend``.

Everything that depends on a URI's scheme lives here: which backend serves it, how a relative key
is joined onto a base, what key an object has under a listed root, and the I/O itself. Adding
``gs://`` or ``az://`` is one ``ObjectStoreBackend`` subclass (five I/O methods) and one
``register_backend`` call; no caller changes.

``open_storage(settings)`` builds one ``Storage`` that routes each URI to its backend.
Transient failures (S3 5xx, throttling, connection errors, a local I/O error) raise
``StorageError``; a refusal that retrying cannot change (a name too long, no such bucket, access
denied, a read-only filesystem) raises a ``StorageRefusedError`` subclass with its own reason code
(``LOCAL_REFUSALS``, ``S3_REFUSALS``); a full disk raises ``DiskFullError``; a missing object
raises ``FileNotFoundError``. Credentials come from the settings, never from messages.
``Storage.open_writer(uri)`` streams one object of any size with bounded memory (a temporary
file renamed into place; an S3 multipart upload, aborted on failure): nothing is visible under
``uri`` until the whole object is.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from shared.diskio import as_disk_full, write_then_rename
from shared.errors import (
    RETRY_POLICY,
    AccessDeniedError,
    InputError,
    InvalidBucketNameError,
    InvalidCredentialsError,
    InvalidNameError,
    IsADirectoryStorageError,
    NameTooLongError,
    NoSuchBucketError,
    NotADirectoryStorageError,
    ReadOnlyStorageError,
    RetryPolicy,
    StorageError,
    StorageRefusedError,
    UnsafeKeyError,
    call_with_retries,
)
from shared.settings import Settings

__all__ = [
    "Backend",
    "LOCAL_REFUSALS",
    "LocalBackend",
    "ObjectStoreBackend",
    "S3Backend",
    "Storage",
    "RESERVED_NAMES",
    "S3_REFUSALS",
    "backend_class",
    "check_key",
    "check_output_uri",
    "is_local",
    "is_under",
    "join_uri",
    "open_storage",
    "register_backend",
    "relative_key",
    "safe_join",
    "scheme_of",
    "split_uri",
]

LOCAL = ""  # the scheme of a plain filesystem path
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


#: one page of a listing (URIs)
KeyPage = list[str]

#: an S3 multipart upload's part (S3 needs >= 5 MiB for every part but the last)
PART_BYTES = 8 * 1024 * 1024


class Writer(Protocol):
    """What ``open_writer`` yields: bytes appended in order."""

    def write(self, data: bytes, /) -> Any: ...


class Backend(Protocol):
    """One storage scheme. Path logic is class-level (no client needed); I/O needs an instance."""

    scheme: ClassVar[str]

    def __init__(self, settings: Settings) -> None: ...

    @classmethod
    def join(cls, base: str, relative: str) -> str: ...
    @classmethod
    def relative_key(cls, root: str, uri: str) -> str: ...
    @classmethod
    def split(cls, uri: str) -> tuple[str, str]: ...
    @classmethod
    def is_under(cls, root: str, uri: str) -> bool: ...

    def read(self, uri: str) -> bytes: ...
    def write(self, uri: str, data: bytes, content_type: str | None = None) -> None: ...
    def exists(self, uri: str) -> bool: ...
    def delete(self, uri: str) -> None: ...
    def list(self, prefix: str) -> Iterator[str]: ...


#: local errno -> the permanent error it is (anything else but ENOENT and a full disk: ``StorageError``)
LOCAL_REFUSALS: dict[int, type[StorageRefusedError]] = {
    errno.ENAMETOOLONG: NameTooLongError,
    errno.EACCES: AccessDeniedError,
    errno.EPERM: AccessDeniedError,
    errno.EROFS: ReadOnlyStorageError,
    errno.ENOTDIR: NotADirectoryStorageError,
    errno.EEXIST: NotADirectoryStorageError,  # making a parent folder where a file is
    errno.EISDIR: IsADirectoryStorageError,
    errno.EINVAL: InvalidNameError,
    errno.EILSEQ: InvalidNameError,
}


def local_error(exc: OSError, uri: str) -> Exception:
    """What a local ``OSError`` means: ``FileNotFoundError`` as it is (a missing object), a
    ``StorageRefusedError`` subclass for a refusal (``LOCAL_REFUSALS``), ``StorageError`` otherwise."""
    if isinstance(exc, FileNotFoundError):
        return exc
    what = f"{uri}: {exc.strerror or exc}"
    refusal = LOCAL_REFUSALS.get(exc.errno or 0)
    return refusal(what) if refusal is not None else StorageError(what)


class LocalBackend:
    """Filesystem paths. ``list`` walks a folder recursively, in sorted order."""

    scheme: ClassVar[str] = LOCAL

    def __init__(self, settings: Settings | None = None) -> None:
        pass

    @classmethod
    def join(cls, base: str, relative: str) -> str:
        return str(Path(base) / relative)

    @classmethod
    def relative_key(cls, root: str, uri: str) -> str:
        root_path = Path(root)
        return Path(uri).name if root_path.is_file() else Path(uri).relative_to(root_path).as_posix()

    @classmethod
    def split(cls, uri: str) -> tuple[str, str]:
        return "", os.path.abspath(uri)

    @classmethod
    def is_under(cls, root: str, uri: str) -> bool:
        return os.path.isdir(root) and Path(uri).resolve().is_relative_to(Path(root).resolve())

    def read(self, uri: str) -> bytes:
        try:
            return Path(uri).read_bytes()
        except OSError as exc:
            raise local_error(exc, uri) from exc

    def write(self, uri: str, data: bytes, content_type: str | None = None) -> None:
        """Atomic: written to a temporary file, then renamed, so a crash leaves no half file.
        A full disk raises ``DiskFullError`` (from ``write_then_rename``)."""
        path = Path(uri)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # unique per call (threads of one process too) and short whatever the target's length
            tmp = path.with_name(f".veil-{uuid.uuid4().hex[:16]}.tmp")
            write_then_rename(tmp, path, data)  # the temporary file is removed on any failure
        except OSError as exc:
            raise local_error(exc, uri) from exc

    @contextmanager
    def open_writer(
        self, uri: str, content_type: str | None = None, *, policy: RetryPolicy | None = None
    ) -> Iterator[Writer]:
        """A file written through a temporary file beside it, fsynced and renamed onto ``uri``
        when the block ends; removed on any failure (a full disk: ``DiskFullError``)."""
        path = Path(uri)
        tmp = path.with_name(f".veil-{uuid.uuid4().hex[:16]}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                full = as_disk_full(exc, path)
                raise (full if full is not exc else local_error(exc, uri)) from exc
            raise

    def exists(self, uri: str) -> bool:
        try:
            return Path(uri).is_file()
        except OSError as exc:  # ENOENT and ENOTDIR are "no" already; a name too long is not
            raise local_error(exc, uri) from exc

    def delete(self, uri: str) -> None:
        try:
            Path(uri).unlink(missing_ok=True)
        except OSError as exc:
            raise local_error(exc, uri) from exc

    def list(self, prefix: str) -> Iterator[str]:
        root = Path(prefix)
        if root.is_file():
            yield str(root)
            return
        for path in sorted(root.rglob("*")):
            if path.is_file():
                yield str(path)


class ObjectStoreBackend:
    """Path logic shared by every ``scheme://bucket/key`` store; subclasses add the I/O."""

    scheme: ClassVar[str] = ""

    @classmethod
    def parse(cls, uri: str) -> tuple[str, str]:
        """``scheme://bucket/key`` -> (bucket, key)."""
        head = f"{cls.scheme}://"
        bucket, _, key = uri[len(head) :].partition("/") if uri.startswith(head) else ("", "", "")
        if not bucket:
            raise InputError(f"not a {head}bucket/key URI: {uri!r}")
        return bucket, key

    @classmethod
    def join(cls, base: str, relative: str) -> str:
        return base.rstrip("/") + "/" + relative.lstrip("/")

    @classmethod
    def relative_key(cls, root: str, uri: str) -> str:
        """The key below the root prefix; an object beside it (``in2/x`` under ``in``) keeps its name."""
        _, prefix = cls.parse(root)
        _, key = cls.parse(uri)
        base = prefix if prefix.endswith("/") or not prefix else prefix + "/"
        return key[len(base) :] if key.startswith(base) else key.rsplit("/", 1)[-1]

    @classmethod
    def split(cls, uri: str) -> tuple[str, str]:
        bucket, key = cls.parse(uri)
        return f"{cls.scheme}://{bucket}", "/" + key

    @classmethod
    def is_under(cls, root: str, uri: str) -> bool:
        return (uri.rstrip("/") + "/").startswith(root.rstrip("/") + "/")


#: S3 error code -> the permanent error it is. Not here: 404s (``FileNotFoundError``), 5xx,
#: throttling and 408/409/429 (``StorageError``), ``PreconditionFailed`` (``create`` reads it);
#: any other 4xx is a ``StorageRefusedError``, a 403 an ``AccessDeniedError``.
S3_REFUSALS: dict[str, type[StorageRefusedError]] = {
    "NoSuchBucket": NoSuchBucketError,
    "AccessDenied": AccessDeniedError,
    "AllAccessDisabled": AccessDeniedError,
    "AccountProblem": AccessDeniedError,
    "InvalidBucketName": InvalidBucketNameError,
    "KeyTooLongError": NameTooLongError,
    "InvalidAccessKeyId": InvalidCredentialsError,
    "SignatureDoesNotMatch": InvalidCredentialsError,
    "InvalidToken": InvalidCredentialsError,
    "ExpiredToken": InvalidCredentialsError,
}
_S3_TRANSIENT = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        "RequestTimeTooSkewed",
        "OperationAborted",
        "BadDigest",
        "IncompleteBody",
    }
)


def s3_error(code: str, status: int, where: str) -> Exception | None:
    """What an S3 error answer means (``None``: let the caller see the ``ClientError`` itself)."""
    if code in ("NoSuchKey", "404", "NotFound"):
        return FileNotFoundError(where)
    if code in ("PreconditionFailed", "412"):
        return None
    what = f"S3 {code or status} ({where})"
    if code in S3_REFUSALS:
        return S3_REFUSALS[code](what)
    if status >= 500 or status in (408, 409, 429) or code in _S3_TRANSIENT:
        return StorageError(what)
    if status == 403:
        return AccessDeniedError(what)
    if 400 <= status < 500:
        return StorageRefusedError(what)
    return StorageError(what)


class S3Backend(ObjectStoreBackend):
    scheme: ClassVar[str] = "s3"

    def __init__(self, settings: Settings):
        import boto3
        from botocore.config import Config

        key_id, secret = settings.s3_access_key_id, settings.s3_secret_access_key
        self._client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=key_id.get_secret_value() if key_id else None,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=32),
        )

    def _call(self, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, ParamValidationError

        where = "s3://" + str(kwargs.get("Bucket", "")) + "/" + str(kwargs.get("Key", kwargs.get("Prefix", "")))
        try:
            return fn(**kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            error = s3_error(code, status, where)
            if error is None:
                raise
            raise error from exc
        except ParamValidationError as exc:  # refused before sending: a bucket name S3 cannot have
            kind = InvalidBucketNameError if "bucket name" in str(exc).lower() else StorageRefusedError
            raise kind(f"{where}: {exc}") from exc
        except NoCredentialsError as exc:
            raise InvalidCredentialsError(f"{where}: {exc}") from exc
        except BotoCoreError as exc:  # connection reset, endpoint unreachable, read timeout
            raise StorageError(f"S3 connection: {type(exc).__name__} ({where})") from exc

    def read(self, uri: str) -> bytes:
        bucket, key = self.parse(uri)
        # the body is read inside ``_call``: a connection cut mid-body is a StorageError too
        return self._call(lambda **kw: self._client.get_object(**kw)["Body"].read(), Bucket=bucket, Key=key)

    def write(self, uri: str, data: bytes, content_type: str | None = None) -> None:
        bucket, key = self.parse(uri)
        extra = {"ContentType": content_type} if content_type else {}
        self._call(self._client.put_object, Bucket=bucket, Key=key, Body=data, **extra)

    @contextmanager
    def open_writer(
        self, uri: str, content_type: str | None = None, *, policy: RetryPolicy | None = None
    ) -> Iterator[Writer]:
        """One object streamed as a multipart upload (``PART_BYTES`` parts, each call retried
        per ``policy``), completed when the block ends; an object under one part is one PUT. On
        any failure the upload is aborted (best effort: with S3 unreachable an incomplete upload
        stays, invisible, until the bucket's lifecycle rule removes it) and nothing appears."""
        bucket, key = self.parse(uri)
        upload = _MultipartUpload(self, bucket, key, content_type, policy or RETRY_POLICY)
        try:
            yield upload
            upload.complete()
        except BaseException:
            upload.abort()
            raise

    def size(self, uri: str) -> int:
        """The object's length from a HEAD request, without reading it."""
        bucket, key = self.parse(uri)
        return int(self._call(self._client.head_object, Bucket=bucket, Key=key)["ContentLength"])

    def exists(self, uri: str) -> bool:
        bucket, key = self.parse(uri)
        try:
            self._call(self._client.head_object, Bucket=bucket, Key=key)
            return True
        except FileNotFoundError:
            return False

    def delete(self, uri: str) -> None:
        bucket, key = self.parse(uri)
        self._call(self._client.delete_object, Bucket=bucket, Key=key)

    def create(self, uri: str, data: bytes, content_type: str | None = None) -> bool:
        """Write only if no object has the key (``If-None-Match: *``); False if one has."""
        from botocore.exceptions import ClientError

        bucket, key = self.parse(uri)
        extra = {"ContentType": content_type} if content_type else {}
        try:
            self._call(self._client.put_object, Bucket=bucket, Key=key, Body=data, IfNoneMatch="*", **extra)
            return True
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in ("PreconditionFailed", "412"):
                return False
            raise

    def list(self, prefix: str) -> Iterator[str]:
        """Every key under ``prefix``, fetched a page at a time (``list_pages``), never held."""
        for page in self.list_pages(prefix):
            yield from page

    def list_pages(self, prefix: str, start_after: str = "", page_size: int = 1000) -> Iterator[KeyPage]:
        """The listing one page (up to ``page_size`` keys, at most S3's 1,000) at a time, each
        page fetched with retries as it is needed: never the whole listing in memory.
        ``start_after``: a URI already listed (a resumed listing continues after it; S3 lists
        keys in UTF-8 byte order)."""
        bucket, key_prefix = self.parse(prefix)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key_prefix, "MaxKeys": min(page_size, 1000)}
        if start_after:
            kwargs["StartAfter"] = self.parse(start_after)[1]
        while True:
            page = self._call(self._client.list_objects_v2, **kwargs)
            yield [f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]


class _MultipartUpload:
    """``S3Backend.open_writer``'s writer: buffers up to one part, uploads each full part."""

    def __init__(self, backend: S3Backend, bucket: str, key: str, content_type: str | None, policy: RetryPolicy):
        self._s3, self._bucket, self._key, self._policy = backend, bucket, key, policy
        self._extra = {"ContentType": content_type} if content_type else {}
        self._buf = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._upload_id: str | None = None

    def _call(self, fn: Any, **kwargs: Any) -> Any:
        return call_with_retries(lambda: self._s3._call(fn, **kwargs), self._policy)

    def write(self, data: bytes, /) -> int:
        self._buf += data
        while len(self._buf) >= PART_BYTES:
            self._upload(bytes(self._buf[:PART_BYTES]))
            del self._buf[:PART_BYTES]
        return len(data)

    def _upload(self, chunk: bytes) -> None:
        client = self._s3._client
        if self._upload_id is None:
            started = self._call(client.create_multipart_upload, Bucket=self._bucket, Key=self._key, **self._extra)
            self._upload_id = started["UploadId"]
        number = len(self._parts) + 1
        done = self._call(
            client.upload_part,
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=chunk,
        )
        self._parts.append({"PartNumber": number, "ETag": done["ETag"]})

    def complete(self) -> None:
        client = self._s3._client
        if self._upload_id is None:  # under one part: a plain PUT
            self._call(client.put_object, Bucket=self._bucket, Key=self._key, Body=bytes(self._buf), **self._extra)
            return
        if self._buf:
            self._upload(bytes(self._buf))
            self._buf.clear()
        self._call(
            client.complete_multipart_upload,
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )
        self._upload_id = None

    def abort(self) -> None:
        if self._upload_id is None:
            return
        try:
            self._s3._call(
                self._s3._client.abort_multipart_upload, Bucket=self._bucket, Key=self._key, UploadId=self._upload_id
            )
        except Exception as exc:  # noqa: BLE001 - S3 down: the incomplete upload stays invisible
            logging.getLogger(__name__).warning(
                "s3://%s/%s: multipart upload not aborted: %s", self._bucket, self._key, exc
            )
        self._upload_id = None


@contextmanager
def _buffered_writer(backend: Backend, uri: str, content_type: str | None) -> Iterator[Writer]:
    """For a backend without its own ``open_writer``: the object buffered, then one ``write``."""
    buf = bytearray()

    class _Buffer:
        def write(self, data: bytes, /) -> int:
            buf.extend(data)
            return len(data)

    yield _Buffer()
    backend.write(uri, bytes(buf), content_type)


#: scheme -> backend class; "" is a plain filesystem path.
_BACKENDS: dict[str, type[Backend]] = {LOCAL: LocalBackend, S3Backend.scheme: S3Backend}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Serve ``cls.scheme://`` URIs with ``cls`` (usable as a class decorator)."""
    _BACKENDS[cls.scheme] = cls
    return cls


def scheme_of(uri: str) -> str:
    """``s3`` for ``s3://b/k``; ``""`` for a filesystem path."""
    match = _SCHEME.match(uri)
    return match.group(1).lower() if match else LOCAL


def backend_class(uri: str) -> type[Backend]:
    scheme = scheme_of(uri)
    if scheme not in _BACKENDS:
        known = ", ".join(f"{s}://" for s in sorted(_BACKENDS) if s)
        raise InputError(f"{uri!r}: no storage backend for {scheme}:// (known: {known} and local paths)")
    return _BACKENDS[scheme]


def is_local(uri: str) -> bool:
    return scheme_of(uri) == LOCAL


def join_uri(base: str, relative: str) -> str:
    return backend_class(base).join(base, relative)


def relative_key(root: str, uri: str) -> str:
    """The key of ``uri`` (found by listing ``root``) relative to ``root``, in POSIX form."""
    return backend_class(root).relative_key(root, uri)


def split_uri(uri: str) -> tuple[str, str]:
    """(namespace, absolute POSIX path inside it): ``("s3://b", "/k")``, ``("", "/abs/path")``."""
    return backend_class(uri).split(uri)


def is_under(root: str, uri: str) -> bool:
    """Whether ``uri`` lies inside the folder or prefix ``root`` (never across schemes)."""
    return scheme_of(root) == scheme_of(uri) and backend_class(root).is_under(root, uri)


#: Names Veil writes at the top of an output root: no input key may map onto them.
RESERVED_NAMES = frozenset({"manifest.jsonl", "manifest.parts", ".veil.lock", "_veil"})  # _veil/JOB/: bulk jobs


def check_key(relative: str) -> str:
    """``relative`` if it is a safe relative key (POSIX ``/``-separated): not empty, not absolute,
    no NUL, no empty, ``.`` or ``..`` segment, and not under a reserved name. Raises
    ``UnsafeKeyError`` otherwise. Refusing rather than normalising: ``in//tmp/x.jpg`` and
    ``in/tmp/x.jpg`` are different objects, and must not share one output."""
    if not relative:
        raise UnsafeKeyError("empty key")
    if "\x00" in relative:
        raise UnsafeKeyError(f"key {relative!r} contains NUL")
    if relative.startswith("/"):
        raise UnsafeKeyError(f"key {relative!r} is absolute (an empty segment: '//' in the input key?)")
    parts = relative.split("/")
    for bad, what in (("..", "a '..'"), (".", "a '.'"), ("", "an empty")):
        if bad in parts:
            raise UnsafeKeyError(f"key {relative!r} has {what} segment")
    if parts[0] in RESERVED_NAMES:
        raise UnsafeKeyError(f"key {relative!r} would replace {parts[0]!r}, which veil writes in OUTPUT")
    return relative


def safe_join(root: str, relative: str) -> str:
    """``join_uri(root, relative)``, guaranteed to lie under ``root``: the key is checked by
    ``check_key``; a local root is made absolute and the joined path is resolved (symlinks
    included) and must stay inside the resolved root. Raises ``UnsafeKeyError``."""
    check_key(relative)
    if not is_local(root):
        return join_uri(root, relative)
    uri = os.path.join(os.path.abspath(root), relative)
    real_root = os.path.realpath(root)
    real = os.path.realpath(uri)
    if real == real_root or os.path.commonpath([real_root, real]) != real_root:
        raise UnsafeKeyError(f"key {relative!r} resolves to {real}, outside OUTPUT {root!r} (a symlink?)")
    return uri


def check_output_uri(uri: str) -> str:
    """The check a worker makes on a received message's ``output_uri`` (built by ``safe_join``;
    a message that was not is refused): no NUL; no empty, ``.`` or ``..`` segment in an object
    key; a local path absolute and already normal (``os.path.normpath``). Raises ``UnsafeKeyError``."""
    if "\x00" in uri:
        raise UnsafeKeyError(f"output_uri {uri!r} contains NUL")
    if is_local(uri):
        if not os.path.isabs(uri) or os.path.normpath(uri) != uri:
            raise UnsafeKeyError(f"output_uri {uri!r}: a local output must be an absolute, normal path")
        return uri
    key = backend_class(uri).split(uri)[1]
    if any(p in ("", ".", "..") for p in key.split("/")[1:]):
        raise UnsafeKeyError(f"output_uri {uri!r} has an empty, '.' or '..' segment")
    return uri


@dataclass
class Storage:
    """Routes each URI to its scheme's backend; each backend is built on first use."""

    settings: Settings
    _backends: dict[str, Backend] = field(default_factory=dict)

    def backend(self, uri: str) -> Backend:
        cls = backend_class(uri)
        if cls.scheme not in self._backends:
            self._backends[cls.scheme] = cls(self.settings)
        return self._backends[cls.scheme]

    def read(self, uri: str) -> bytes:
        return self.backend(uri).read(uri)

    def size(self, uri: str) -> int | None:
        """An object's length without reading it, where its backend can tell (S3: a HEAD)."""
        size = getattr(self.backend(uri), "size", None)
        return size(uri) if size is not None else None

    def write(self, uri: str, data: bytes, content_type: str | None = None) -> None:
        self.backend(uri).write(uri, data, content_type)

    def open_writer(self, uri: str, content_type: str | None = None, *, policy: RetryPolicy | None = None) -> Any:
        """A context manager yielding a ``Writer``: the object at ``uri`` appears whole when the
        block ends, or not at all (local: temp file + rename; S3: multipart upload)."""
        backend = self.backend(uri)
        opener = getattr(backend, "open_writer", None)
        if opener is None:
            return _buffered_writer(backend, uri, content_type)
        return opener(uri, content_type, policy=policy)

    def exists(self, uri: str) -> bool:
        return self.backend(uri).exists(uri)

    def delete(self, uri: str) -> None:
        self.backend(uri).delete(uri)

    def list(self, prefix: str) -> Iterator[str]:
        return self.backend(prefix).list(prefix)

    def list_pages(self, prefix: str, start_after: str = "", page_size: int = 1000) -> Iterator[KeyPage]:
        """``list`` in pages, resumable after ``start_after`` (a URI of an earlier page): S3 pages
        as the store returns them; other backends' listing sorted (as strings), cut into pages."""
        backend = self.backend(prefix)
        if hasattr(backend, "list_pages"):
            yield from backend.list_pages(prefix, start_after, page_size)
            return
        page: KeyPage = []
        for uri in sorted(backend.list(prefix)):
            if start_after and uri <= start_after:
                continue
            page.append(uri)
            if len(page) >= page_size:
                yield page
                page = []
        if page:
            yield page


def open_storage(settings: Settings) -> Storage:
    return Storage(settings)
