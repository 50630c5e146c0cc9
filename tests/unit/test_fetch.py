"""models.fetch against a real HTTP server on 127.0.0.1 (Range, ETag, redirects, cut connections)."""

from __future__ import annotations

import hashlib
import json
import random
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import models.fetch as fetch_mod
from shared.errors import (ChecksumMismatchError, IncompleteCheckpointError, PermanentError, RetryPolicy,
                           SourceNotFoundError, SourceUnreachableError, StorageError, TransientError)
from models.fetch import FetchResult, fetch_file, fetch_missing, lfs_sha256
from models.weights import (CATALOGUE, RV_SINGLE_FILE, SD15_TEXT_ENCODER_KEY, Component, WeightFile,
                            check_single_file_text_encoder, required_files)

RETRY_POLICY_SLOW = RetryPolicy(max_retries=12, backoff_s=10.0, backoff_max_s=60.0)  # the real budget
# not a multiple of the chunk size; seeded: test ids name its sha, and xdist collects on each process
DATA = random.Random(0).randbytes(300_000) + bytes(range(256)) * 100
SHA = hashlib.sha256(DATA).hexdigest()
# without jitter, so that the waits can be compared with countdown() exactly
FAST = RetryPolicy(max_retries=2, backoff_s=0.001, backoff_max_s=0.01, jitter=False)
CHUNK = 16_384
# urllib3 drops a partly filled read when the connection breaks, so a part ends on a chunk
# boundary; cutting on a boundary makes the resume offset exact.
HALF = CHUNK * (len(DATA) // CHUNK // 2)
THIRD = CHUNK * (len(DATA) // CHUNK // 3)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.etag: dict[str, str] = {}  # path -> ETag header on the file itself
        self.redirects: dict[str, tuple[str, dict[str, str]]] = {}  # path -> (target, extra headers)
        self.cut_at: int | None = None  # absolute offset where a cut response stops sending
        self.cuts_left = 0
        self.statuses: list[int] = []  # forced statuses for the next GETs (then normal)
        self.ignore_range = False
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def gets(self) -> list[tuple[str, str, str | None]]:
        return [e for e in self.log if e[0] == "GET"]


class Handler(BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, *args):  # keep pytest output quiet
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body: bool):
        srv = self.server
        rng = self.headers.get("Range")
        with srv.lock:
            srv.log.append((self.command, self.path, rng))
            forced = srv.statuses.pop(0) if (body and srv.statuses) else None
            cut = body and srv.cuts_left > 0 and srv.cut_at is not None
            if cut:
                srv.cuts_left -= 1
        if forced is not None:
            self.send_response(forced)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path in srv.redirects:
            target, extra = srv.redirects[self.path]
            self.send_response(302)
            self.send_header("Location", target)
            for k, v in extra.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = srv.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        if rng and not srv.ignore_range:
            assert rng.startswith("bytes=") and rng.endswith("-"), rng
            start = int(rng[len("bytes="):-1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        if self.path in srv.etag:
            self.send_header("ETag", srv.etag[self.path])
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if not body:
            return
        end = max(start, srv.cut_at) if cut else len(data)
        self.wfile.write(data[start:end])
        self.wfile.flush()
        if cut:  # drop the connection with Content-Length unmet
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def server():
    srv = FileServer()
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


@pytest.fixture
def sleeps():
    return []


def get(server, path, dest, sleeps, **kw) -> FetchResult:
    kw.setdefault("progress", False)
    kw.setdefault("retry_policy", FAST)
    return fetch_file(server.url + path, dest, sleep=sleeps.append, timeout=10, chunk_size=CHUNK, **kw)


def assert_no_leftovers(dest: Path):
    assert not dest.exists()
    assert not dest.with_name(dest.name + ".part").exists()


# ---------------------------------------------------------------- plain downloads and hashes


def test_download_verified_against_quoted_etag(server, tmp_path, sleeps):
    server.files["/w.bin"] = DATA
    server.etag["/w.bin"] = f'"{SHA}"'
    dest = tmp_path / "sub" / "dir" / "w.bin"
    r = get(server, "/w.bin", dest, sleeps)
    assert dest.read_bytes() == DATA
    assert r == FetchResult(dest, server.url + "/w.bin", SHA, len(DATA), False)
    assert not dest.with_name("w.bin.part").exists()
    assert sleeps == []
    assert [m for m, _, _ in server.log] == ["HEAD", "GET"]


def test_mismatch_with_expected_argument_raises_and_leaves_nothing(server, tmp_path, sleeps):
    server.files["/w.bin"] = DATA
    dest = tmp_path / "w.bin"
    wrong = sha(b"something else")
    with pytest.raises(ChecksumMismatchError) as ei:
        get(server, "/w.bin", dest, sleeps, expected_sha256=wrong)
    msg = str(ei.value)
    assert wrong in msg and SHA in msg and "w.bin" in msg
    assert isinstance(ei.value, PermanentError) and ei.value.reason == "checksum_mismatch"
    assert_no_leftovers(dest)


def test_expected_argument_wins_over_server_etag(server, tmp_path, sleeps):
    server.files["/w.bin"] = DATA
    server.etag["/w.bin"] = sha(b"stale etag")
    r = get(server, "/w.bin", tmp_path / "w.bin", sleeps, expected_sha256=SHA.upper())
    assert r.sha256 == SHA
    assert all(m == "GET" for m, _, _ in server.log)  # no HEAD needed when the hash is given


def test_mismatch_with_server_etag_raises(server, tmp_path, sleeps):
    server.files["/w.bin"] = DATA
    server.etag["/w.bin"] = sha(DATA[:-1])
    dest = tmp_path / "w.bin"
    with pytest.raises(ChecksumMismatchError, match=sha(DATA[:-1])):
        get(server, "/w.bin", dest, sleeps)
    assert_no_leftovers(dest)


def test_hugging_face_style_x_linked_etag_on_redirect(server, tmp_path, sleeps):
    """HF: the resolve URL 302s to a CDN and states the LFS sha256 in X-Linked-ETag."""
    server.files["/cdn/w.bin"] = DATA
    server.redirects["/resolve/good.bin"] = (server.url + "/cdn/w.bin", {"X-Linked-ETag": f'"{SHA}"', "ETag": '"0123abcd"'})
    server.redirects["/resolve/bad.bin"] = (server.url + "/cdn/w.bin", {"X-Linked-ETag": f'"{sha(b"x")}"'})
    r = get(server, "/resolve/good.bin", tmp_path / "good.bin", sleeps)
    assert r.sha256 == SHA and (tmp_path / "good.bin").read_bytes() == DATA
    # the HEAD was sent to the resolve URL and not followed to the CDN
    assert ("HEAD", "/resolve/good.bin", None) in server.log
    assert not any(m == "HEAD" and p == "/cdn/w.bin" for m, p, _ in server.log)
    with pytest.raises(ChecksumMismatchError):
        get(server, "/resolve/bad.bin", tmp_path / "bad.bin", sleeps)
    assert_no_leftovers(tmp_path / "bad.bin")


def test_non_sha256_etags_are_ignored(server, tmp_path, sleeps):
    server.files["/config.json"] = b'{"a": 1}'
    server.etag["/config.json"] = 'W/"' + "ab" * 20 + '"'  # a git blob sha1, not a sha256
    r = get(server, "/config.json", tmp_path / "config.json", sleeps)
    assert r.sha256 == sha(b'{"a": 1}')
    assert (tmp_path / "config.json").read_bytes() == b'{"a": 1}'


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"X-Linked-ETag": f'"{SHA.upper()}"'}, SHA),
        ({"ETag": SHA}, SHA),
        ({"ETag": f'W/"{SHA}"'}, SHA),
        ({"X-Linked-ETag": '"abc"', "ETag": f'"{SHA}"'}, SHA),
        ({"ETag": '"' + "a" * 63 + '"'}, None),
        ({"ETag": '"' + "g" * 64 + '"'}, None),
        ({}, None),
    ],
)
def test_lfs_sha256_parsing(headers, expected):
    assert lfs_sha256(headers) == expected


