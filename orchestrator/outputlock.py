"""One ``veil run`` per OUTPUT: a lock taken before any model loads, held until the run ends.

Local OUTPUT: ``OUTPUT/.veil.lock`` held with ``fcntl.flock``. The kernel drops the lock when the
process ends, however it ends, so a crashed run never leaves a stale lock; the file holds the
owner's host and pid for the message. A run that ends removes the file while it still holds the
lock; a run that locked a file already removed (it opened the path just before) sees that the
path no longer names the file it locked and starts again, so two runs never hold two different
files. On NFS, flock is only as good as the server's lock support.

Object-store OUTPUT (``s3://``): a lock object ``OUTPUT/.veil.lock`` created only if absent
(``PUT`` with ``If-None-Match: *``, atomic on S3, MinIO and moto), holding the owner's host, pid
and start time, deleted when the run ends. Stale rule: a lock whose owner is on this host and no
longer alive is taken over; a lock from another host is never guessed stale: the message names
the object to delete once that run is known to be gone. Backends without a conditional create
fall back to exists-then-write (not atomic; stated in the message of ``_create``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from shared.errors import InputError, OutputInUseError, StorageError
from shared.storage import Storage, is_local, join_uri

LOCK_NAME = ".veil.lock"

log = logging.getLogger(__name__)


def _owner() -> dict[str, object]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}


def _describe(text: str) -> str:
    try:
        owner = json.loads(text)
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner["started"])))
        return f"pid {owner['pid']} on {owner['host']}, started {started}"
    except (ValueError, KeyError, TypeError):
        return "owner unknown"


@contextmanager
def output_lock(output: str, storage: Storage) -> Iterator[None]:
    """Held for the ``with`` block; raises ``OutputInUseError`` (exit 2) if another run holds it."""
    with _local_lock(output) if is_local(output) else _object_lock(output, storage):
        yield


@contextmanager
def _local_lock(output: str) -> Iterator[None]:
    try:
        os.makedirs(output, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise InputError(f"OUTPUT {output!r} is not a folder: {exc}") from exc
    except OSError as exc:  # /proc/x, a read-only mount: root passes the access check above
        raise InputError(f"OUTPUT {output!r} cannot be made: {exc.strerror or exc}") from exc
    path = os.path.join(output, LOCK_NAME)
    fd = _locked_file(path, output)
    try:
        try:  # who holds it, for the second run's message; the flock is the lock, this is a note
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_owner()).encode(), 0)
        except OSError as exc:  # a full disk must end the run with its own clear error, later
            log.warning("could not write the lock's owner note in %s: %s", path, exc)
        yield
        try:  # removed while still held: nothing is left in OUTPUT after a run
            os.unlink(path)
        except OSError as exc:
            log.debug("lock file %s not removed: %s", path, exc)
    finally:
        os.close(fd)  # releases the flock


def _locked_file(path: str, output: str) -> int:
    """A descriptor of ``path`` holding its flock, where ``path`` still names that very file."""
    import fcntl

    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.pread(fd, 4096, 0).decode(errors="replace"))
            os.close(fd)
            raise OutputInUseError(
                f"OUTPUT {output!r} is in use by another veil run ({holder}; lock {path}): "
                "wait for it to finish, or choose another OUTPUT"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the run before removed it after this run opened it: open the path again
    raise OutputInUseError(f"OUTPUT {output!r}: its lock {path} keeps being replaced; is another run looping?")


def _alive_here(owner: dict) -> bool:
    """False only when the owner is known dead: same host, no such process."""
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


def _create(storage: Storage, uri: str, data: bytes) -> bool:
    backend = storage.backend(uri)
    create = getattr(backend, "create", None)
    if create is not None:
        return bool(create(uri, data, "application/json"))
    if storage.exists(uri):  # no conditional create in this backend: not atomic
        return False
    storage.write(uri, data, "application/json")
    return True


def _read_or_empty(storage: Storage, uri: str) -> str:
    try:
        return storage.read(uri).decode(errors="replace")
    except FileNotFoundError:
        return ""


@contextmanager
def _object_lock(output: str, storage: Storage) -> Iterator[None]:
    uri = join_uri(output, LOCK_NAME)
    mine = json.dumps(_owner()).encode()
    if not _create(storage, uri, mine):
        text = _read_or_empty(storage, uri)
        try:
            owner = json.loads(text) if text else {}
        except ValueError:
            owner = {}
        busy = f"OUTPUT {output!r} is in use by another veil run ({_describe(text)}; lock object {uri}): wait"
        if text and (not isinstance(owner, dict) or _alive_here(owner)):
            raise OutputInUseError(f"{busy} for it to finish; if that run is gone (its host crashed), delete {uri}")
        if text:  # stale: its owner ran on this host and is dead
            storage.delete(uri)
        if not _create(storage, uri, mine):
            raise OutputInUseError(f"{busy} for it to finish")
    try:
        yield
    finally:
        try:
            if _read_or_empty(storage, uri).encode() == mine:
                storage.delete(uri)
        except StorageError:
            pass  # left behind: the next run on this host finds its owner dead and takes it over


__all__ = ["LOCK_NAME", "output_lock"]
