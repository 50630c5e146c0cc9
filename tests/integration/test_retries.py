"""Transient failures in the tiers: re-sent with backoff through the real broker, then, once
the retry policy is spent, recorded as failed in the key's sidecar with the reason."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import redis

from shared.errors import RETRY_POLICY, StorageError
from shared.messages import ImageTask
from shared.settings import Settings
from tests.services import moto_s3, redis_url
from workers.celery_app import CPU_TASK, configure
from workers.retries import retry_or_fail
from workers.runtime import Runtime


def test_retry_then_fail_with_reason(tmp_path):
    with moto_s3() as endpoint:
        settings = Settings.from_env({}, broker_url=redis_url(11), s3_endpoint_url=endpoint, s3_access_key_id="k",
                                     s3_secret_access_key="s", cpu_queue="retry-cpu", gpu_queue="retry-gpu")
        configure(settings)
        rt = Runtime(settings)
        rt.storage.backend("s3://bkt/x")._client.create_bucket(Bucket="bkt")
        rt.jobs.create("job1", name="t", input="s3://bkt/in/", output="s3://bkt/out/")
        task = ImageTask(job_id="job1", input_uri="s3://bkt/in/a.jpg", output_uri="s3://bkt/out/a.jpg", seed=1)
        broker = redis.Redis.from_url(settings.broker_url)

        # 1. A transient failure with retries left: the message goes back on the queue, delayed
        second = task.model_copy(update={"attempt": 2})
        sent = datetime.now(timezone.utc)
        assert retry_or_fail(second, StorageError("S3 503"), {}, rt, CPU_TASK, "retry-cpu") == "retrying"
        message = json.loads(broker.lpop("retry-cpu"))
        assert message["headers"]["task"] == CPU_TASK
        # the eta is the policy's backoff for the third attempt, jittered into [d/2, d]
        delay = (datetime.fromisoformat(message["headers"]["eta"]) - sent).total_seconds()
        full = min(RETRY_POLICY.backoff_max_s, RETRY_POLICY.backoff_s * 2**2)
        assert full / 2 - 0.5 <= delay <= full + 0.5, delay
        body = json.loads(__import__("base64").b64decode(message["body"]))
        assert body[0][0]["attempt"] == 3
        assert not rt.storage.exists("s3://bkt/out/a.jpg.json")

        # 2. Retries spent: the sidecar says failed, with the reason, and the job counts it
        spent = task.model_copy(update={"attempt": RETRY_POLICY.max_retries})
        assert retry_or_fail(spent, StorageError("S3 503"), {}, rt, CPU_TASK, "retry-cpu") == "failed"
        row = json.loads(rt.storage.read("s3://bkt/out/a.jpg.json"))
        assert row["status"] == "failed" and row["reason"] == "storage: S3 503" and row["output"] is None
        assert rt.jobs.get("job1").counts["failed"] == 1
        assert broker.llen("retry-cpu") == 0