def test_existing_file_is_skipped_without_a_request(server, tmp_path, sleeps):
    server.files["/w.bin"] = DATA
    dest = tmp_path / "w.bin"
    dest.write_bytes(b"already here")
    r = get(server, "/w.bin", dest, sleeps)
    assert r.skipped is True and r.bytes_downloaded == 0
    assert r.sha256 == sha(b"already here")
    assert dest.read_bytes() == b"already here"
    assert server.log == []


# ---------------------------------------------------------------- resume


def test_cut_connection_leaves_part_then_next_call_resumes_with_range(server, tmp_path, sleeps):
    half = HALF
    server.files["/w.bin"] = DATA
    server.etag["/w.bin"] = f'"{SHA}"'
    server.cut_at, server.cuts_left = half, 100
    dest = tmp_path / "w.bin"
    part = tmp_path / "w.bin.part"
    with pytest.raises(StorageError) as ei:
        get(server, "/w.bin", dest, sleeps)
    assert isinstance(ei.value, TransientError)
    assert not dest.exists()
    assert part.read_bytes() == DATA[:half]
    # first GET made progress; then max_retries (2) more attempts without progress, then give up
    assert len(server.gets()) == 1 + 1 + FAST.max_retries
    assert len(sleeps) == 1 + FAST.max_retries

    server.cuts_left = 0
    server.log.clear()
    r = get(server, "/w.bin", dest, sleeps)
    assert ("GET", "/w.bin", f"bytes={half}-") in server.log
    assert dest.read_bytes() == DATA
    assert r.sha256 == SHA and r.bytes_downloaded == len(DATA) - half and not r.skipped
    assert not part.exists()


