"""Download missing weight files (``veil models fetch``), on a machine with internet.

Each file is streamed to ``<dest>.part`` and moved onto ``<dest>`` with ``os.replace`` only
once it is complete and its sha256 checks out, so a half-downloaded file is never mistaken
for a weight file. An interrupted download resumes: the next attempt (or the next run) sends
``Range: bytes=N-`` and appends when the server answers 206; a server that answers 200
instead gets a clean restart.

The expected sha256 is the caller's, else the one the server states for LFS files: Hugging
Face sends it as ``X-Linked-ETag`` (or ``ETag``) on the resolve URL's redirect, a 64-hex
string, possibly quoted. Other ETags (git blob sha1s, S3 md5s, ...) are ignored, so a file from
a source that states no sha256 (a GitHub release asset) is checked only against a digest the
caller gives; its digest is recorded either way. The check is per source: each URL tried is
asked for its own digest.

A ``WeightFile`` may list several sources; ``fetch_weight_file`` goes on to the next on 404.

Network failures (connection errors, cut connections, timeouts, 5xx, 429) are retried with
``RETRY_POLICY``'s backoff (through ``call_with_retries``) and then raised as ``StorageError``;
an attempt that made progress resets the count, so a flaky link still finishes a multi-GB
checkpoint.
Nothing happens at import: no session, no environment read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from tqdm import tqdm

from models.weights import RV_SINGLE_FILE, WeightFile, check_single_file_text_encoder, file_sha256, required_files
from shared.errors import (
    RETRY_POLICY,
    ChecksumMismatchError,
    PermanentError,
    RetryPolicy,
    SourceNotFoundError,
    SourceUnreachableError,
    StorageError,
    call_with_retries,
)

log = logging.getLogger(__name__)
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
    ``retry_policy.max_retries`` failed attempts in a row without progress,
    ``SourceNotFoundError`` on 404, or ``PermanentError`` for another status retrying cannot
    fix (401/403 ...).
    """
    # 1. A file already in place is kept.
    dest = Path(dest)
    if dest.is_file():
        return FetchResult(dest, url, file_sha256(dest), 0, skipped=True)
    # 2. Check the caller's digest; make the folder.
    expected_sha256 = _checked_sha256(expected_sha256)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with (
        _session_for(session) as s,
        _Download(s, url, part_path(dest), chunk_size=chunk_size, timeout=timeout, progress=progress) as dl,
    ):
        # 3. The digest to check: the caller's, else the one the server states (LFS).
        expected = expected_sha256 or _head_sha256(s, url, timeout)
        # 4. Download into the part, retrying transient failures.
        digest = _download_with_retries(dl, retry_policy, sleep, dest)
        # 5. Verify, then move into place.
        _verify_and_place(dl.part, dest, digest, expected or dl.server_sha256, url)
        return FetchResult(dest, url, digest, dl.downloaded, skipped=False)


def _checked_sha256(expected_sha256: str | None) -> str | None:
    if expected_sha256 is None:
        return None
    if not _HEX64.fullmatch(expected_sha256.strip()):
        raise ValueError(f"expected_sha256 is not a 64-hex sha256: {expected_sha256!r}")
    return expected_sha256.strip().lower()


@contextmanager
def _session_for(session: requests.Session | None) -> Iterator[requests.Session]:
    """The caller's session, or an own one closed afterwards."""
    if session is not None:
        yield session
        return
    own = requests.Session()
    own.headers["User-Agent"] = USER_AGENT
    try:
        yield own
    finally:
        own.close()


class _Progressed(Exception):
    """An attempt failed after appending bytes to the part: the count of failures starts again."""


def _download_with_retries(dl: _Download, policy: RetryPolicy, sleep: Callable[[float], None], dest: Path) -> str:
    """``dl.attempt()`` until it completes. ``call_with_retries`` spends the policy's retries on
    attempts that add no bytes; an attempt that made progress ends that count (``_Progressed``),
    waits the first backoff and starts a fresh one, so a flaky link still finishes a multi-GB file."""

    def attempt() -> str:
        try:
            return dl.attempt()
        except _Retry as exc:
            if exc.got:
                raise _Progressed(str(exc)) from exc
            raise

    while True:
        try:
            return call_with_retries(attempt, policy, retry_on=(_Retry,), sleep=sleep)
        except _Progressed:
            sleep(policy.countdown(0))
        except _Retry as exc:
            raise StorageError(
                f"downloading {dl.url} -> {dest} failed after {policy.max_retries} retries: {exc}"
            ) from (exc.__cause__ or exc)


