"""Bulk jobs through real worker processes, moto_server and Redis: two jobs sharing the workers
(the small one is not stuck behind the big one), cancel mid-job (other jobs untouched, in-flight
keys finish, nothing more of it is done), retry of failed keys only, and each finished job's
summary and folded manifest in S3.

The models are the tiny RANDOM test models: images are noise; what is tested is the plumbing.
"""

from __future__ import annotations

import json
import re
import time

import boto3
import pytest
import redis

from shared.jobs import JobStore
from tests.badinputs import write_bad_inputs
from tests.integration.test_distributed import make_env, veil
from tests.services import moto_s3, start_worker, stop, wait_for

pytestmark = pytest.mark.slow

BUCKET = "veil-test"  # make_env's credentials and endpoint; its own bucket contents below
FACES = ["fr_biden.jpg", "id02_12.jpg", "id03_16.jpg", "id05_67.jpg", "id07_25.jpg", "couple.jpg"]


def _object(client, key: str) -> bytes:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def _sidecars(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for p in pages for o in p.get("Contents", []) if o["Key"].endswith(".jpg.json")]


def _submit(env, source: str, out: str, name: str) -> str:
    proc = veil(env, "submit", f"s3://{BUCKET}/{source}", "--out", f"s3://{BUCKET}/{out}/", "--name", name)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def _analyses(log) -> int:
    return len(re.findall(r"veil\.analyze\[[^\]]+\] received", log.read_text(errors="replace")))


def test_two_jobs_cancel_retry_and_summaries(faces_dir, tiny_models, tmp_path):
    with moto_s3() as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
        client.create_bucket(Bucket=BUCKET)
        for copy in range(2):  # the big job: 12 keys
            for name in FACES:
                client.put_object(Bucket=BUCKET, Key=f"big/{copy}/{name}", Body=(faces_dir / name).read_bytes())
        for name in FACES[:2]:  # the small job: 2 keys
            client.put_object(Bucket=BUCKET, Key=f"small/{name}", Body=(faces_dir / name).read_bytes())
        bad = write_bad_inputs(faces_dir, tmp_path / "bad")
        odd = {n: s for n, s in bad.items() if n in ("zero_bytes.jpg", "text_renamed.jpg", "no_face.jpg")}
        for name in odd:
            client.put_object(Bucket=BUCKET, Key=f"odd/{name}", Body=(tmp_path / "bad" / name).read_bytes())
        # a window of 3 keys in the system (queued, analysed or generating); small noise images
        env = make_env(tiny_models, endpoint, 12, queue_window=3, feed_interval_s=0.2, batch_size=2, steps=1,
                       gpu_batch_wait_s=0.3, image_size=64)  # fmt: skip
        jobs = JobStore.from_url(env["VEIL_BROKER_URL"])
        broker = redis.Redis.from_url(env["VEIL_BROKER_URL"])
        cpu_log = tmp_path / "cpu.log"
        cpu = start_worker("cpu", env, cpu_log, "--concurrency", "1")
        gpu = start_worker("gpu", env, tmp_path / "gpu.log")
        try:
            # 1. Two jobs at once: the small one, submitted second, ends while the big one has
            #    most of its keys left (round robin: it waits behind a window, not a job)
            big = _submit(env, "big", "out-big", "big")
            small = _submit(env, "small", "out-small", "small")
            # its last key counted: the job then waits for its finalize (a task behind the big
            # job's keys in veil.cpu), which is step 2, not what the window's fairness is about
            done = wait_for(lambda: (j := jobs.get(small)) and j.state in ("finalizing", "finished") and j, 600,
                            "the small job")  # fmt: skip
            assert done.counts == {"done": 2, "no_face": 0, "failed": 0}
            big_then = jobs.get(big)
            assert big_then.counted <= 8 and big_then.pending > 0, big_then  # FIFO would have done all 12 first

            # 2. Cancel the big job mid-way (before the small job's finalize, which may wait its turn behind
            #    the big job's keys in veil.cpu): its queued messages go, in-flight keys finish, then
            #    nothing more of it is done; the job ends cancelled with every key accounted for
            proc = veil(env, "cancel", big)
            assert proc.returncode == 0, proc.stderr
            assert veil(env, "status", big).returncode == 3  # documented: cancelled

            def quiet():
                depth = broker.llen("cpu-12") + broker.llen("gpu-12") + broker.hlen("unacked")
                return depth == 0 and jobs.get(big).in_flight == 0

            wait_for(quiet, 300, "the big job's in-flight keys to settle", interval=0.5)
            time.sleep(3)  # anything still coming would land now
            after = jobs.get(big)
            made = _sidecars(client, "out-big/")
            assert len(made) == after.counts["done"] < 12 and after.cancelled == 12 - len(made)
            assert after.finished == 12 and after.state == "cancelled"
            time.sleep(2)
            assert len(_sidecars(client, "out-big/")) == len(made)

            # 3. The small job's summary and folded manifest are in S3, under its output
            summary_key = f"out-small/_veil/{small}/summary.json"  # written by a CPU worker's finalize task
            wait_for(lambda: client.list_objects_v2(Bucket=BUCKET, Prefix=summary_key).get("KeyCount"), 60, "summary")
            summary = json.loads(_object(client, summary_key))
            assert summary["state"] == "finished" and summary["counts"]["done"] == 2
            assert summary["spec"]["output"] == f"s3://{BUCKET}/out-small/" and summary["spec"]["input"].endswith("/small/")
            rows = [json.loads(x) for x in _object(client, f"out-small/_veil/{small}/manifest.jsonl").splitlines()]
            assert sorted(r["input"].rsplit("/", 1)[-1] for r in rows) == sorted(FACES[:2])
            assert {r["status"] for r in rows} == {"done"}

            # 4. Retry: only the failed keys are analysed again, with the job's options
            odd_job = _submit(env, "odd", "out-odd", "odd")
            ended = wait_for(lambda: (j := jobs.get(odd_job)) and j.state == "finished" and j, 300, "the odd job")
            assert ended.counts == {"done": 0, "no_face": 1, "failed": 2}
            listed = veil(env, "status", odd_job, "--failed")
            assert listed.returncode == 1 and listed.stdout.count(f"s3://{BUCKET}/odd/") == 2
            assert veil(env, "retry", odd_job, "--reason", "no_such_reason").stdout.startswith("0 failed")
            before = _analyses(cpu_log)
            assert veil(env, "retry", odd_job).stdout.startswith("2 failed")
            again = wait_for(lambda: (j := jobs.get(odd_job)) and j.state == "finished" and j, 300, "the retry")
            assert again.counts == {"done": 0, "no_face": 1, "failed": 2} and again.total == 3
            wait_for(lambda: _analyses(cpu_log) >= before + 2, 30, "the log lines")
            assert _analyses(cpu_log) == before + 2  # the no_face key was not redone
        finally:
            stop(gpu)
            stop(cpu)
