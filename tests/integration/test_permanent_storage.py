"""A storage refusal ends a key once, through a real CPU worker (issue 18): before, a file name
over 255 bytes under a local OUTPUT was sent again ~40 times per 30 s forever (a plain
``OSError`` taken as transient), and an ``output_uri`` in a bucket that does not exist looped at
~0.5/s. Now each key ends ``failed`` once with its reason and its job ends: the too-long name is
refused by the one task builder (``shared.keys.task_for``) as ``veil submit`` plans it, before
any analysis (``name_too_long``, never delivered, nothing written);
each key of the missing bucket is delivered once (``no_such_bucket``; no sidecar can be
written, so it is counted without one). The storage's own ENAMETOOLONG classification is
unit-tested (tests/unit/test_storage_errors.py).

Real services: Redis, moto_server, one CPU worker process; ``--method blur`` so that the CPU
tier finishes keys itself (MTCNN ships in its wheel: no models folder needed)."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import boto3
import pytest
import redis

from shared.jobs import JobStore
from tests.services import ROOT, moto_s3, redis_url, start_worker, stop, wait_for, worker_env

pytestmark = pytest.mark.slow

BUCKET, GONE = "veil-perm", "veil-gone"
DB = 13
LONG = "x" * 248 + ".jpg"  # 252 bytes: a file the filesystem holds; its sidecar (257 bytes) it cannot


def _submit(env, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "submit", *args, "--method", "blur"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def _received(log) -> int:
    """How many messages the CPU worker received (celery's log line names no key: two keys,
    one delivery each, make two)."""
    return len(re.findall(r"veil\.analyze\[[^\]]+\] received", log.read_text(errors="replace")))


def test_refused_writes_end_once_with_their_reason(faces_dir, tmp_path):
    face = (faces_dir / "id02_12.jpg").read_bytes()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / LONG).write_bytes(face)
    with moto_s3() as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
        client.create_bucket(Bucket=BUCKET)
        client.create_bucket(Bucket=GONE)
        client.put_object(Bucket=BUCKET, Key="in/face.jpg", Body=face)
        broker = redis_url(DB)
        env = worker_env(models_dir=tmp_path / "no-models", broker_url=broker, s3_endpoint_url=endpoint,
                         s3_access_key_id="testing", s3_secret_access_key="testing",
                         cpu_queue=f"cpu-{DB}", gpu_queue=f"gpu-{DB}", feed_interval_s=0.2)  # fmt: skip
        # (a) a local OUTPUT whose sidecar name exceeds 255 bytes
        long_job = _submit(env, str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--name", "long")
        # (b) an output bucket that no longer exists: the sidecar check fails first (b1), or, with
        #     --overwrite, the image is analysed and its write fails, then its sidecar's (b2)
        gone_job = _submit(env, f"s3://{BUCKET}/in/", "--out", f"s3://{GONE}/out/", "--name", "gone")
        again_job = _submit(env, f"s3://{BUCKET}/in/", "--out", f"s3://{GONE}/again/", "--name", "again",
                            "--overwrite")  # fmt: skip
        client.delete_bucket(Bucket=GONE)
        log = tmp_path / "cpu.log"
        cpu = start_worker("cpu", env, log, "--concurrency", "1")
        jobs = JobStore.from_url(broker)
        try:
            for job_id, reason in ((long_job, "name_too_long"), (gone_job, "no_such_bucket"),
                                   (again_job, "no_such_bucket")):  # fmt: skip
                job = wait_for(lambda j=job_id: (x := jobs.get(j)) and x.state == "finished" and x, 300,
                               f"job {job_id}", interval=0.5)  # fmt: skip
                assert job.counts == {"done": 0, "no_face": 0, "failed": 1} and job.total == 1, job
                [(uri, why)] = jobs.failed(job_id).items()
                assert why.startswith(f"{reason}: "), why
                # a job whose OUTPUT bucket is gone ends finished with why it has no summary
                # (a permanent refusal is not retried by the finalize either); the local one has one
                gone = reason == "no_such_bucket"
                assert (job.finalize_error or "").startswith("no_such_bucket: ") if gone else job.finalize_error is None
            time.sleep(3)  # a message sent again would arrive now
            r = redis.Redis.from_url(broker)
            assert r.llen(f"cpu-{DB}") == 0 and r.llen(f"gpu-{DB}") == 0
            text = log.read_text(errors="replace")
            assert _received(log) == 2, text[-3000:]  # (b)'s keys delivered once each: never sent again
            assert text.count("outcome cannot be recorded") == 2, text[-3000:]  # counted without a sidecar
            assert "transient failure on" not in text and "re-sent" not in text, text[-3000:]
            # (a) was refused before analysis: no image, no sidecar, no temporary file; only the job's files
            assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["_veil"]
        finally:
            stop(cpu)
