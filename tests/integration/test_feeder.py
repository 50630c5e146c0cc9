"""The feeder against real Redis (issue 18): its messages are the ones ``send_task`` writes;
a key it refuses (a symlink planted in a local OUTPUT after submit, an output name over 255
bytes) is counted failed with its reason and the job ends; a job whose spec is missing or
unreadable fails loudly with every key counted; a feeder SIGKILLed mid-fill sends no key twice
and loses none; a Redis restarted mid-feed loses nothing. The window shared fairly between two
real jobs through a real CPU worker is in ``test_fair_window_through_a_real_worker``."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import numpy as np
import pytest
import redis

from shared.jobs import JobStore, job_key
from shared.keys import task_for
from shared.messages import ImageTask, JobSpec
from shared.settings import Settings
from tests.faults import OwnRedis
from tests.services import ROOT, redis_url, start_worker, stop, wait_for, worker_env
from workers.celery_app import CPU_TASK, app, configure
from workers.feeder import LOCK, Feeder
from workers.transport import CeleryMessages


def _settings(url: str, queue: str = "fq", **extra) -> Settings:
    settings = Settings.from_env({}, broker_url=url, cpu_queue=queue, gpu_queue=queue + "-gpu", **extra)
    configure(settings)
    return settings


def _job(jobs: JobStore, keys: list[str], output: str = "s3://b/out/", job_id: str = "j1") -> JobSpec:
    spec = JobSpec(job_id=job_id, name=job_id, input="s3://b/in/", source="s3://b/in", output=output, seed=7,
                   overwrite=False, created=time.time())  # fmt: skip
    jobs.create(spec.job_id, name=spec.name, input=spec.source, output=spec.output, spec=spec)
    for start in range(0, len(keys), 5000):
        page = keys[start : start + 5000]
        jobs.add_page(spec.job_id, page, cursor=page[-1])
    jobs.end_listing(spec.job_id)
    return spec


def _fed_keys(r: redis.Redis, queue: str) -> list[str]:
    """The relative keys of the ImageTasks in a queue (input ``s3://b/in/KEY``)."""
    out = []
    for raw in r.lrange(queue, 0, -1):
        task = json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0]
        out.append(task["input_uri"].removeprefix("s3://b/in/"))
    return out


def test_messages_are_what_send_task_writes():
    settings = _settings(redis_url(8))
    r = redis.Redis.from_url(settings.broker_url)
    spec = JobSpec(job_id="m", name="m", input="s3://b/in/", source="s3://b/in", output="s3://b/out/", seed=1,
                   overwrite=False, created=0.0)  # fmt: skip
    task = task_for(spec, "a/b c'\"é.jpg")  # quotes and non-ASCII: escaped the same way
    app.send_task(CPU_TASK, args=[task.model_dump(mode="json")], queue="fq")
    r.lpush("mine", CeleryMessages(app, CPU_TASK, "fq").build(task))
    theirs, mine = json.loads(r.lindex("fq", 0)), json.loads(r.lindex("mine", 0))
    for message in (theirs, mine):
        task_id = message["headers"]["id"]
        assert message["headers"]["root_id"] == message["properties"]["correlation_id"] == task_id
        assert len(task_id) == len(message["properties"]["delivery_tag"]) == 36
        for part, name in (("headers", "id"), ("headers", "root_id"), ("properties", "correlation_id"),
                           ("properties", "delivery_tag")):  # fmt: skip
            message[part][name] = "ID"
        message["body"] = json.loads(base64.b64decode(message["body"]))
    assert mine == theirs
    assert ImageTask.model_validate(mine["body"][0][0]) == task


def test_refused_keys_end_failed_with_their_reason_and_the_job_ends(tmp_path):
    settings = _settings(redis_url(8), queue_window=100)
    jobs = JobStore.from_url(settings.jobs_url)
    out, outside = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    outside.mkdir()
    long_key = "x" * 250 + ".gif"  # its output (+ .png) and sidecar (+ .json): over 255 bytes
    spec = _job(jobs, ["a.jpg", "sub/b.jpg", long_key, "c.jpg"], output=str(out))
    (out / "sub").symlink_to(outside)  # planted after submit: sub/b.jpg's output would leave OUTPUT
    assert Feeder(settings, jobs).feed_once() == 4
    r = redis.Redis.from_url(settings.broker_url)
    fed = sorted(json.loads(base64.b64decode(json.loads(m)["body"]))[0][0]["input_uri"] for m in r.lrange("fq", 0, -1))
    assert fed == ["s3://b/in/a.jpg", "s3://b/in/c.jpg"]
    failed = jobs.failed(spec.job_id)
    assert set(failed) == {"s3://b/in/sub/b.jpg", f"s3://b/in/{long_key}"}
    assert failed["s3://b/in/sub/b.jpg"].startswith("unsafe_key: ") and "symlink" in failed["s3://b/in/sub/b.jpg"]
    assert failed[f"s3://b/in/{long_key}"].startswith("name_too_long: ") and "over 255" in failed[f"s3://b/in/{long_key}"]
    assert jobs.get(spec.job_id).pending == 0 and jobs.get(spec.job_id).state == "running"
    jobs.record(spec.job_id, "s3://b/in/a.jpg", "done")
    assert jobs.record_ending(spec.job_id, "s3://b/in/c.jpg", "done") == 2  # the last key ends the job
    assert jobs.get(spec.job_id).counts == {"done": 2, "no_face": 0, "failed": 2}


