"""Download missing weight files (``veil models fetch``), on a machine with internet.

Each file is streamed to ``<dest>.part`` and moved onto ``<dest>`` with ``os.replace`` only
once it is complete and its sha256 checks out, so a half-downloaded file is never mistaken
for a weight file. An interrupted download resumes: the next attempt (or the next run) sends
``Range: bytes=N-`` and appends when the server answers 206; a server that answers 200
instead gets a clean restart.

The expected sha256 is the caller's, else the one the server states for LFS files: Hugging
Face sends it as ``X-Linked-ETag`` (or ``ETag``) on the resolve URL's redirect, a 64-hex
string, possibly quoted. Other ETags (git blob sha1s, S3 md5s, ...) are ignored.

Network failures (connection errors, cut connections, timeouts, 5xx, 429) are retried with
``RETRY_POLICY``'s backoff and then raised as ``StorageError``; an attempt that made
progress resets the count, so a flaky link still finishes a multi-GB checkpoint.
Nothing happens at import: no session, no environment read.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests
from tqdm import tqdm

from shared.errors import RETRY_POLICY, ChecksumMismatchError, PermanentError, RetryPolicy, StorageError
from models.weights import WeightFile, file_sha256, required_files

USER_AGENT = "veil-models-fetch/0.1"
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_CONTENT_RANGE_UNSATISFIED = re.compile(r"bytes\s+\*/(\d+)")
#: HTTP statuses worth retrying; every other 4xx is permanent (wrong URL, gated repo, ...).
_TRANSIENT_STATUS = {408, 425, 429}


@dataclass
class FetchResult:
    path: Path
    url: str
    sha256: str
    bytes_downloaded: int  # bytes received by this call (a resumed part is not counted)
    skipped: bool  # the file was already there; nothing was downloaded


class _Retry(Exception):
    """One attempt failed transiently; ``got`` bytes were appended to the part first."""

    def __init__(self, message: str, got: int = 0):
        super().__init__(message)
        self.got = got


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def lfs_sha256(headers) -> str | None:
    """The sha256 a server states for an LFS file (``X-Linked-ETag`` or ``ETag``), if any."""
    for name in ("X-Linked-ETag", "ETag"):
        value = headers.get(name)
        if not value:
            continue
        value = value.strip()
        if value.startswith("W/"):
            value = value[2:]
        value = value.strip().strip('"')
        if _HEX64.fullmatch(value):
            return value.lower()
    return None


def _head_sha256(session: requests.Session, url: str, timeout: float) -> str | None:
    try:
        resp = session.head(url, allow_redirects=False, timeout=timeout)
    except requests.RequestException:
        return None  # the GET that follows reports the network failure properly
    with resp:
        return lfs_sha256(resp.headers)


def _hash_file(path: Path, h) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def fetch_file(
    url: str,
    dest: Path,
    *,
    expected_sha256: str | None = None,
    session: requests.Session | None = None,
    progress: bool = True,
    chunk_size: int = 1 << 20,
    timeout: float = 60,
    retry_policy: RetryPolicy = RETRY_POLICY,
    sleep: Callable[[float], None] = time.sleep,
) -> FetchResult:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify it, move it into place.

    Raises ``ChecksumMismatchError`` (the part is deleted), ``StorageError`` after
    ``retry_policy.max_retries`` failed attempts in a row without progress, or
    ``PermanentError`` for an HTTP status retrying cannot fix (404, 401/403 ...).
    """
    dest = Path(dest)
    if dest.is_file():
        return FetchResult(dest, url, file_sha256(dest), 0, skipped=True)
    if expected_sha256 is not None:
        if not _HEX64.fullmatch(expected_sha256.strip()):
            raise ValueError(f"expected_sha256 is not a 64-hex sha256: {expected_sha256!r}")
        expected_sha256 = expected_sha256.strip().lower()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)

    own_session = session is None
    if own_session:
        session = requests.Session()
        session.headers["User-Agent"] = USER_AGENT
    dl = _Download(session, url, part, chunk_size=chunk_size, timeout=timeout, progress=progress)
    try:
        expected = expected_sha256 or _head_sha256(session, url, timeout)
        failures = 0  # consecutive failed attempts that added no bytes
        while True:
            try:
                digest = dl.attempt()
                break
            except _Retry as exc:
                failures = 0 if exc.got else failures + 1
                if failures > retry_policy.max_retries:
                    raise StorageError(
                        f"downloading {url} -> {dest} failed after {retry_policy.max_retries} retries: {exc}"
                    ) from (exc.__cause__ or exc)
                sleep(retry_policy.countdown(max(failures - 1, 0)))

        expected = expected or dl.server_sha256
        if expected is not None and digest != expected:
            part.unlink(missing_ok=True)
            raise ChecksumMismatchError(
                f"checksum mismatch for {dest.name} (from {url}): expected sha256 {expected}, "
                f"got {digest}; the partial download was deleted"
            )
        os.replace(part, dest)
        return FetchResult(dest, url, digest, dl.downloaded, skipped=False)
    finally:
        dl.close()
        if own_session:
            session.close()


