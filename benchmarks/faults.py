"""Fault run: one job through the distributed tiers while processes and services are killed.

Real services: a private redis-server with docker-compose's persistence settings (so it can be
restarted), moto_server as S3 behind a TcpProxy (so it can be cut), one CPU and one GPU worker
as separate processes, the tiny RANDOM models at a small image size (images are noise: this
measures the plumbing). Faults, in a shuffled order at random moments, each applied once the
job has progressed since the previous one: SIGKILL of the GPU worker x3 (restarted at once),
SIGKILL of the CPU worker x2 (restarted at once), S3 cut for 20 s x2, Redis restart x1
(SIGTERM, 5 s down). Reports keys submitted / done / failed (reasons) / lost / duplicated
outputs, re-generated keys (work done twice, not outputs), and per fault the time from the
fault's end to the next key finishing ("recover").

    python benchmarks/faults.py [--keys 48] [--seed 1] [--visibility 40]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from shared.jobs import JobStore  # noqa: E402
from shared.settings import Settings  # noqa: E402
from tests.faults import OwnRedis, batch_sizes, object_keys, s3_behind_proxy  # noqa: E402
from tests.services import start_worker, stop, wait_for, worker_env  # noqa: E402

BUCKET = "veil-faults"
PHOTOS = ["couple.jpg", "fr_biden.jpg", "id02_12.jpg", "id03_16.jpg", "id05_67.jpg", "id07_25.jpg"]
FAULTS = ["gpu_kill"] * 3 + ["cpu_kill"] * 2 + ["s3_outage"] * 2 + ["redis_restart"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=48)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--visibility", type=int, default=40)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=1500)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    faults = FAULTS[:]
    rng.shuffle(faults)
    faces = Settings.from_env().faces_dir
    work = Path(tempfile.mkdtemp(prefix="veil-faults-"))
    from models.tiny import write_tiny_models

    write_tiny_models(work / "models")
    redis_srv = OwnRedis(work)
    with s3_behind_proxy(BUCKET) as (proxy, client, endpoint):
        names = [f"k{i:03d}_{PHOTOS[i % len(PHOTOS)]}" for i in range(args.keys)]
        for name in names:
            client.put_object(Bucket=BUCKET, Key=f"in/{name}", Body=(faces / name.split("_", 1)[1]).read_bytes())
        env = worker_env(
            models_dir=work / "models",
            broker_url=redis_srv.url,
            s3_endpoint_url=proxy.url,
            s3_access_key_id="testing",
            s3_secret_access_key="testing",
            batch_size=4,
            gpu_batch_wait_s=1.0,
            steps=args.steps,
            image_size=64,
            visibility_timeout_s=args.visibility,
        )
        procs = {
            "cpu": start_worker("cpu", env, work / "cpu.log", "--concurrency", "1"),
            "gpu": start_worker("gpu", env, work / "gpu.log"),
        }
        jobs = JobStore.from_url(redis_srv.url)

        def finished() -> int:
            try:
                job = jobs.get(job_id)
                return job.finished if job else -1
            except Exception:  # noqa: BLE001 - Redis down
                return -1

        submit_env = {**env, "VEIL_S3_ENDPOINT_URL": endpoint}
        t0 = time.monotonic()
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "orchestrator.cli",
                "submit",
                f"s3://{BUCKET}/in/",
                "--out",
                f"s3://{BUCKET}/out/",
                "--name",
                "faults",
            ],
            env=submit_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        job_id = out.stdout.strip().splitlines()[-1]
        wait_for(lambda: batch_sizes(work / "gpu.log"), 300, "the first GPU batch", interval=0.2)
        rows = []
        for fault in faults:
            time.sleep(rng.uniform(1, 8))
            before = finished()
            if before >= args.keys:
                rows.append((fault, None, None, "job already finished: not applied"))
                continue
            t_fault = time.monotonic() - t0
            if fault in ("gpu_kill", "cpu_kill"):
                tier = fault.split("_")[0]
                stop(procs[tier], signal.SIGKILL)
                extra = ("--concurrency", "1") if tier == "cpu" else ()
                procs[tier] = start_worker(tier, env, work / f"{tier}.log", *extra)
            elif fault == "s3_outage":
                proxy.cut()
                time.sleep(20)
                proxy.restore()
            else:
                redis_srv.restart(down_s=5)
            t_end = time.monotonic()
            base = max(before, finished())
            try:
                wait_for(lambda b=base: finished() > b or finished() >= args.keys, args.timeout, "progress", 0.5)
                recover = time.monotonic() - t_end
            except TimeoutError:
                recover = float("nan")
            rows.append((fault, t_fault, recover, f"{base}/{args.keys} finished at the fault's end"))
        wait_for(lambda: finished() >= args.keys, args.timeout, "the job to finish", interval=1.0)
        total_s = time.monotonic() - t0
        for p in procs.values():
            stop(p)
        job = jobs.get(job_id)
        objects = object_keys(client, BUCKET, "out/")
        sidecars = {
            k: json.loads(client.get_object(Bucket=BUCKET, Key=k)["Body"].read())
            for k in objects
            if k.endswith(".json")
        }
        expected = {f"out/{n}" for n in names}
        statuses = Counter(r["status"] for r in sidecars.values())
        reasons = Counter(r.get("reason") for r in sidecars.values() if r["status"] == "failed")
        lost = len(expected - {k.removesuffix(".json") for k in sidecars})
        images = [k for k in objects if not k.endswith(".json")]
        stray = [k for k in objects if k.removesuffix(".json") not in expected]
        done_without_image = sum(1 for k, r in sidecars.items() if r["status"] == "done" and k[:-5] not in images)
        generated = sum(batch_sizes(work / "gpu.log"))
    redis_srv.stop()
    print(
        f"\nmachine: {os.cpu_count()} CPUs, no GPU used (CUDA_VISIBLE_DEVICES=''); "
        f"tiny random models, 64 px, {args.steps} steps, batch 4, visibility {args.visibility} s, seed {args.seed}"
    )
    print(f"job wall time {total_s:.0f} s; work folder {work}\n")
    print("| fault | at (s) | recover (s) | note |\n|---|---|---|---|")
    for fault, at, rec, note in rows:
        print(f"| {fault} | {'' if at is None else f'{at:.0f}'} | {'' if rec is None else f'{rec:.1f}'} | {note} |")
    print(
        "\n| keys submitted | done | no_face | failed | lost | duplicated outputs | done without image |"
        " job counters (done/no_face/failed of total) | GPU requests handled (incl. redone) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.keys} | {statuses['done']} | {statuses['no_face']} | {statuses['failed']} | {lost} | {len(stray)} |"
        f" {done_without_image} | {job.counts['done']}/{job.counts['no_face']}/{job.counts['failed']} of {job.total} |"
        f" {generated} |"
    )
    if reasons:
        print("\nfailed reasons: " + "; ".join(f"{r} x{n}" for r, n in reasons.items()))


if __name__ == "__main__":
    main()
