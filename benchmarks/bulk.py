"""Bulk submit: a million keys into Redis, no workers (issue 10's proof).

Starts a fresh redis-server on a spare port (no persistence) and moto_server (S3), then:

  1. a small job "other" (a list file of --other keys), so the queue holds another job's keys;
  2. `veil submit` of a --keys list file (S3 URIs) as a subprocess, timed; meanwhile Redis
     ``used_memory`` is sampled, and `veil status` is timed in-process (``JobStore.get`` + rate +
     queue depths: what the command reads) and as the real command (includes Python start-up);
  3. `veil cancel` of the big job: the queue must then hold none of its keys, and all of the
     other job's, and its pending list must be gone;
  4. a --s3-keys S3 listing submit against moto_server (objects put with 16 threads first).

    python benchmarks/bulk.py [--keys 1000000] [--other 500] [--s3-keys 100000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import boto3  # noqa: E402
import redis  # noqa: E402

from shared.jobs import JobStore, digest, job_key  # noqa: E402
from shared.settings import Settings  # noqa: E402
from tests.services import free_port, moto_s3, wait_for, worker_env  # noqa: E402
from workers import transport  # noqa: E402
from workers.transport import queue_depth  # noqa: E402


def _redis_server(folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    exe = shutil.which("redis-server") or "redis-server"
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(lambda: _ping(url), 30, "redis-server")
    return proc, url


def _ping(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url).ping())
    except redis.RedisError:
        return False


def _veil(env: dict, *args: str, timeout: float = 3600) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    if proc.returncode not in (0, 1, 3):
        raise SystemExit(f"veil {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc, time.perf_counter() - t0


def _queued_jobs(r: redis.Redis, queue: str) -> list[str]:
    return [transport.task_args(raw)[0]["job_id"] for raw in r.lrange(queue, 0, -1)]


def _list_file(path: Path, n: int, prefix: str) -> Path:
    with open(path, "w") as f:
        for start in range(0, n, 10_000):
            end = min(n, start + 10_000)
            f.write("".join(f"s3://bench/{prefix}/{i // 1000:04d}/{i:07d}.jpg\n" for i in range(start, end)))
    return path


def _big_submit(env: dict, r: redis.Redis, settings: Settings, listing: Path, n: int) -> dict:
    jobs = JobStore.from_url(settings.jobs_url)
    baseline = int(r.info("memory")["used_memory"])
    samples: list[int] = []
    status_s: list[float] = []
    done = threading.Event()

    def watch() -> None:
        job_id = None
        while not done.is_set():
            samples.append(int(r.info("memory")["used_memory"]))
            job_id = job_id or jobs.by_name("big")
            if job_id:
                t0 = time.perf_counter()
                jobs.get(job_id), jobs.rate(job_id), queue_depth(r, settings)
                status_s.append(time.perf_counter() - t0)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "orchestrator.cli", "submit", str(listing), "--out", "s3://bench/out-big/"]
    cmd += ["--name", "big"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job_id = wait_for(lambda: jobs.by_name("big"), 120, "the big job", interval=0.05)
    time.sleep(2)
    cli_status = [_veil(env, "status", job_id)[1] for _ in range(2)]  # the real command, mid-submit
    out, err = proc.communicate(timeout=3600)
    submit_s = time.perf_counter() - t0
    ended = time.time()
    done.set()
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(f"submit failed: {err[-2000:]}")
    job = jobs.get(job_id)
    info = r.info("memory")
    return {
        "keys": n,
        "job_id": job_id,
        "submit_s": submit_s,
        "keys_per_s": n / submit_s,
        # from the job's creation (the process started, listing begun) to the command's exit
        "listing_s": ended - job.created,
        "keys_per_s_listing": n / (ended - job.created),
        "total": job.total,
        "pending": job.pending,
        "baseline_used_memory": baseline,
        "peak_used_memory_sampled": max(samples),
        "used_memory_peak": int(info["used_memory_peak"]),
        "used_memory_after": int(info["used_memory"]),
        "bytes_per_key": (int(info["used_memory_peak"]) - baseline) / n,
        "status_inprocess_ms_median": 1000 * sorted(status_s)[len(status_s) // 2],
        "status_inprocess_ms_max": 1000 * max(status_s),
        "status_inprocess_samples": len(status_s),
        "status_cli_s": cli_status,
    }


def _s3_submit(env: dict, endpoint: str, settings: Settings, n: int) -> dict:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="x")  # fmt: skip
    t0 = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: client.put_object(Bucket="bench", Key=f"s3in/{i // 1000:04d}/{i:07d}.jpg", Body=b"x"),
                      range(n)))  # fmt: skip
    put_s = time.perf_counter() - t0
    t0 = time.perf_counter()  # what the store's listing alone costs (moto_server is not S3)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix="s3in/")
    raw = sum(len(p.get("Contents", [])) for p in pages)
    raw_list_s = time.perf_counter() - t0
    proc, submit_s = _veil(env, "submit", "s3://bench/s3in", "--out", "s3://bench/out-s3/", "--name", "s3")
    ended = time.time()
    job = JobStore.from_url(settings.jobs_url).get(proc.stdout.strip().splitlines()[-1])
    assert job is not None and job.total == n, job
    listing_s = ended - job.created
    return {"keys": n, "put_s": put_s, "raw_list_s": raw_list_s, "raw_listed": raw,
            "submit_s": submit_s, "keys_per_s": n / submit_s, "listing_s": listing_s,
            "keys_per_s_listing": n / listing_s, "total": job.total}  # fmt: skip


def _finished_set(r: redis.Redis, n: int) -> dict:
    """Redis bytes per finished key: each one's 8-byte digest in the job's set (``JobStore.record``)."""
    key = job_key("finished-set-measure", "keys")
    before = int(r.info("memory")["used_memory"])
    for start in range(0, n, 10_000):
        r.sadd(
            key, *[digest(f"s3://bench/in/{i // 1000:04d}/{i:07d}.jpg") for i in range(start, min(n, start + 10_000))]
        )
    after = int(r.info("memory")["used_memory"])
    r.delete(key)
    return {"keys": n, "bytes": after - before, "bytes_per_key": (after - before) / n}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--other", type=int, default=500)
    parser.add_argument("--s3-keys", type=int, default=100_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    server, url = _redis_server(work)
    report: dict = {"cpus": os.cpu_count(), "load_before": os.getloadavg()}
    try:
        with moto_s3() as endpoint:
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x",
                         aws_secret_access_key="x").create_bucket(Bucket="bench")  # fmt: skip
            values = dict(broker_url=url, s3_endpoint_url=endpoint, s3_access_key_id="x", s3_secret_access_key="x")
            env = worker_env(**values)
            settings = Settings.from_env({}, **values)
            r = redis.Redis.from_url(url)
            # 1. Another job first: its keys sit in veil.cpu
            other, _ = _veil(env, "submit", str(_list_file(work / "other.txt", args.other, "other")), "--out",
                             "s3://bench/out-other/", "--name", "other")  # fmt: skip
            other_id = other.stdout.strip().splitlines()[-1]
            # 2. The big list file
            big = _big_submit(env, r, settings, _list_file(work / "big.txt", args.keys, "in"), args.keys)
            report["big"] = big
            before = _queued_jobs(r, settings.cpu_queue)
            # 3. Cancel the big job
            cancel, cancel_s = _veil(env, "cancel", big["job_id"])
            after = _queued_jobs(r, settings.cpu_queue)
            report["cancel"] = {
                "cancel_s": cancel_s,
                "queued_before": {"big": before.count(big["job_id"]), "other": before.count(other_id)},
                "queued_after": {"big": after.count(big["job_id"]), "other": after.count(other_id)},
                "big_pending_list_exists": bool(r.exists(job_key(big["job_id"], "pending"))),
                "other_pending": JobStore.from_url(url).get(other_id).pending,  # type: ignore[union-attr]
                "output": cancel.stdout.strip(),
            }
            assert report["cancel"]["queued_after"]["big"] == 0
            assert report["cancel"]["queued_after"]["other"] == report["cancel"]["queued_before"]["other"]
            report["used_memory_after_cancel"] = int(r.info("memory")["used_memory"])
            # 4. The other per-key structure: the finished-keys set, as if all the keys had ended
            report["finished_set"] = _finished_set(r, args.keys)
            # 5. An S3 listing
            if args.s3_keys:
                report["s3"] = _s3_submit(env, endpoint, settings, args.s3_keys)
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    report["load_after"] = os.getloadavg()
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