class _Download:
    """State of one file's download across attempts: bytes received, progress bar, the
    sha256 the server stated."""

    def __init__(self, session: requests.Session, url: str, part: Path, *, chunk_size: int, timeout: float, progress: bool):
        self.session = session
        self.url = url
        self.part = part
        self.chunk_size = chunk_size
        self.timeout = timeout
        self.progress = progress
        self.downloaded = 0
        self.server_sha256: str | None = None
        self.bar: tqdm | None = None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def _show(self, offset: int, total: int | None) -> None:
        if not self.progress:
            return
        if self.bar is None:
            self.bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=self.part.name[: -len(".part")])
        elif self.bar.n != offset or self.bar.total != total:
            self.bar.reset(total=total)
            self.bar.update(offset)

    def attempt(self) -> str:
        """One GET; returns the sha256 of the complete part, or raises ``_Retry`` for a
        transient failure (``PermanentError`` for a status retrying cannot fix)."""
        part = self.part
        offset = part.stat().st_size if part.is_file() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            resp = self.session.get(self.url, headers=headers, stream=True, timeout=self.timeout, allow_redirects=True)
        except requests.RequestException as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from exc
        with resp:
            for r in (*resp.history, resp):
                self.server_sha256 = self.server_sha256 or lfs_sha256(r.headers)
            status = resp.status_code

            if status == 416 and offset:
                # The range starts at or past the end: the part may already be complete.
                m = _CONTENT_RANGE_UNSATISFIED.fullmatch(resp.headers.get("Content-Range", "").strip())
                if m and int(m.group(1)) == offset:
                    h = hashlib.sha256()
                    _hash_file(part, h)
                    return h.hexdigest()
                part.unlink(missing_ok=True)
                raise _Retry(f"HTTP 416 for a {offset}-byte part; restarting from scratch")
            if status >= 500 or status in _TRANSIENT_STATUS:
                raise _Retry(f"HTTP {status} {resp.reason}")
            if status not in (200, 206):
                hint = " (gated or private repository? give a session with an Authorization header)" if status in (401, 403) else ""
                raise PermanentError(f"downloading {self.url}: HTTP {status} {resp.reason}{hint}")

            if status == 206:
                m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
                if not m or int(m.group(1)) != offset:
                    part.unlink(missing_ok=True)
                    raise _Retry(f"Content-Range {resp.headers.get('Content-Range')!r} does not start at {offset}; restarting")
                total = int(m.group(3)) if m.group(3) != "*" else None
                mode = "ab"
            else:  # 200: the whole file, whether or not a range was asked for
                offset = 0
                mode = "wb"
                length = resp.headers.get("Content-Length", "")
                total = int(length) if length.isdigit() else None

            h = hashlib.sha256()
            if offset:
                _hash_file(part, h)  # a resumed download hashes what it already has
            self._show(offset, total)
            got = 0
            try:
                with open(part, mode) as f:
                    for chunk in resp.iter_content(chunk_size=self.chunk_size):
                        if not chunk:
                            continue
                        f.write(chunk)
                        h.update(chunk)
                        got += len(chunk)
                        if self.bar is not None:
                            self.bar.update(len(chunk))
            except requests.RequestException as exc:
                self.downloaded += got
                raise _Retry(f"{type(exc).__name__} after {offset + got} bytes: {exc}", got) from exc
            self.downloaded += got
            if total is not None and offset + got != total:
                raise _Retry(f"connection ended at {offset + got} of {total} bytes", got)
            return h.hexdigest()


def fetch_missing(
    models_dir: Path,
    files: list[WeightFile] | None = None,
    *,
    progress: bool = True,
    session: requests.Session | None = None,
    retry_policy: RetryPolicy = RETRY_POLICY,
    sleep: Callable[[float], None] = time.sleep,
) -> list[FetchResult]:
    """Fetch the files ``veil run`` needs (``required_files``) or ``files`` into
    ``models_dir``; files already there come back with ``skipped=True``. Stops at the first
    failure (rerunning resumes). Afterwards the digests are written to the per-folder
    ``.veil-sha256.json`` caches via ``file_sha256``, so workers do not hash them again."""
    models_dir = Path(models_dir)
    wanted = required_files(models_dir) if files is None else list(files)
    results = [
        fetch_file(
            wf.url,
            models_dir / wf.relpath,
            session=session,
            progress=progress,
            retry_policy=retry_policy,
            sleep=sleep,
        )
        for wf in wanted
    ]
    for r in results:
        file_sha256(r.path)
    return results
