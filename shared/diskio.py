"""Local writes that a full disk cannot tear: whole files by rename, whole manifest rows.

A full disk (``ENOSPC``, ``EDQUOT``) becomes ``DiskFullError`` naming the path; nothing half
written stays behind: a temporary file is removed, a manifest cut back to its last whole row.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from shared.errors import DiskFullError

log = logging.getLogger(__name__)

_FULL = {errno.ENOSPC, errno.EDQUOT}


def as_disk_full(exc: OSError, path: Path | str) -> Exception:
    """``DiskFullError`` for a full disk or quota, else ``exc`` itself."""
    if exc.errno in _FULL:
        return DiskFullError(f"no space left writing {path}: free some space, then run the same command again")
    return exc


def write_then_rename(tmp: Path, path: Path, data: bytes) -> None:
    """``data`` into ``tmp``, then renamed onto ``path``; on any failure ``tmp`` is removed."""
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise as_disk_full(exc, path) from exc
        raise


def _cut_torn_tail(fd: int, size: int, path: Path) -> int:
    """A last row without its newline (a crash mid-write) is cut off; returns the new size."""
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end = size
    while end > 0:
        start = max(0, end - 65536)
        chunk = os.pread(fd, end - start, start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            end = start + cut + 1
            break
        end = start
    os.ftruncate(fd, end)
    log.warning("%s: cut a torn last row (%d bytes) left by an interrupted write", path, size - end)
    return end


def append_whole(path: Path, data: bytes) -> None:
    """Append ``data`` (whole ``\\n``-ended rows) to ``path`` and fsync it, or leave ``path`` as
    it was: a short write (full disk) is cut back. A torn row left by an earlier crash is cut
    first, so a new row never joins it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        size = _cut_torn_tail(fd, os.fstat(fd).st_size, path)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as exc:
            os.ftruncate(fd, size)  # frees the blocks it took; no torn row stays behind
            raise as_disk_full(exc, path) from exc
    finally:
        os.close(fd)