@pytest.mark.parametrize("spec_value", [None, "{not json", '{"job_id": 3}'])
def test_a_job_without_a_usable_spec_fails_loudly_with_its_keys_counted(spec_value, caplog):
    settings = _settings(redis_url(8), queue_window=10)  # fewer than its keys: failing takes no room
    jobs = JobStore.from_url(settings.jobs_url)
    spec = _job(jobs, [f"k/{i:04d}.jpg" for i in range(1200)])  # more than one chunk
    jobs.redis.hdel(job_key(spec.job_id), "spec")
    if spec_value is not None:
        jobs.redis.hset(job_key(spec.job_id), "spec", spec_value)
    assert Feeder(settings, jobs).feed_once() == 1200
    info = jobs.get(spec.job_id) if spec_value is None else None
    h = jobs.redis.hgetall(job_key(spec.job_id))
    # ended: every key counted, the job queued for its finalize (no worker runs here to write it)
    assert h["state"] == "finalizing" and h["failed"] == "1200" and h["total"] == "1200"
    assert info is None or info.pending == 0
    failed = jobs.failed(spec.job_id)
    assert len(failed) == 1200 and all(r.startswith("job_spec_missing: the job's spec is") for r in failed.values())
    assert jobs.redis.llen("fq") == 0 and spec.job_id not in jobs.active()
    assert any(rec.levelname == "ERROR" and spec.job_id in rec.getMessage() for rec in caplog.records)


def test_window_shares_room_fairly_every_pass():
    settings = _settings(redis_url(8), queue_window=20, queue_window_s=0)
    jobs = JobStore.from_url(settings.jobs_url)
    r = redis.Redis.from_url(settings.broker_url)
    _job(jobs, [f"big/{i:04d}.jpg" for i in range(300)], job_id="big")
    feeder = Feeder(settings, jobs)

    def take(n: int) -> None:  # workers take the n oldest messages and finish them
        for key in _fed_keys(r, "fq")[-n:]:
            r.rpop("fq")
            jobs.record(key.split("/")[0], f"s3://b/in/{key}", "done")

    assert feeder.feed_once() == 20  # alone: the whole window
    _job(jobs, [f"small/{i:04d}.jpg" for i in range(30)], job_id="small")
    take(10)
    assert feeder.feed_once() == 10  # big holds 10 of the window, small none: the room goes to small
    assert Counter(k.split("/")[0] for k in _fed_keys(r, "fq")) == {"big": 10, "small": 10}
    take(10)  # the big job's ten
    assert feeder.feed_once() == 10  # small holds its half: big gets the room back, not small
    assert Counter(k.split("/")[0] for k in _fed_keys(r, "fq")) == {"small": 10, "big": 10}


def test_feeder_killed_mid_fill_sends_no_key_twice_and_loses_none():
    settings = _settings(redis_url(8), queue_window=1_000_000, queue_window_s=0)
    jobs = JobStore.from_url(settings.jobs_url)
    keys = [f"{i % 50}/{i:07d}.jpg" for i in range(40_000)]
    spec = _job(jobs, keys)
    r = redis.Redis.from_url(settings.broker_url)
    env = worker_env(broker_url=settings.broker_url, cpu_queue="fq", gpu_queue="fq-gpu", queue_window=1_000_000,
                     queue_window_s=0)  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "feed"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: r.llen("fq") >= 1000, 120, "the feeder to be mid-fill", interval=0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    pending = [k.decode() for k in r.lrange(job_key(spec.job_id, "pending"), 0, -1)]
    fed = _fed_keys(r, "fq")
    assert pending and fed, "killed before or after the fill: nothing shown"
    assert len(fed) == len(set(fed)) and sorted(fed + pending) == sorted(keys)  # no key twice, none lost
    assert r.exists(LOCK)  # the dead feeder's lock; it expires (renewed per chunk only)
    wait_for(lambda: not r.exists(LOCK), 15, "the dead feeder's lock to expire", interval=0.2)
    feeder = Feeder(settings, jobs)
    while feeder.feed_once():
        pass
    fed = _fed_keys(r, "fq")
    assert len(fed) == len(set(fed)) == len(keys) and r.llen(job_key(spec.job_id, "pending")) == 0


