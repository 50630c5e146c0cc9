"""Storage errors classified where they arise (``shared/storage.py``): a refusal that retrying
cannot change is a ``StorageRefusedError`` subclass with its own reason code, so a worker ends the
key failed at once instead of sending it again forever (issue 18); what may pass stays a
transient ``StorageError``; a missing object stays ``FileNotFoundError``. Local cases on a real
filesystem where the machine can make them (root ignores permission bits, so EACCES and EROFS
are classified from the errno alone); S3 codes through the one table ``_call`` uses, and a real
boto3 client for what botocore refuses before sending."""

from __future__ import annotations

import errno
import os

import pytest

from shared.errors import (
    AccessDeniedError,
    InvalidBucketNameError,
    InvalidCredentialsError,
    IsADirectoryStorageError,
    NameTooLongError,
    NoSuchBucketError,
    NotADirectoryStorageError,
    PermanentError,
    ReadOnlyStorageError,
    StorageError,
    StorageRefusedError,
    TransientError,
)
from shared.settings import Settings
from shared.storage import LocalBackend, S3Backend, local_error, s3_error

LONG = "x" * 248 + ".jpg"  # 252 bytes: the filesystem holds it; its sidecar (+ ".json", 257) it cannot


def test_a_name_too_long_is_permanent_on_read_write_and_exists(tmp_path):
    local = LocalBackend()
    (tmp_path / LONG).write_bytes(b"ok")  # the limit is 255 bytes
    sidecar = str(tmp_path / (LONG + ".json"))
    for call in (lambda: local.read(sidecar), lambda: local.write(sidecar, b"{}"), lambda: local.exists(sidecar)):
        with pytest.raises(NameTooLongError) as err:
            call()
        assert err.value.reason == "name_too_long" and isinstance(err.value, PermanentError)
    assert sorted(os.listdir(tmp_path)) == [LONG]  # no temporary file left behind


def test_a_file_where_a_folder_should_be_is_permanent(tmp_path):
    local = LocalBackend()
    (tmp_path / "a").write_bytes(b"a file")
    with pytest.raises(NotADirectoryStorageError):  # mkdir of OUT/a: EEXIST (a file is there)
        local.write(str(tmp_path / "a" / "b.jpg"), b"x")
    with pytest.raises(NotADirectoryStorageError):  # mkdir of OUT/a/b: ENOTDIR
        local.write(str(tmp_path / "a" / "b" / "c.jpg"), b"x")
    with pytest.raises(NotADirectoryStorageError):
        local.read(str(tmp_path / "a" / "b.jpg.json"))
    (tmp_path / "d.jpg").mkdir()
    with pytest.raises(IsADirectoryStorageError):
        local.read(str(tmp_path / "d.jpg"))
    with pytest.raises(IsADirectoryStorageError):
        local.write(str(tmp_path / "d.jpg"), b"x")  # rename onto a folder


def test_a_missing_file_is_still_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        LocalBackend().read(str(tmp_path / "nope.json"))
    assert LocalBackend().exists(str(tmp_path / "nope" / "x.json")) is False


@pytest.mark.parametrize(
    ("code", "kind", "reason"),
    [
        (errno.ENAMETOOLONG, NameTooLongError, "name_too_long"),
        (errno.EACCES, AccessDeniedError, "access_denied"),
        (errno.EPERM, AccessDeniedError, "access_denied"),
        (errno.EROFS, ReadOnlyStorageError, "read_only"),
        (errno.ENOTDIR, NotADirectoryStorageError, "not_a_directory"),
        (errno.EISDIR, IsADirectoryStorageError, "is_a_directory"),
        (errno.EIO, StorageError, "storage"),  # may pass: transient
        (errno.ESTALE, StorageError, "storage"),
    ],
)
def test_local_errno_table(code, kind, reason):
    error = local_error(OSError(code, os.strerror(code)), "/out/x.jpg")
    assert type(error) is kind and error.reason == reason and "/out/x.jpg" in str(error)


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("NoSuchBucket", 404, NoSuchBucketError),
        ("AccessDenied", 403, AccessDeniedError),
        ("403", 403, AccessDeniedError),  # a HEAD's 403 has no body, hence no code
        ("InvalidBucketName", 400, InvalidBucketNameError),
        ("KeyTooLongError", 400, NameTooLongError),
        ("InvalidAccessKeyId", 403, InvalidCredentialsError),
        ("SignatureDoesNotMatch", 403, InvalidCredentialsError),
        ("InvalidArgument", 400, StorageRefusedError),  # a 4xx no table names: still permanent
        ("InternalError", 500, StorageError),
        ("ServiceUnavailable", 503, StorageError),
        ("SlowDown", 503, StorageError),
        ("RequestTimeout", 400, StorageError),
        ("TooManyRequests", 429, StorageError),
        ("OperationAborted", 409, StorageError),
    ],
)
def test_s3_code_table(code, status, kind):
    error = s3_error(code, status, "s3://b/k")
    assert type(error) is kind
    assert isinstance(error, PermanentError) != isinstance(error, TransientError)


def test_s3_missing_key_and_precondition():
    assert isinstance(s3_error("NoSuchKey", 404, "s3://b/k"), FileNotFoundError)
    assert isinstance(s3_error("404", 404, "s3://b/k"), FileNotFoundError)
    assert s3_error("PreconditionFailed", 412, "s3://b/k") is None  # ``create`` reads the ClientError


def test_botocore_refusals_before_sending():
    """A real boto3 client; botocore refuses these before any request (the endpoint is unused)."""
    settings = Settings.from_env(
        {}, s3_endpoint_url="http://127.0.0.1:9", s3_access_key_id="k", s3_secret_access_key="s"
    )
    s3 = S3Backend(settings)
    with pytest.raises(InvalidBucketNameError):
        s3.write("s3://no spaces allowed/k.jpg", b"x")
    with pytest.raises(InvalidBucketNameError):
        s3.read("s3://bad!bucket/k.jpg.json")
