"""Is the GPU worker Online in Flower while its batches run? (issue 11)

Starts Flower and a GPU worker (tiny random models, on the CPU, one torch thread) from the
checkout CHECKOUT (default: this one; pass another to measure its code), queues N prompt
messages straight onto the GPU queue, and polls Flower's /api/workers?status=true every 0.5 s
from the first batch's start until every key's sidecar exists. Prints how many polls saw the
GPU worker online. Needs a Redis (--redis-url; its database is flushed).

    python benchmarks/flower_online.py --redis-url redis://127.0.0.1:6411/7 [--checkout /work/main]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
import requests

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

AUTH = ("veil", "bench-flower")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--checkout", default=str(HERE))
    ap.add_argument("--keys", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    redis.Redis.from_url(args.redis_url).flushdb()
    tmp = Path(tempfile.mkdtemp(prefix="flower-online-"))
    subprocess.run([sys.executable, "-m", "orchestrator.cli", "models", "tiny", str(tmp / "models")], cwd=HERE,
                   check=True, capture_output=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")} | {
        "VEIL_MODELS_DIR": str(tmp / "models"), "VEIL_BROKER_URL": args.redis_url,
        "VEIL_BATCH_SIZE": str(args.batch_size), "VEIL_GPU_BATCH_WAIT_S": "1", "VEIL_STEPS": str(args.steps),
        "VEIL_IMAGE_SIZE": "64", "VEIL_FLOWER_PASSWORD": AUTH[1], "VEIL_FLOWER_PORT": str(port),
        "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": args.checkout}
    procs = [subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *cmd], cwd=args.checkout, env=env,
                              stdout=open(tmp / f"{cmd[-1]}.log", "wb"), stderr=subprocess.STDOUT,
                              start_new_session=True) for cmd in (["flower"], ["worker", "gpu"])]
    try:
        url = f"http://127.0.0.1:{port}/api/workers"

        def gpu_alive() -> bool | None:
            try:
                status = requests.get(url, auth=AUTH, params={"status": "true"}, timeout=5).json()
            except (requests.RequestException, ValueError):
                return None
            found = [v for k, v in status.items() if k.startswith("gpu-")]
            return any(found) if found else None

        deadline = time.monotonic() + 600
        while gpu_alive() is not True:
            assert time.monotonic() < deadline, "GPU worker never online"
            time.sleep(1)
        from shared.settings import Settings
        from workers.celery_app import GPU_TASK, configure

        app = configure(Settings.from_env({}, broker_url=args.redis_url))
        out = tmp / "out"
        for i in range(args.keys):
            app.send_task(GPU_TASK, queue="veil.gpu", args=[dict(
                job_id="bench", input_uri=f"/in/{i}.png", output_uri=str(out / f"{i}.png"), seed=i,
                prompt="closeup portrait photo of a man", negative_prompt="blurry", model_sha256={},
                analysis=dict(face_box=[0.0, 0.0, 10.0, 10.0, 0.9], celeba_scores={"Male": 0.9}, age=30,
                              ethnicity="white", deepface_gender="Man"))])
        log = tmp / "gpu.log"
        while not re.search(r"batch of \d+ requests", log.read_text(errors="replace")):
            time.sleep(0.1)
        polls, t0 = [], time.monotonic()
        while not all((out / f"{i}.png.json").exists() for i in range(args.keys)):
            polls.append(gpu_alive())
            time.sleep(0.5)
        online = sum(1 for p in polls if p)
        print(f"checkout {args.checkout}: GPU worker online in {online} of {len(polls)} polls over "
              f"{time.monotonic() - t0:.1f} s of batches ({args.keys} keys, batch {args.batch_size}, "
              f"{args.steps} steps)")
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(p.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