def _verify_and_place(part: Path, dest: Path, digest: str, expected: str | None, url: str) -> None:
    if expected is not None and digest != expected:
        part.unlink(missing_ok=True)
        raise ChecksumMismatchError(
            f"checksum mismatch for {dest.name} (from {url}): expected sha256 {expected}, "
            f"got {digest}; the partial download was deleted"
        )
    os.replace(part, dest)


class _Download:
    """State of one file's download across attempts: bytes received, progress bar, the
    sha256 the server stated."""

    def __init__(
        self, session: requests.Session, url: str, part: Path, *, chunk_size: int, timeout: float, progress: bool
    ):
        self.session = session
        self.url = url
        self.part = part
        self.chunk_size = chunk_size
        self.timeout = timeout
        self.progress = progress
        self.downloaded = 0
        self.server_sha256: str | None = None
        self.bar: tqdm | None = None

    def __enter__(self) -> _Download:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.bar is not None:
            self.bar.close()

    def _show(self, offset: int, total: int | None) -> None:
        if not self.progress:
            return
        if self.bar is None:
            self.bar = tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=self.part.name[: -len(".part")],
            )
        elif self.bar.n != offset or self.bar.total != total:
            self.bar.reset(total=total)
            self.bar.update(offset)

    def attempt(self) -> str:
        """One GET; returns the sha256 of the complete part, or raises ``_Retry`` for a
        transient failure (``PermanentError`` for a status retrying cannot fix)."""
        # 1. Ask for what the part lacks.
        offset = self.part.stat().st_size if self.part.is_file() else 0
        resp = self._get(offset)
        with resp:
            # 2. Note the sha256 the server (or a redirect) states.
            for r in (*resp.history, resp):
                self.server_sha256 = self.server_sha256 or lfs_sha256(r.headers)
            # 3. A range past the end: the part may already be complete.
            if resp.status_code == 416 and offset:
                return self._complete_part_digest(resp, offset)
            # 4. Statuses other than 200/206 are retried or permanent.
            self._check_status(resp)
            # 5. Where the body starts, then append it to the part.
            offset, total, mode = self._body_span(resp, offset)
            return self._receive(resp, offset, total, mode)

    def _get(self, offset: int) -> requests.Response:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            return self.session.get(self.url, headers=headers, stream=True, timeout=self.timeout, allow_redirects=True)
        except requests.RequestException as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from exc

    def _complete_part_digest(self, resp: requests.Response, offset: int) -> str:
        m = _CONTENT_RANGE_UNSATISFIED.fullmatch(resp.headers.get("Content-Range", "").strip())
        if m and int(m.group(1)) == offset:
            h = hashlib.sha256()
            _hash_file(self.part, h)
            return h.hexdigest()
        self.part.unlink(missing_ok=True)
        raise _Retry(f"HTTP 416 for a {offset}-byte part; restarting from scratch")

    def _check_status(self, resp: requests.Response) -> None:
        status = resp.status_code
        if status >= 500 or status in _TRANSIENT_STATUS:
            raise _Retry(f"HTTP {status} {resp.reason}")
        if status == 404:
            raise SourceNotFoundError(f"downloading {self.url}: HTTP 404 {resp.reason}")
        if status not in (200, 206):
            hint = (
                " (gated or private repository? give a session with an Authorization header)"
                if status in (401, 403)
                else ""
            )
            raise PermanentError(f"downloading {self.url}: HTTP {status} {resp.reason}{hint}")

    def _body_span(self, resp: requests.Response, offset: int) -> tuple[int, int | None, str]:
        """(offset the body starts at, total file size if known, file mode for the part)."""
        if resp.status_code == 206:
            m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
            if not m or int(m.group(1)) != offset:
                self.part.unlink(missing_ok=True)
                raise _Retry(
                    f"Content-Range {resp.headers.get('Content-Range')!r} does not start at {offset}; restarting"
                )
            return offset, (int(m.group(3)) if m.group(3) != "*" else None), "ab"
        # 200: the whole file, whether or not a range was asked for
        length = resp.headers.get("Content-Length", "")
        return 0, (int(length) if length.isdigit() else None), "wb"

    def _receive(self, resp: requests.Response, offset: int, total: int | None, mode: str) -> str:
        h = hashlib.sha256()
        if offset:
            _hash_file(self.part, h)  # a resumed download hashes what it already has
        self._show(offset, total)
        got = 0
        try:
            with open(self.part, mode) as f:
                for chunk in resp.iter_content(chunk_size=self.chunk_size):
                    if chunk:
                        f.write(chunk)
                        h.update(chunk)
                        got += len(chunk)
                        if self.bar is not None:
                            self.bar.update(len(chunk))
        except requests.RequestException as exc:
            raise _Retry(f"{type(exc).__name__} after {offset + got} bytes: {exc}", got) from exc
        finally:
            self.downloaded += got
        if total is not None and offset + got != total:
            raise _Retry(f"connection ended at {offset + got} of {total} bytes", got)
        return h.hexdigest()