def test_cut_connection_resumed_within_one_call(server, tmp_path, sleeps):
    third = THIRD
    server.files["/w.bin"] = DATA
    server.cut_at, server.cuts_left = third, 1
    dest = tmp_path / "w.bin"
    r = get(server, "/w.bin", dest, sleeps, expected_sha256=SHA)
    assert [rng for _, _, rng in server.gets()] == [None, f"bytes={third}-"]
    assert dest.read_bytes() == DATA
    assert r.bytes_downloaded == len(DATA)
    assert sleeps == [FAST.countdown(0)]


def test_unaligned_cut_leaves_a_valid_prefix_and_resumes(server, tmp_path, sleeps):
    cut = len(DATA) // 2 + 1234
    server.files["/w.bin"] = DATA
    server.cut_at, server.cuts_left = cut, 100
    dest = tmp_path / "w.bin"
    with pytest.raises(StorageError):
        get(server, "/w.bin", dest, sleeps)
    part = (tmp_path / "w.bin.part").read_bytes()
    assert 0 < len(part) <= cut and part == DATA[: len(part)]
    server.cuts_left = 0
    server.log.clear()
    get(server, "/w.bin", dest, sleeps, expected_sha256=SHA)
    assert server.gets() == [("GET", "/w.bin", f"bytes={len(part)}-")]
    assert dest.read_bytes() == DATA


def test_resumed_download_hashes_the_existing_part(server, tmp_path, sleeps):
    """A part that does not match the file's start gets appended to and caught by the hash."""
    server.files["/w.bin"] = DATA
    dest = tmp_path / "w.bin"
    (tmp_path / "w.bin.part").write_bytes(b"\0" * 1000)  # wrong first 1000 bytes
    with pytest.raises(ChecksumMismatchError):
        get(server, "/w.bin", dest, sleeps, expected_sha256=SHA)
    assert server.gets() == [("GET", "/w.bin", "bytes=1000-")]
    assert_no_leftovers(dest)


def test_200_reply_to_range_request_restarts_cleanly(server, tmp_path, sleeps):
    server.files["/w.bin"] = DATA
    server.ignore_range = True
    dest = tmp_path / "w.bin"
    (tmp_path / "w.bin.part").write_bytes(b"garbage" * 1000)
    r = get(server, "/w.bin", dest, sleeps, expected_sha256=SHA)
    assert server.gets() == [("GET", "/w.bin", "bytes=7000-")]
    assert dest.read_bytes() == DATA
    assert r.bytes_downloaded == len(DATA)


def test_complete_part_answered_416_is_finalized(server, tmp_path, sleeps):
    server.files["/w.bin"] = DATA
    dest = tmp_path / "w.bin"
    (tmp_path / "w.bin.part").write_bytes(DATA)
    r = get(server, "/w.bin", dest, sleeps, expected_sha256=SHA)
    assert server.gets() == [("GET", "/w.bin", f"bytes={len(DATA)}-")]
    assert dest.read_bytes() == DATA and r.bytes_downloaded == 0 and r.sha256 == SHA


