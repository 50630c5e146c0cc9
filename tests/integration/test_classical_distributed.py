"""A classical method through the distributed path (issue 13): `veil submit --method pixelate`
with only a CPU worker running. The CPU worker finishes every key itself (image + sidecar), no
message reaches the GPU queue, and each output keeps its input's size. Every face is covered, as
in `veil run` (issue 25: the same stage function): the sidecar lists each face changed, boxes inside
the image. Real services: Redis, moto_server, a CPU worker process."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import boto3
import pytest
import redis
from PIL import Image

from shared.jobs import JobStore
from tests.services import ROOT, moto_s3, redis_url, start_worker, stop, wait_for, worker_env

pytestmark = pytest.mark.slow

FACES = ["id02_12.jpg", "id07_25.jpg", "fr_biden.jpg", "couple.jpg"]
BUCKET = "veil-classical"
DB = 12


def test_a_classical_method_finishes_on_the_cpu_tier(faces_dir, tmp_path):
    with moto_s3() as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket=BUCKET)
        for name in FACES:
            client.put_object(Bucket=BUCKET, Key=f"in/{name}", Body=(faces_dir / name).read_bytes())
        broker = redis_url(DB)
        redis.Redis.from_url(broker).flushdb()
        # no models folder at all: a classical method needs only MTCNN, which ships in its wheel;
        # the CPU worker loads the attribute models only for a key of method sd
        env = worker_env(models_dir=tmp_path / "no-models", broker_url=broker, s3_endpoint_url=endpoint,
                         s3_access_key_id="testing", s3_secret_access_key="testing",
                         cpu_queue=f"cpu-{DB}", gpu_queue=f"gpu-{DB}")
        cpu = start_worker("cpu", env, tmp_path / "cpu.log", "--concurrency", "1")
        try:
            submitted = subprocess.run(
                [sys.executable, "-m", "orchestrator.cli", "submit", f"s3://{BUCKET}/in/", "--out",
                 f"s3://{BUCKET}/out/", "--method", "pixelate"], env=env, cwd=ROOT, capture_output=True, text=True,
                timeout=300)
            assert submitted.returncode == 0, submitted.stderr
            job_id = submitted.stdout.strip().splitlines()[-1]
            jobs = JobStore.from_url(broker)

            def finished():
                job = jobs.get(job_id)
                return job if job and job.total == len(FACES) and job.finished >= len(FACES) else None

            job = wait_for(finished, 400, f"job {job_id}", interval=1.0)
            assert {k: v for k, v in job.counts.items() if v} == {"done": len(FACES)}, (tmp_path / "cpu.log").read_text(errors="replace")[-3000:]
            assert redis.Redis.from_url(broker).llen(f"gpu-{DB}") == 0  # nothing was sent to the GPU tier
            for name in FACES:
                body = client.get_object(Bucket=BUCKET, Key=f"out/{name}")["Body"].read()
                sidecar = json.loads(client.get_object(Bucket=BUCKET, Key=f"out/{name}.json")["Body"].read())
                assert sidecar["status"] == "done" and sidecar["method"] == "pixelate" and sidecar["prompt"] is None
                w, h = Image.open(faces_dir / name).size
                assert Image.open(io.BytesIO(body)).size == (w, h)
                faces = sidecar["faces"]
                assert len(faces) >= (2 if name == "couple.jpg" else 1) and faces[0]["box"] == sidecar["face_box"]
                assert all(0 <= f["box"][0] < f["box"][2] <= w and 0 <= f["box"][1] < f["box"][3] <= h for f in faces)
        finally:
            stop(cpu)
