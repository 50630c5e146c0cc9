"""Shared fixtures. Real photos come from ``VEIL_FACES_DIR`` (default ``../shared/faces``).

One session runs the whole suite (``python -m pytest tests``; ``scripts/test.sh`` adds
``-n 2 --dist loadfile``). Under pytest-xdist each test process gets its own redis-server on a
free port (``TEST_REDIS_PORT``, read by ``tests.services``), so modules that flush "their"
database never flush another process's; the tiny models are written once per run and shared."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from shared.settings import Settings  # noqa: E402


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    path = Settings.from_env().faces_dir
    if not (path / "identities.csv").is_file():
        pytest.fail(f"real face photos not found at {path}: set VEIL_FACES_DIR to ../shared/faces")
    return path


def pytest_configure(config) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:  # each xdist process its own server, whatever TEST_REDIS_PORT said
        config._veil_redis = _own_redis_server(worker)  # type: ignore[attr-defined]


def pytest_unconfigure(config) -> None:
    proc = getattr(config, "_veil_redis", None)
    if proc is not None:
        proc.terminate()
        proc.wait(10)


def _own_redis_server(worker: str) -> subprocess.Popen:
    """A redis-server for this xdist process; ``TEST_REDIS_PORT`` names it to ``tests.services``
    (set before anything imports that module, which reads it once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("redis-server") or "redis-server"
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            redis.Redis(port=port, socket_timeout=1).ping()
            break
        except redis.RedisError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"no redis-server for {worker} on port {port}") from None
            time.sleep(0.1)
    os.environ["TEST_REDIS_PORT"] = str(port)
    return proc


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """Tiny RANDOM models in the real on-disk formats: images are noise, attributes random.
    Written once per run: xdist processes share the run's base folder and take turns on a lock."""
    from models.tiny import write_tiny_models

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    dest = root / "tiny-models-shared"
    with open(root / "tiny-models.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (dest / ".complete").exists():
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir()
            write_tiny_models(dest)
            (dest / ".complete").touch()
    return dest


#: the longest files (each waits out visibility timeouts and partitions by design): started
#: first, so on two xdist processes the run is not left waiting on one of them at the end
LONGEST_FIRST = ("test_partition.py", "test_faults.py", "test_k8s.py", "test_distributed.py")


def pytest_collection_modifyitems(session, config, items) -> None:
    def rank(item) -> tuple[int, int]:
        path = Path(str(item.fspath))
        if path.name in LONGEST_FIRST:
            return (0, LONGEST_FIRST.index(path.name))
        if item.get_closest_marker("slow"):
            return (1, 0)
        return (2, 0) if path.parent.name == "integration" else (3, 0)

    items.sort(key=rank)  # stable: a file's tests keep their order
