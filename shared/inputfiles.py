"""Reading untrusted input files: only regular files, never more than a set number of bytes.

``read_input`` refuses, before reading a byte, anything that is not a regular file (a FIFO would
hang the run, ``/dev/zero`` never ends, a directory named ``x.jpg``), a file larger than
``VEIL_MAX_INPUT_BYTES`` (a 3 GB sparse ``.jpg``), a symlink loop, and, when the INPUT folder
is given, a symlink that leads outside it. Each raises an ``InputFileError`` subclass, so the
key gets a failed row with its reason and the run goes on.

``walk_folder`` lists an INPUT folder: every entry with an image-like name, whatever it is, so
that odd entries get a row instead of vanishing; symlinked folders are not entered.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from shared.errors import (
    InputFileTooLargeError,
    NotAFileError,
    SymlinkLoopError,
    SymlinkOutsideError,
)
from shared.storage import Storage, is_local

#: Names listed as inputs beyond the formats Veil decodes: they get a row that says why not
#: (animated GIF, HEIC, ...) instead of being skipped in silence.
UNSUPPORTED_IMAGE_EXTENSIONS = frozenset({".gif", ".heic", ".heif", ".avif", ".jxl"})

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_local_input(path: str, *, max_bytes: int, root: str | None = None) -> bytes:
    """The bytes of the regular file ``path`` (at most ``max_bytes``); ``root``: the INPUT folder
    a symlink must not leave."""
    try:
        real = os.path.realpath(path, strict=True)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SymlinkLoopError(f"symlink loop: {path}") from None
        if os.path.islink(path):
            raise NotAFileError(f"broken symlink: {path} -> {os.readlink(path)}") from None
        raise
    if root is not None and not Path(real).is_relative_to(os.path.realpath(root)):
        raise SymlinkOutsideError(f"symlink leads outside the INPUT folder ({real}): not followed")
    before = os.stat(real)  # refuse devices and FIFOs without opening them
    if not stat.S_ISREG(before.st_mode):
        raise NotAFileError(f"{_kind(before.st_mode)}, not a regular file")
    fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)  # the file actually opened (it may have been swapped since the stat)
        if not stat.S_ISREG(st.st_mode):
            raise NotAFileError(f"{_kind(st.st_mode)}, not a regular file")
        if st.st_size > max_bytes:
            raise InputFileTooLargeError(f"{st.st_size} bytes exceeds VEIL_MAX_INPUT_BYTES={max_bytes}")
        chunks, total = [], 0
        while chunk := os.read(fd, min(1 << 20, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:  # grew while being read
                raise InputFileTooLargeError(f"more than VEIL_MAX_INPUT_BYTES={max_bytes} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_input(storage: Storage, uri: str, *, max_bytes: int, root: str | None = None) -> bytes:
    """An input's bytes: local paths through ``read_local_input``; objects (which are never FIFOs
    or devices) whole, then checked against ``max_bytes``."""
    if is_local(uri):
        return read_local_input(uri, max_bytes=max_bytes, root=root)
    size = storage.size(uri)  # checked before reading where the backend can tell (S3: HEAD)
    if size is not None and size > max_bytes:
        raise InputFileTooLargeError(f"{size} bytes exceeds VEIL_MAX_INPUT_BYTES={max_bytes}")
    data = storage.read(uri)
    if len(data) > max_bytes:
        raise InputFileTooLargeError(f"{len(data)} bytes exceeds VEIL_MAX_INPUT_BYTES={max_bytes}")
    return data


def walk_folder(root: str, is_image_name) -> list[str]:  # noqa: ANN001 - a str -> bool predicate
    """Every path under ``root`` whose name ``is_image_name`` accepts, whatever it is (file,
    directory, FIFO, symlink, broken or looping), sorted; symlinked folders are not entered."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        found += [os.path.join(folder, n) for n in (*dirs, *files) if is_image_name(n)]
    return sorted(found)
