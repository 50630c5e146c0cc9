"""Jobs in real Redis, without workers: counters and `veil status`, the feeder's window and its
round robin across jobs, cancel, retry of failed keys only, and a `veil submit` killed with
SIGKILL then resumed without duplicates."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time

import redis

from orchestrator.control import cancel_job, retry_job
from orchestrator.status import EXIT_CANCELLED, describe, show_status
from orchestrator.submit import submit
from shared.jobs import JobStore, job_key
from shared.settings import Settings
from shared.storage import open_storage
from tests.services import ROOT, moto_s3, redis_url, wait_for, worker_env
from workers.celery_app import configure
from workers.feeder import Feeder
from workers.finalize import finalize_job


def test_pace_spans_gpu_bursts_and_the_eta_says_what_it_waits_for():
    """Batches that end every ~135 s in bursts of 8 (as measured in issue 24): the one-minute
    rate read 0.00/s between bursts and the ETA froze; the pace spans the bursts and decays."""
    r = redis.Redis.from_url(redis_url(9), decode_responses=True)
    jobs = JobStore.from_url(redis_url(9))
    jobs.create("slow", name="slow", input="in", output="out")
    jobs.add_total("slow", 40)
    t0 = jobs.get("slow").created
    bursts = [int(t0) + d for d in (100, 235, 370)]
    r.hset(job_key("slow", "rate"), mapping={str(sec): 8 for sec in bursts})
    r.hset(job_key("slow"), mapping={"done": 24})
    job = jobs.get("slow")
    # 1. Fewer bursts than the pace spans: keys since the job began over its age
    pace = jobs.pace("slow", job.created, now=t0 + 450)
    assert pace.window_s == int(t0 + 450) - 1 - (int(t0) - 1) and pace.rate == 24 / pace.window_s
    assert jobs.rate("slow", now=t0 + 450) == 0  # the old one-minute figure
    line = describe(job, pace)
    assert "ETA 5m00s (waiting for the batch in flight: no key finished for 79s)" in line, line
    # 2. A later read: the rate decays, the ETA grows, nothing is frozen
    later = jobs.pace("slow", job.created, now=t0 + 600)
    assert later.rate < pace.rate and "no key finished for 3m49s" in describe(job, later)
    # 3. Many bursts: the window holds the last four, and counts the keys after the oldest
    more = [int(t0) + d for d in (505, 640)]
    r.hset(job_key("slow", "rate"), mapping={str(sec): 8 for sec in more})
    pace = jobs.pace("slow", job.created, now=t0 + 650)
    assert pace.window_s == int(t0 + 650) - 1 - bursts[1] and pace.rate == 24 / pace.window_s


def test_counts_each_key_once_and_status_reports_progress(capsys):
    jobs = JobStore.from_url(redis_url(9))
    jobs.create("j1", name="faces", input="s3://b/in/", output="s3://b/out/")
    jobs.add_total("j1", 3)
    assert jobs.record("j1", "s3://b/in/a.jpg", "done")
    assert not jobs.record("j1", "s3://b/in/a.jpg", "done")  # a redelivered key counts once
    jobs.record("j1", "s3://b/in/b.jpg", "no_face")
    job = jobs.get("j1")
    assert job.counts == {"done": 1, "no_face": 1, "failed": 0} and job.finished == 2 and job.in_flight == 1
    line = describe(job, jobs.rate("j1", now=time.time() + 1.0))  # both counted in the last whole second
    assert "2/3" in line and f"{2 / 60:.2f}/s over 60s" in line and "ETA 30s" in line
    assert jobs.record("j1", "s3://b/in/c.jpg", "failed", "storage: S3 503")
    assert jobs.state("j1") == "finalizing"  # every key counted: its finalize is due (workers/finalize.py)
    assert finalize_job("j1", jobs, open_storage(Settings.from_env({})), Settings.from_env({})).outcome == "no_spec"
    assert show_status(jobs, "j1", watch=True, interval=0.01, failed=True) == 1  # returns once finished
    out = capsys.readouterr().out
    assert "3/3" in out and "finished" in out and "s3://b/in/c.jpg\tstorage: S3 503" in out
    assert [j.job_id for j in jobs.list()] == ["j1"]
    assert jobs.redis.ttl(job_key("j1")) > 0  # a finished job's record expires
    assert show_status(jobs, "nope", watch=False) == 2


def _settings(db: int, **extra) -> Settings:
    url = redis_url(db)
    values = dict(broker_url=url, cpu_queue=f"cpu-{db}", gpu_queue=f"gpu-{db}") | extra
    settings = Settings.from_env({}, **values)
    configure(settings)
    return settings


def _queued(r: redis.Redis, queue: str) -> list[dict]:
    """The ImageTasks waiting in a Celery queue, oldest first (kombu LPUSHes, workers BRPOP)."""
    return [json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0] for raw in reversed(r.lrange(queue, 0, -1))]


def _list_file(path, n: int, prefix: str = "in") -> str:
    path.write_text("".join(f"s3://b/{prefix}/{i % 7}/{i:05d}.jpg\n" for i in range(n)))
    return str(path)


def test_window_round_robin_cancel_and_retry(tmp_path):
    settings = _settings(7, queue_window=10)
    jobs = JobStore.from_url(settings.jobs_url)
    storage = open_storage(settings)
    r = redis.Redis.from_url(settings.broker_url)
    big = submit(_list_file(tmp_path / "big.txt", 500), str(tmp_path / "out-big"), settings, storage, jobs,
                 name="big", page_size=100)  # fmt: skip
    # the window bounds the queue; the rest waits in the pending list as relative keys
    assert r.llen("cpu-7") == 10 and jobs.get(big.job_id).pending == 490
    assert r.lindex(job_key(big.job_id, "pending"), 0) == b"3/00010.jpg"
    small = submit(_list_file(tmp_path / "small.txt", 6, "sm"), str(tmp_path / "out-small"), settings, storage, jobs,
                   name="small")  # fmt: skip
    assert r.llen("cpu-7") == 10  # full: the small job waits for room, at the head of the round robin

    # Drain as workers would, 4 keys at a time: each top-up shares the room between the jobs
    feeder, order = Feeder(settings, jobs), []
    for _ in range(4):
        for _ in range(4):
            order.append(json.loads(base64.b64decode(json.loads(r.rpop("cpu-7"))["body"]))[0][0]["job_id"])
        feeder.feed_once()
    waiting = [t["job_id"] for t in _queued(r, "cpu-7")]
    assert (order + waiting).count(small.job_id) == 6  # all six fed within 16 keys of the big job's
    message = _queued(r, "cpu-7")[-1]
    assert message["input_uri"].startswith("s3://b/") and message["output_uri"].startswith(str(tmp_path))

    # Cancel the big job: its pending keys and queued messages go, the small job's stay
    small_left = waiting.count(small.job_id)
    cancelled = cancel_job(big.job_id, settings, jobs, storage)
    assert cancelled.found and cancelled.removed_from_queues == waiting.count(big.job_id) > 0
    assert [t["job_id"] for t in _queued(r, "cpu-7")] == [small.job_id] * small_left
    info = jobs.get(big.job_id)
    assert info.state == "cancelled" and info.pending == 0 and info.cancelled == 500 and info.finished == 500
    assert jobs.is_cancelled(big.job_id) and not jobs.is_cancelled(small.job_id)
    assert feeder.feed_once() == 0 and big.job_id not in jobs.active()
    assert show_status(jobs, big.job_id, watch=False) == EXIT_CANCELLED
    summary = json.loads((tmp_path / "out-big" / "_veil" / big.job_id / "summary.json").read_text())
    assert summary["state"] == "cancelled" and summary["counts"]["cancelled"] == 500

    # Retry: only the failed keys (and only those of the reason asked) go back, with overwrite
    r.delete("cpu-7")
    spec = jobs.spec(small.job_id)
    uri = [f"{spec.input}{k}" for k in ("0/00000.jpg", "1/00001.jpg", "2/00002.jpg")]
    jobs.record(small.job_id, uri[0], "failed", "storage: S3 503")
    jobs.record(small.job_id, uri[1], "failed", "image_decode: not an image")
    jobs.record(small.job_id, uri[2], "done")
    assert retry_job(small.job_id, settings, jobs, storage, reason="storage") == 1
    again = _queued(r, "cpu-7")
    assert [(t["input_uri"], t["overwrite"]) for t in again] == [(uri[0], True)]
    assert jobs.failed(small.job_id) == {uri[1]: "image_decode: not an image"}
    assert jobs.get(small.job_id).counts["failed"] == 1
    assert jobs.record(small.job_id, uri[0], "done")  # counted again when it ends
    assert retry_job(small.job_id, settings, jobs, storage) == 1  # the other failure
    assert retry_job(small.job_id, settings, jobs, storage) == 0  # nothing failed is left


def test_submit_killed_mid_listing_resumes_without_duplicates(tmp_path):
    settings = _settings(6, queue_window=1)
    total = 6000
    listing = _list_file(tmp_path / "keys.txt", total)
    env = worker_env(broker_url=settings.broker_url, cpu_queue="cpu-6", gpu_queue="gpu-6", queue_window=1)
    jobs = JobStore.from_url(settings.jobs_url)
    args = [sys.executable, "-m", "orchestrator.cli", "submit", listing, "--out", str(tmp_path / "out"), "--name", "k"]
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        job_id = wait_for(lambda: jobs.by_name("k"), 60, "the job record", interval=0.01)
        wait_for(lambda: (jobs.get(job_id).total or 0) >= 1000, 60, "a few pages", interval=0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = jobs.get(job_id)
    assert not first.listed and 1000 <= first.total < total, first  # killed mid-listing
    again = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == job_id and "resumed" in again.stderr
    r = redis.Redis.from_url(settings.broker_url)
    pending = [k.decode() for k in r.lrange(job_key(job_id, "pending"), 0, -1)]
    fed = [t["input_uri"].split("/in/", 1)[1] for t in _queued(r, "cpu-6")]
    keys = pending + fed
    assert len(keys) == len(set(keys)) == total  # every key once: none lost, none twice
    assert jobs.get(job_id).total == total and jobs.get(job_id).listed
    third = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (
        third.returncode == 0
        and "nothing to add" in third.stderr
        and r.llen(job_key(job_id, "pending")) == len(pending)
    )


def test_s3_prefix_is_a_folder_and_done_keys_are_skipped_from_one_listing():
    with moto_s3() as endpoint:
        settings = _settings(5, s3_endpoint_url=endpoint, s3_access_key_id="k", s3_secret_access_key="s")
        storage = open_storage(settings)
        client = storage.backend("s3://bkt/")._client
        client.create_bucket(Bucket="bkt")
        for key in ("in/a.jpg", "in/sub/b.jpg", "in/notes.txt", "inx/c.jpg", "out/a.jpg.json"):
            client.put_object(Bucket="bkt", Key=key, Body=b"{}")
        jobs = JobStore.from_url(settings.jobs_url)
        result = submit("s3://bkt/in", "s3://bkt/out/", settings, storage, jobs, name="p", feed=False)
        job = jobs.get(result.job_id)
        assert (result.count, result.skipped, job.total, job.skipped) == (2, 1, 2, 1)  # not inx/, not notes.txt
        assert jobs.redis.lrange(job_key(result.job_id, "pending"), 0, -1) == ["sub/b.jpg"]
        assert job.spec.input == "s3://bkt/in/"