def test_oversized_part_answered_416_restarts(server, tmp_path, sleeps):
    server.files["/w.bin"] = DATA
    dest = tmp_path / "w.bin"
    (tmp_path / "w.bin.part").write_bytes(DATA + b"extra")
    get(server, "/w.bin", dest, sleeps, expected_sha256=SHA)
    assert [rng for _, _, rng in server.gets()] == [f"bytes={len(DATA) + 5}-", None]
    assert dest.read_bytes() == DATA


# ---------------------------------------------------------------- errors and retries


def test_500_is_retried_with_backoff_then_storage_error(server, tmp_path, sleeps):
    server.files["/w.bin"] = DATA
    server.statuses = [500] * 50
    dest = tmp_path / "w.bin"
    policy = RetryPolicy(max_retries=3, backoff_s=0.001, jitter=False)
    with pytest.raises(StorageError, match="500"):
        get(server, "/w.bin", dest, sleeps, retry_policy=policy)
    assert len(server.gets()) == 4
    assert sleeps == [0.001, 0.002, 0.004]
    assert_no_leftovers(dest)


def test_waits_are_jittered_within_the_policy(server, tmp_path, sleeps):
    server.files["/w.bin"] = DATA
    server.statuses = [500] * 50
    policy = RetryPolicy(max_retries=3, backoff_s=0.001)  # jitter on, as RETRY_POLICY
    with pytest.raises(StorageError):
        get(server, "/w.bin", tmp_path / "w.bin", sleeps, retry_policy=policy)
    full = [0.001, 0.002, 0.004]
    assert len(sleeps) == 3 and all(d / 2 <= s <= d for s, d in zip(sleeps, full))
    assert sleeps != full  # drawn, not the plain backoff (probability of equality: 0)


def test_progress_resets_the_count_of_failures(server, tmp_path, sleeps):
    """Three cuts that each add bytes, more than max_retries (2) in a row: the file still arrives."""
    server.files["/w.bin"] = DATA
    cuts = iter([THIRD, 2 * THIRD, 3 * THIRD])
    real = fetch_mod._Download._receive

    def receive(self, resp, offset, total, mode):
        cut = next(cuts, None)
        if cut is None:
            return real(self, resp, offset, total, mode)
        with open(self.part, mode) as f:
            f.write(DATA[offset:cut])
        self.downloaded += cut - offset
        raise fetch_mod._Retry("cut", cut - offset)

    fetch_mod._Download._receive = receive
    try:
        r = get(server, "/w.bin", tmp_path / "w.bin", sleeps, expected_sha256=SHA)
    finally:
        fetch_mod._Download._receive = real
    assert r.sha256 == SHA and len(server.gets()) == 4
    assert sleeps == [FAST.countdown(0)] * 3


def test_503_then_success(server, tmp_path, sleeps):
    server.files["/w.bin"] = DATA
    server.statuses = [503, 502]
    r = get(server, "/w.bin", tmp_path / "w.bin", sleeps, expected_sha256=SHA)
    assert r.sha256 == SHA and len(server.gets()) == 3 and len(sleeps) == 2


def test_404_is_permanent_and_not_retried(server, tmp_path, sleeps):
    dest = tmp_path / "w.bin"
    with pytest.raises(PermanentError, match="404") as ei:
        get(server, "/missing.bin", dest, sleeps)
    assert not isinstance(ei.value, TransientError)
    assert len(server.gets()) == 1 and sleeps == []
    assert_no_leftovers(dest)


def test_connection_refused_is_storage_error(tmp_path, sleeps):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(StorageError):
        fetch_file(f"http://127.0.0.1:{port}/w.bin", tmp_path / "w.bin", progress=False, retry_policy=FAST, sleep=sleeps.append, timeout=5)
    assert len(sleeps) == FAST.max_retries


# ---------------------------------------------------------------- progress bar


