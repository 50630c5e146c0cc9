"""Queue overhead: the distributed pipeline against `veil run` on the same photos, one machine.

Starts real services (moto_server for S3, Redis on 127.0.0.1:6379, one CPU and one GPU worker
as separate processes), measures

  * keys enqueued per second by `veil submit`'s code (N keys, no worker consuming),
  * end-to-end images/s through the queues (submit -> all sidecars written),
  * images/s of `veil run` in one process on the same photos,

and the GPU batch sizes the worker formed. Uses the tiny RANDOM models (their images are noise),
so it measures the plumbing's cost, not the method's.

    python benchmarks/queue_overhead.py [--photos 8] [--keys 2000] [--steps 15]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import boto3  # noqa: E402

from shared.jobs import JobStore  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.storage import open_storage  # noqa: E402
from tests.services import moto_s3, redis_url, start_worker, stop, wait_for, worker_env  # noqa: E402


def main() -> int:
    # 1. Photos, tiny models and the services' environment
    args = _parse_args()
    work = Path(tempfile.mkdtemp())
    photos, tiny, local_in = _prepare(work, args.photos)
    with moto_s3() as endpoint:
        _upload(endpoint, photos)
        env = worker_env(models_dir=tiny, broker_url=redis_url(12), s3_endpoint_url=endpoint, s3_access_key_id="x",
                         s3_secret_access_key="x", steps=args.steps, batch_size=args.batch_size,
                         gpu_batch_wait_s=1.0, cpu_queue="bench-cpu", gpu_queue="bench-gpu", device="cpu")
        # 2. Enqueue rate: N keys listed from a folder, no consumer
        submitted, enqueue_s = _enqueue_rate(env, work, args.keys)
        # 3. Through the queues
        queued_s, sizes = _through_queues(env, work, len(photos))
    # 4. One process
    embedded_s = _one_process(env, work, local_in, args.batch_size)
    # 5. Report
    n = len(photos)
    print(f"# queue overhead, tiny RANDOM models, {n} photos, {args.steps} steps, batch {args.batch_size}, {os.cpu_count()} CPUs")
    print(f"keys enqueued: {submitted} in {enqueue_s:.2f}s = {submitted / enqueue_s:.0f} keys/s")
    print(f"through the queues (1 CPU + 1 GPU worker, already warm): {queued_s:.1f}s = {n / queued_s:.3f} images/s")
    print(f"veil run, one process (includes model loading): {embedded_s:.1f}s = {n / embedded_s:.3f} images/s")
    print(f"ratio queued/embedded time: {queued_s / embedded_s:.2f}")
    print(f"GPU batch sizes formed: {sizes}")
    return 0


def _parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--photos", type=int, default=8)
    p.add_argument("--keys", type=int, default=2000)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=4)
    return p.parse_args()


def _prepare(work: Path, count: int) -> tuple[list[Path], Path, Path]:
    """(photos, tiny models folder, local input folder holding copies of the photos)."""
    faces = Settings.from_env().faces_dir
    photos = sorted(f for f in faces.iterdir() if f.suffix == ".jpg" and f.name.startswith("id"))[:count]
    tiny = work / "tiny"
    subprocess.run([sys.executable, "-m", "orchestrator.cli", "models", "tiny", str(tiny)], check=True,
                   capture_output=True, cwd=ROOT)
    local_in = work / "in"
    local_in.mkdir()
    for f in photos:
        shutil.copy(f, local_in / f.name)
    return photos, tiny, local_in


def _upload(endpoint: str, photos: list[Path]) -> None:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x",
                      aws_secret_access_key="x")
    s3.create_bucket(Bucket="bench")
    for f in photos:
        s3.put_object(Bucket="bench", Key=f"in/{f.name}", Body=f.read_bytes())


def _enqueue_rate(env: dict[str, str], work: Path, keys: int) -> tuple[int, float]:
    """(keys submitted, seconds) for ``keys`` empty files listed from a folder, nobody consuming."""
    keys_dir = work / "keys"
    keys_dir.mkdir()
    for i in range(keys):
        (keys_dir / f"{i:06d}.jpg").touch()
    os.environ.update({k: v for k, v in env.items() if k.startswith("VEIL_")})
    from orchestrator.submit import submit
    from workers.celery_app import configure

    settings = Settings.from_env(cpu_queue="bench-enqueue")
    app = configure(settings)
    t0 = time.perf_counter()
    submitted = submit(str(keys_dir), "s3://bench/nowhere/", settings, open_storage(settings),
                       JobStore.from_url(settings.jobs_url))
    enqueue_s = time.perf_counter() - t0
    app.connection().default_channel.queue_purge("bench-enqueue")
    return submitted.count, enqueue_s


def _through_queues(env: dict[str, str], work: Path, n: int) -> tuple[float, list[int]]:
    """(seconds from submit to the last sidecar, GPU batch sizes formed), warm workers."""
    cpu = start_worker("cpu", env, work / "cpu.log", "--concurrency", "1")
    gpu = start_worker("gpu", env, work / "gpu.log")
    try:
        wait_for(lambda: "ready" in (work / "gpu.log").read_text(errors="replace")
                 and "ready" in (work / "cpu.log").read_text(errors="replace"), 300, "workers")
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "submit", "s3://bench/in/", "--out",
                              "s3://bench/out/"], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
        job_id = out.stdout.strip().splitlines()[-1]
        jobs = JobStore.from_url(env["VEIL_BROKER_URL"])
        wait_for(lambda: (j := jobs.get(job_id)) and j.total == n and j.finished >= j.total, 3600,
                 "the job", interval=0.5)
        queued_s = time.perf_counter() - t0
    finally:
        stop(gpu)
        stop(cpu)
    sizes = [int(k) for k in re.findall(r"batch of (\d+) requests", (work / "gpu.log").read_text(errors="replace"))]
    return queued_s, sizes


def _one_process(env: dict[str, str], work: Path, local_in: Path, batch_size: int) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(local_in), str(work / "out"), "-q",
                    "--batch-size", str(batch_size)], env=env, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
