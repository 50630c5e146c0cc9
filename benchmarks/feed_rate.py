"""Feeder throughput: keys moved per second from a job's pending list into ``veil.cpu``.

A job of K keys (an S3 INPUT/OUTPUT, so no file system call per key) is put in its pending list
at once; ``Feeder.feed_once`` runs in a loop with a window of K keys while a consumer thread
drains ``veil.cpu`` (LTRIM, discarding: the messages' cost to workers is not measured here).
The time runs from the first ``feed_once`` to the last key leaving the pending list. The
messages are checked at the end: as many as keys, every key once.

    python benchmarks/feed_rate.py --keys 100000     # its own redis-server on a spare port

``measure(redis_url, keys)`` is what ``benchmarks/scale.py`` calls (it flushes that database).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from shared.jobs import JobStore, job_key  # noqa: E402
from shared.messages import JobSpec  # noqa: E402
from shared.settings import Settings  # noqa: E402
from tests.services import free_port, wait_for  # noqa: E402
from workers.celery_app import configure  # noqa: E402
from workers.feeder import Feeder  # noqa: E402

QUEUE = "veil.cpu"


def _fill(jobs: JobStore, keys: int) -> str:
    """A listed job of ``keys`` relative keys (``i % 100/iiiiiiii.jpg``) waiting to be fed."""
    spec = JobSpec(job_id="feedrate", name="feedrate", input="s3://bench/in/", source="s3://bench/in",
                   output="s3://bench/out/", seed=0, overwrite=False, created=time.time())  # fmt: skip
    jobs.create(spec.job_id, name=spec.name, input=spec.source, output=spec.output, spec=spec)
    page = 10_000
    for start in range(0, keys, page):
        batch = [f"{i % 100}/{i:08d}.jpg" for i in range(start, min(keys, start + page))]
        jobs.add_page(spec.job_id, batch, cursor=batch[-1])
    jobs.end_listing(spec.job_id)
    return spec.job_id


def _drain(r: redis.Redis, stop: threading.Event, counted: list[int], seen: set[str] | None) -> None:
    """The consumer: takes everything in veil.cpu each round (LRANGE + LTRIM in one MULTI)."""
    while not stop.is_set():
        pipe = r.pipeline(transaction=True)
        pipe.lrange(QUEUE, 0, -1)
        pipe.ltrim(QUEUE, 1, 0)  # empties the list
        taken, _ = pipe.execute()
        counted[0] += len(taken)
        if seen is not None:
            for raw in taken:
                seen.add(json.loads(raw)["headers"]["argsrepr"].split("'input_uri': '", 1)[1].split("'", 1)[0])
        if not taken:
            time.sleep(0.001)


def measure(redis_url: str, keys: int, check: bool = True) -> dict:
    """``{"keys": K, "keys_per_s": ..., "seconds": ..., "passes": ...}``; flushes the database."""
    r = redis.Redis.from_url(redis_url)
    r.flushdb()
    seconds_window = {"queue_window_s": 0} if "queue_window_s" in Settings.model_fields else {}  # main's: none
    settings = Settings.from_env({}, broker_url=redis_url, cpu_queue=QUEUE, queue_window=keys, **seconds_window)
    configure(settings)
    jobs = JobStore.from_url(redis_url)
    job_id = _fill(jobs, keys)
    feeder = Feeder(settings, jobs)
    stop, counted, seen = threading.Event(), [0], (set() if check else None)
    consumer = threading.Thread(target=_drain, args=(redis.Redis.from_url(redis_url), stop, counted, seen))
    consumer.start()
    passes = 0
    try:
        t0 = time.perf_counter()
        while r.llen(job_key(job_id, "pending")):
            feeder.feed_once()
            passes += 1
        seconds = time.perf_counter() - t0
        wait_for(lambda: counted[0] + r.llen(QUEUE) >= keys, 60, "the consumer", interval=0.01)
    finally:
        stop.set()
        consumer.join()
    counted[0] += int(r.llen(QUEUE))
    if counted[0] != keys or (seen is not None and len(seen) + int(r.llen(QUEUE)) != keys):
        raise RuntimeError(f"{keys} keys fed but {counted[0]} messages ({len(seen or ())} distinct) consumed")
    return {"keys": keys, "keys_per_s": round(keys / seconds, 1), "seconds": round(seconds, 3), "passes": passes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--redis-url", help="use this Redis (its database is flushed) instead of starting one")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    proc = None
    url = args.redis_url
    folder = tempfile.mkdtemp()
    if url is None:
        port = free_port()
        exe = shutil.which("redis-server") or "redis-server"
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                 "--dir", folder], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        url = f"redis://127.0.0.1:{port}/0"
        wait_for(lambda: _ping(url), 30, "redis-server")
    try:
        result = measure(url, args.keys)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _ping(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url).ping())
    except redis.RedisError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