def test_progress_bar_per_file_starts_at_resumed_bytes(server, tmp_path, sleeps, monkeypatch):
    bars = []

    class Bar:
        def __init__(self, **kw):
            self.kw, self.n, self.total = kw, kw.get("initial", 0), kw.get("total")
            self.closed = False
            bars.append(self)

        def update(self, k):
            self.n += k

        def reset(self, total=None):
            self.n, self.total = 0, total

        def close(self):
            self.closed = True

    monkeypatch.setattr(fetch_mod, "tqdm", Bar)
    server.files["/w.bin"] = DATA
    (tmp_path / "w.bin.part").write_bytes(DATA[:5000])
    get(server, "/w.bin", tmp_path / "w.bin", sleeps, progress=True)
    assert len(bars) == 1
    b = bars[0]
    assert b.kw["initial"] == 5000 and b.kw["total"] == len(DATA)
    assert b.kw["unit"] == "B" and b.kw["unit_scale"] is True and b.kw["desc"] == "w.bin"
    assert b.n == len(DATA) and b.closed

    bars.clear()
    get(server, "/w.bin", tmp_path / "other.bin", sleeps, progress=False)
    assert bars == []


# ---------------------------------------------------------------- fetch_missing


def test_fetch_missing_with_custom_list(server, tmp_path, sleeps):
    a, b, c = DATA, b"config" * 10, b"present"
    server.files.update({"/a.bin": a, "/b.json": b})
    server.etag["/a.bin"] = f'"{SHA}"'
    models = tmp_path / "models"
    (models / "x").mkdir(parents=True)
    (models / "x" / "c.bin").write_bytes(c)
    files = [
        WeightFile("deep/er/a.bin", server.url + "/a.bin", Component.GENERATOR),
        WeightFile("x/b.json", server.url + "/b.json", Component.GENERATOR),
        WeightFile("x/c.bin", server.url + "/c.bin", Component.ATTRIBUTES),  # would 404: must be skipped
    ]
    results = fetch_missing(models, files, progress=False, retry_policy=FAST, sleep=sleeps.append)
    assert [r.path for r in results] == [models / f.relpath for f in files]
    assert [r.skipped for r in results] == [False, False, True]
    assert [r.sha256 for r in results] == [sha(a), sha(b), sha(c)]
    assert (models / "deep/er/a.bin").read_bytes() == a and (models / "x/b.json").read_bytes() == b
    # digests written to the file_sha256 caches
    assert sha(a) in json.loads((models / "deep/er/.veil-sha256.json").read_text()).values()
    cache_x = json.loads((models / "x/.veil-sha256.json").read_text())
    assert {sha(b), sha(c)} <= set(cache_x.values())
    assert not list(models.rglob("*.part"))
    assert not any(p.endswith("/c.bin") for _, p, _ in server.log)


def test_fetch_missing_propagates_failure(server, tmp_path, sleeps):
    server.files["/a.bin"] = DATA
    files = [
        WeightFile("a.bin", server.url + "/a.bin", Component.GENERATOR),
        WeightFile("b.bin", server.url + "/nope.bin", Component.GENERATOR),
    ]
    with pytest.raises(PermanentError, match="404"):
        fetch_missing(tmp_path, files, progress=False, retry_policy=FAST, sleep=sleeps.append)
    assert (tmp_path / "a.bin").read_bytes() == DATA


def test_fetch_missing_defaults_to_required_files(tmp_path, monkeypatch):
    """With every required file present nothing is fetched (no network needed)."""
    monkeypatch.setattr(fetch_mod.requests.Session, "get", lambda *a, **k: pytest.fail("no request expected"))
    monkeypatch.setattr(fetch_mod.requests.Session, "head", lambda *a, **k: pytest.fail("no request expected"))
    req = required_files(tmp_path)
    content = {wf.relpath: wf.relpath.encode() for wf in req}
    content[RV_SINGLE_FILE] = checkpoint_bytes([SD15_TEXT_ENCODER_KEY, "model.diffusion_model.out.2.bias"])
    for wf in req:
        p = tmp_path / wf.relpath
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content[wf.relpath])
    results = fetch_missing(tmp_path, progress=False)
    assert [r.path for r in results] == [tmp_path / wf.relpath for wf in req]
    assert all(r.skipped for r in results)
    assert all(r.sha256 == sha(content[wf.relpath]) for r, wf in zip(results, req))
    assert not any(wf.optional for wf in req) and len(req) > 0


# ---------------------------------------------------------------- several sources