def test_redis_restarted_mid_feed_loses_nothing(tmp_path):
    own = OwnRedis(tmp_path)
    try:
        settings = _settings(own.url, queue_window=1_000_000, queue_window_s=0, feed_interval_s=0.2)
        jobs = JobStore.from_url(own.url)
        r = redis.Redis.from_url(own.url)
        keys = [f"{i % 50}/{i:07d}.jpg" for i in range(40_000)]
        spec = _job(jobs, keys)
        stop = threading.Event()
        thread = threading.Thread(target=Feeder(settings, jobs).run, args=(stop,), daemon=True)
        thread.start()
        try:
            wait_for(lambda: r.llen("fq") >= 1000, 120, "the feeder to be mid-fill", interval=0.001)
            own.restart(down_s=1.0)
            assert r.llen(job_key(spec.job_id, "pending")) > 0, "the fill ended before the restart"
            wait_for(lambda: r.llen(job_key(spec.job_id, "pending")) == 0, 120, "the fill to finish", interval=0.2)
        finally:
            stop.set()
            thread.join(30)
        fed = _fed_keys(r, "fq")
        assert len(fed) == len(set(fed)) and sorted(fed) == sorted(keys)
    finally:
        own.stop()


@pytest.mark.slow
def test_fair_window_through_a_real_worker(tiny_models, tmp_path):
    """Issue 18: a 20-key job submitted after a 200-key one (default VEIL_QUEUE_WINDOW of 1000,
    which held all 200 in FIFO before) finishes while most of the big job is still to come."""
    from PIL import Image  # noqa: PLC0415 - only this test writes images

    rng = np.random.default_rng(0)
    for name, n in (("big", 200), ("small", 20)):
        (tmp_path / name).mkdir()
        for i in range(n):  # small noise images: no face, so each key ends on the CPU tier, quickly
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / name / f"{i:03d}.png")
    env = worker_env(models_dir=tiny_models, broker_url=redis_url(13), cpu_queue="cpu-13", gpu_queue="gpu-13",
                     method="blur", queue_window_s=1, feed_interval_s=0.2)  # fmt: skip
    jobs = JobStore.from_url(env["VEIL_BROKER_URL"])
    cpu = start_worker("cpu", env, tmp_path / "cpu.log", "--concurrency", "1")
    try:
        big = _veil_submit(env, tmp_path / "big", tmp_path / "out-big", "big")
        assert jobs.get(big).pending >= 200 - 64  # the window: 32 keys or twice what workers hold
        wait_for(lambda: jobs.get(big).counted >= 1, 300, "the worker's first key")
        # in this process, not a `veil submit` child: a child's start-up (seconds under load) let
        # the worker count 165 of the 200 big keys before the small job existed (CI, 2026-12-03)
        big_at_submit = jobs.get(big).counted
        small = _submit_here(env, tmp_path / "small", tmp_path / "out-small", "small")
        # every key of it counted (its finalize then waits its turn in veil.cpu: not what is measured)
        done = wait_for(lambda: (j := jobs.get(small)) and j.state in ("finalizing", "finished") and j, 600,
                        "the small job")  # fmt: skip
        assert done.counts["no_face"] + done.counts["done"] == 20
        big_then = jobs.get(big)
        # FIFO (all 200 queued by the first submit) would finish every big key first; here the
        # small job waits behind one window (a second of throughput), then shares it, so most of
        # the big job is still to come. (How many big keys one window holds grows with the
        # worker's rate, so no fixed bound is asserted: 79 against 72 failed once at load 12.)
        assert big_then.pending > 0 and big_then.counted - big_at_submit < (200 - big_at_submit) / 2, (
            big_at_submit, big_then)
    finally:
        stop(cpu)


def _submit_here(env, source, out, name: str) -> str:
    from orchestrator.submit import submit
    from shared.settings import Settings
    from shared.storage import open_storage

    veil = {k: v for k, v in env.items() if k.startswith("VEIL_")}
    settings = Settings.from_env(veil)
    return submit(str(source), str(out), settings, open_storage(settings), JobStore.from_url(settings.jobs_url),
                  name=name).job_id  # fmt: skip


def _veil_submit(env, source, out, name: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "submit", str(source), "--out", str(out),
                           "--name", name], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]
