"""Fault tooling shared by tests/integration/test_faults.py and benchmarks/faults.py: a private
redis-server (so it can be killed and restarted; never the shared one on 6379), with the
persistence settings of docker-compose.yml, and a moto_server S3 behind a ``TcpProxy``."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import boto3
import redis
import yaml

from tests.services import ROOT, free_port, moto_s3, wait_for
from tests.tcpproxy import TcpProxy


def compose_redis_args() -> list[str]:
    """The redis-server arguments of docker-compose.yml (its persistence settings). compose starts
    it from a shell (``exec redis-server - ARGS <<EOF``: the ACL user and its password on stdin,
    issue 23); the arguments are the words between ``-`` and the here-document."""
    import shlex

    command = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"]["command"]
    assert command[:2] == ["sh", "-c"], command
    words = shlex.split(command[2].splitlines()[0].split("<<", 1)[0])
    assert words[:3] == ["exec", "redis-server", "-"], words
    return words[3:]


class OwnRedis:
    """A redis-server on a free port with compose's persistence settings, data in ``folder``."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server") or "redis-server"
        args = [exe, *compose_redis_args(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        self.proc = subprocess.Popen(args, stdout=open(self.folder / "redis.log", "ab"), stderr=subprocess.STDOUT)
        wait_for(self.ping, 30, "own redis-server")

    def ping(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: what `docker restart` sends (Redis flushes its append-only file and exits)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def restart(self, down_s: float) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


@contextmanager
def s3_behind_proxy(bucket: str):
    """(proxy, direct client, direct endpoint): workers talk through ``proxy.url``."""
    with moto_s3() as endpoint, TcpProxy(int(endpoint.rsplit(":", 1)[1])) as proxy:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket=bucket)
        yield proxy, client, endpoint


def object_keys(client, bucket: str, prefix: str) -> list[str]:
    """The keys' outputs and sidecars under ``prefix`` (a job's own files under ``_veil/`` left out)."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []) if "/_veil/" not in o["Key"])


def batch_sizes(log_path: Path) -> list[int]:
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    return [int(n) for n in re.findall(r"batch of (\d+) requests", text)]


#: diffusion steps for a GPU worker a test SIGKILLs mid-batch: a 64 px batch of tiny models takes
#: ~0.3 s at 6 steps, so a kill sent when the batch's first line is seen could land after it
#: committed; at 40 steps it takes seconds, and the kill's landing is checked (``kill_mid_batch``)
MID_BATCH_STEPS = 40


def kill_mid_batch(proc: subprocess.Popen, log: Path) -> int:
    """SIGKILLs a GPU worker once its first batch started, and checks the kill landed before that
    batch committed (a kill after it would test nothing). Returns the log's length at the kill:
    what follows is the next worker's (``generated_since``)."""
    from tests.services import stop

    wait_for(lambda: batch_sizes(log), 300, "the first GPU batch to start", interval=0.05)
    stop(proc, signal.SIGKILL)  # nothing acknowledged
    text = log.read_text(errors="replace")
    assert "batch committed" not in text, "the first batch committed before the kill: not mid-batch"
    return len(text)


def generated_since(log: Path, offset: int) -> int:
    """Keys the GPU worker(s) generated after ``offset`` in ``log`` (already-done keys excluded)."""
    text = log.read_text(errors="replace")[offset:]
    return sum(int(n) for n in re.findall(r"batch of \d+ requests, (\d+) to generate", text))