def test_next_source_on_404(server, tmp_path, sleeps):
    server.files["/mirror/w.bin"] = DATA
    wf = WeightFile("w.bin", (server.url + "/release/w.bin", server.url + "/mirror/w.bin"), Component.DEMOGRAPHY)
    [r] = fetch_missing(tmp_path, [wf], progress=False, retry_policy=FAST, sleep=sleeps.append)
    assert r.url == server.url + "/mirror/w.bin" and r.sha256 == SHA and not r.skipped
    assert [p for _, p, _ in server.gets()] == ["/release/w.bin", "/mirror/w.bin"]
    assert (tmp_path / "w.bin").read_bytes() == DATA and sleeps == []


def test_first_source_serves_and_second_is_not_asked(server, tmp_path, sleeps):
    server.files["/release/w.bin"] = DATA
    wf = WeightFile("w.bin", (server.url + "/release/w.bin", server.url + "/mirror/w.bin"), Component.DEMOGRAPHY)
    [r] = fetch_missing(tmp_path, [wf], progress=False, retry_policy=FAST, sleep=sleeps.append)
    assert r.url.endswith("/release/w.bin")
    assert not any(p.startswith("/mirror") for _, p, _ in server.log)


def test_every_source_404_names_them_all(server, tmp_path, sleeps):
    wf = WeightFile("w.bin", (server.url + "/a/w.bin", server.url + "/b/w.bin"), Component.DEMOGRAPHY)
    with pytest.raises(SourceNotFoundError) as ei:
        fetch_missing(tmp_path, [wf], progress=False, retry_policy=FAST, sleep=sleeps.append)
    assert "/a/w.bin" in str(ei.value) and "/b/w.bin" in str(ei.value) and ei.value.reason == "not_found"
    assert_no_leftovers(tmp_path / "w.bin")


def test_other_failures_do_not_move_to_the_next_source(server, tmp_path, sleeps):
    server.files["/b/w.bin"] = DATA
    server.statuses = [403]
    wf = WeightFile("w.bin", (server.url + "/a/w.bin", server.url + "/b/w.bin"), Component.DEMOGRAPHY)
    with pytest.raises(PermanentError, match="403"):
        fetch_missing(tmp_path, [wf], progress=False, retry_policy=FAST, sleep=sleeps.append)
    assert [p for _, p, _ in server.gets()] == ["/a/w.bin"]


def test_second_source_digest_is_checked_against_its_own_etag(server, tmp_path, sleeps):
    """The sha256 a source states is asked of that source (HEAD), not carried over from another."""
    server.files["/b/w.bin"] = DATA
    server.etag["/b/w.bin"] = f'"{sha(b"something else")}"'
    wf = WeightFile("w.bin", (server.url + "/a/w.bin", server.url + "/b/w.bin"), Component.DEMOGRAPHY)
    with pytest.raises(ChecksumMismatchError, match="/b/w.bin"):
        fetch_missing(tmp_path, [wf], progress=False, retry_policy=FAST, sleep=sleeps.append)
    assert ("HEAD", "/b/w.bin", None) in server.log
    assert_no_leftovers(tmp_path / "w.bin")


def test_deepface_sources_are_deepfaces_own_in_its_order():
    from deepface.models.demography.onnx import Age, Gender, Race

    by_name = {wf.relpath.rsplit("/", 1)[1]: wf for wf in CATALOGUE if wf.component is Component.DEMOGRAPHY}
    assert by_name["age_model_weights.onnx"].urls == tuple(Age.WEIGHTS_URL)
    assert by_name["race_model_single_batch.onnx"].urls == tuple(Race.WEIGHTS_URL)
    assert by_name["gender_model_weights.onnx"].urls == tuple(Gender.WEIGHTS_URL)
    for wf in by_name.values():
        assert wf.urls[0].startswith("https://github.com/serengil/deepface_models/releases/download/v1.0/")
        assert wf.urls[1].startswith("https://huggingface.co/serengil/deepface/")
        assert wf.sources.pinned() == wf.urls  # the copy used where deepface is not installed


def test_deepface_sources_without_deepface(monkeypatch):
    import importlib

    def no_deepface(name, *a, **k):
        raise ImportError(name)

    monkeypatch.setattr(importlib, "import_module", no_deepface)
    wf = next(wf for wf in CATALOGUE if wf.relpath.endswith("age_model_weights.onnx"))
    assert wf.urls == wf.sources.pinned() and len(wf.urls) == 2