def fetch_weight_file(wf: WeightFile, models_dir: Path, **kwargs: Any) -> FetchResult:
    """``wf`` into ``models_dir`` from the first of its sources that has it: a 404 moves on to
    the next source (deepface lists its GitHub release first, its Hugging Face mirror second);
    any other failure stops. ``kwargs`` go to ``fetch_file``."""
    not_found: list[str] = []
    for url in wf.urls:
        try:
            return fetch_file(url, models_dir / wf.relpath, **kwargs)
        except SourceNotFoundError as exc:
            log.info("%s; trying the next source", exc)
            not_found.append(str(exc))
    raise SourceNotFoundError(f"no source has {wf.relpath}:\n  " + "\n  ".join(not_found))


def _host(url: str) -> str:
    return urlsplit(url).hostname or url


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def check_reachable(url: str, timeout: float = 8.0) -> None:
    """Raises ``SourceUnreachableError`` unless a TCP connection to ``url``'s host (or the
    HTTP(S) proxy the environment names for it) opens within ``timeout`` s: no DNS, no route or
    a refused connection says "offline" at once, instead of after the whole retry budget."""
    proxy = requests.utils.get_environ_proxies(url).get(urlsplit(url).scheme)
    target = urlsplit(proxy if proxy else url)
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((target.hostname or "", port), timeout=timeout).close()
    except OSError as exc:
        via = f" through the proxy {target.hostname}:{port}" if proxy else ""
        raise SourceUnreachableError(
            f"cannot reach {urlsplit(url).hostname}{via} ({exc.strerror or type(exc).__name__}): offline? "
            "Copy the weights into VEIL_MODELS_DIR from a machine that has them, or write tiny random test "
            "models with `veil models tiny DIR` (their images are noise)"
        ) from exc


def fetch_missing(
    models_dir: Path,
    files: list[WeightFile] | None = None,
    *,
    progress: bool = True,
    session: requests.Session | None = None,
    retry_policy: RetryPolicy = RETRY_POLICY,
    sleep: Callable[[float], None] = time.sleep,
    say: Callable[[str], None] | None = None,
    probe_timeout_s: float = 8.0,
) -> list[FetchResult]:
    """Fetch the files ``veil run`` needs (``required_files``) or ``files`` into
    ``models_dir``; files already there come back with ``skipped=True``. Stops at the first
    failure (rerunning resumes). Afterwards the digests are written to the per-folder
    ``.veil-sha256.json`` caches via ``file_sha256``, so workers do not hash them again. Raises
    ``IncompleteCheckpointError`` when the Realistic Vision single file lacks the text-encoder
    tensor diffusers looks for."""
    # 1. What to fetch, said before anything starts.
    models_dir = Path(models_dir)
    wanted = required_files(models_dir) if files is None else list(files)
    missing = [wf for wf in wanted if not (models_dir / wf.relpath).is_file()]
    say = say or ((lambda line: print(line, file=sys.stderr, flush=True)) if progress else (lambda line: None))
    if missing:
        hosts = sorted({_host(wf.urls[0]) for wf in missing if wf.urls})
        say(f"veil: fetching {len(missing)} file(s) into {models_dir} from {', '.join(hosts)}")
        # 2. The first source of each file reachable at all: offline, one line within seconds
        #    (the retries are for failures mid-download, not for a machine with no network)
        for host_url in {_origin(wf.urls[0]) for wf in missing if wf.urls}:
            check_reachable(host_url, timeout=probe_timeout_s)
    # 3. Each file from the first of its sources that has it.
    results = []
    for i, wf in enumerate(wanted, 1):
        if wf in missing:
            say(f"[{i}/{len(wanted)}] {wf.relpath} <- {wf.urls[0] if wf.urls else '?'}")
        results.append(
            fetch_weight_file(
                wf, models_dir, session=session, progress=progress, retry_policy=retry_policy, sleep=sleep
            )
        )
    # 4. Digests into the caches.
    for r in results:
        file_sha256(r.path)
    # 5. The single-file checkpoint must hold what diffusers needs to find its text encoder.
    if any(wf.relpath == RV_SINGLE_FILE for wf in wanted):
        check_single_file_text_encoder(models_dir / RV_SINGLE_FILE)
    return results
