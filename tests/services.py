"""Real services for the distributed tests: a moto S3 server, Redis, and veil workers as
separate processes. Nothing here is a mock: boto3 talks HTTP to moto_server, Celery talks to
the Redis server on 127.0.0.1:6379 (started by scripts/services.sh when none answers)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@contextmanager
def moto_s3():
    port = free_port()
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    try:
        wait_for(up, 30, "moto_server")
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)


# The Redis the tests use: 127.0.0.1:6379 unless TEST_REDIS_PORT names another (so two
# checkouts can run their suites at once without flushing each other's databases).
REDIS_PORT = int(os.environ.get("TEST_REDIS_PORT", "6379"))


def redis_url(db: int) -> str:
    url = f"redis://127.0.0.1:{REDIS_PORT}/{db}"
    client = redis.Redis.from_url(url)
    client.ping()
    client.flushdb()
    return url


def worker_env(**veil: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    env.update({f"VEIL_{k.upper()}": str(v) for k, v in veil.items()})
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    return env


def start_worker(tier: str, env: dict[str, str], log: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "orchestrator.cli", "worker", tier, *extra]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