# ---------------------------------------------------------------- the single-file checkpoint


def checkpoint_bytes(keys: list[str]) -> bytes:
    from safetensors.numpy import save

    return save({k: np.zeros((2, 2), np.float16) for k in keys})


def test_text_encoder_key_is_the_one_diffusers_looks_for():
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES

    assert SD15_TEXT_ENCODER_KEY == CHECKPOINT_KEY_NAMES["clip"]


def test_checkpoint_without_text_encoder_key_fails_after_fetch(server, tmp_path, sleeps):
    server.files["/rv.safetensors"] = checkpoint_bytes(["model.diffusion_model.out.2.bias", "first_stage_model.x"])
    wf = WeightFile(RV_SINGLE_FILE, server.url + "/rv.safetensors", Component.GENERATOR)
    with pytest.raises(IncompleteCheckpointError) as ei:
        fetch_missing(tmp_path, [wf], progress=False, retry_policy=FAST, sleep=sleeps.append)
    message = str(ei.value)
    assert str(tmp_path / RV_SINGLE_FILE) in message and SD15_TEXT_ENCODER_KEY in message
    assert isinstance(ei.value, PermanentError) and ei.value.reason == "incomplete_checkpoint"


def test_checkpoint_with_text_encoder_key_passes(server, tmp_path, sleeps):
    server.files["/rv.safetensors"] = checkpoint_bytes([SD15_TEXT_ENCODER_KEY])
    wf = WeightFile(RV_SINGLE_FILE, server.url + "/rv.safetensors", Component.GENERATOR)
    [r] = fetch_missing(tmp_path, [wf], progress=False, retry_policy=FAST, sleep=sleeps.append)
    assert r.path == tmp_path / RV_SINGLE_FILE


def test_unreadable_checkpoint_is_named(tmp_path):
    path = tmp_path / "rv.safetensors"
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(IncompleteCheckpointError, match="rv.safetensors"):
        check_single_file_text_encoder(path)


def test_tiny_checkpoint_holds_the_text_encoder_key(tiny_models):
    check_single_file_text_encoder(tiny_models / RV_SINGLE_FILE)


def test_loading_names_the_missing_key_too(tiny_models, tmp_path):
    """The worker's loader checks the same key before diffusers guesses at the model type."""
    import shutil

    import torch

    from workers.gpu.loading import load_sd_components

    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    (models / RV_SINGLE_FILE).write_bytes(checkpoint_bytes(["model.diffusion_model.out.2.bias"]))
    with pytest.raises(IncompleteCheckpointError, match="position_embedding"):
        load_sd_components(models, torch.device("cpu"), torch.float32)


# ---------------------------------------------------------------- offline, and what is said


def test_says_what_it_fetches_from_where_before_starting(server, tmp_path, sleeps):
    server.files["/release/w.bin"] = DATA
    wf = WeightFile("sub/w.bin", (server.url + "/release/w.bin",), Component.DEMOGRAPHY)
    said: list[str] = []
    fetch_missing(tmp_path, [wf], progress=False, retry_policy=FAST, sleep=sleeps.append, say=said.append)
    assert said == [f"veil: fetching 1 file(s) into {tmp_path} from 127.0.0.1",
                    f"[1/1] sub/w.bin <- {server.url}/release/w.bin"]
    said.clear()
    fetch_missing(tmp_path, [wf], progress=False, retry_policy=FAST, sleep=sleeps.append, say=said.append)
    assert said == []  # nothing missing: nothing to say, no probe


def test_unreachable_host_is_one_error_without_spending_the_retries(tmp_path, sleeps):
    with socket.socket() as s:  # a port nothing listens on: connection refused, as offline
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    wf = WeightFile("w.bin", (f"http://127.0.0.1:{port}/w.bin",), Component.DEMOGRAPHY)
    with pytest.raises(SourceUnreachableError, match=r"cannot reach 127\.0\.0\.1 .*offline\? .*veil models tiny"):
        fetch_missing(tmp_path, [wf], progress=False, retry_policy=RETRY_POLICY_SLOW, sleep=sleeps.append,
                      say=lambda line: None)
    assert sleeps == []  # not one backoff: the retries are for failures mid-download
    assert not (tmp_path / "w.bin").exists()
