"""Job end as its own work (issue 18), against real Redis and moto_server: an ended job is
``finalizing`` and in the finalize set; its finalize writes only its own rows when jobs share
an OUTPUT, streams a manifest of several S3 multipart parts, survives an S3 cut (fails, stays
due, then writes the very same files), and the dispatcher sends a job again once its lease runs
out."""

from __future__ import annotations

import json
import threading
import time

import boto3
import pytest
from botocore.config import Config

from orchestrator.status import describe, show_status
from shared.errors import RetryPolicy, StorageError
from shared.jobs import FINALIZE, JobStore, job_key
from shared.jobsummary import job_file
from shared.messages import JobSpec
from shared.settings import Settings
from shared.storage import open_storage
from tests import sidecars
from tests.services import moto_s3, redis_url, wait_for
from tests.tcpproxy import TcpProxy
from workers import finalize as fin
from workers.celery_app import configure

FAST = RetryPolicy(max_retries=1, backoff_s=0.05, backoff_max_s=0.1)


def _ended_job(jobs: JobStore, job_id: str, output: str, n: int) -> None:
    """A job as ``veil submit`` makes it, whose ``n`` keys all end (as the workers count them)."""
    spec = JobSpec(job_id=job_id, name=job_id, input="s3://in/", source="s3://in/", output=output, created=1.0)
    jobs.create(job_id, name=job_id, input="s3://in/", output=output, spec=spec)
    jobs.add_total(job_id, n)
    assert not jobs.end_listing(job_id)
    ended = [
        jobs.record_ending(job_id, r.input, r.status.value, r.reason)
        for r in map(lambda i: sidecars.record(job_id, i), range(n))
    ]
    assert ended[-1] == 2 and set(ended[:-1]) == {1}


def _rows(data: bytes) -> list[dict]:
    return [json.loads(x) for x in data.splitlines()]


def _without_written(data: bytes) -> dict:
    summary = json.loads(data)
    summary.pop("written")
    return summary


def test_finalize_writes_only_its_own_rows_and_status_shows_finalizing(tmp_path, capsys):
    settings = Settings.from_env({}, broker_url=redis_url(4), finalize_threads=4)
    jobs, storage = JobStore.from_url(settings.jobs_url), open_storage(settings)
    out = str(tmp_path / "out")
    # two jobs share OUTPUT: keys 0..59 are job A's, 60..99 job B's
    sidecars.write_local(out, [("jobA", i) for i in range(60)] + [("jobB", i) for i in range(60, 100)])
    _ended_job(jobs, "jobA", out, 60)

    # 1. Ended: finalizing and due, no files yet; veil status says so
    info = jobs.get("jobA")
    assert info.state == "finalizing" and "jobA" in jobs.finalize_pending()
    assert "finalizing" in describe(info, 0.0)
    assert show_status(jobs, "jobA", watch=False) == 1  # 60 keys, some failed: exit 1 as before
    assert "jobA 'jobA' finalizing: 60/60" in capsys.readouterr().out

    # 2. Finalized: only job A's rows, in listing order; then finished, out of the set
    result = fin.finalize_job("jobA", jobs, storage, settings)
    assert result.outcome == "finalized" and result.rows == 60 and result.listed == 100
    manifest = (tmp_path / "out" / "_veil" / "jobA" / "manifest.jsonl").read_bytes()
    rows = _rows(manifest)
    assert {r["job_id"] for r in rows} == {"jobA"} and len(rows) == 60
    assert [r["input"] for r in rows] == sorted(r["input"] for r in rows)  # the walk's order: sorted keys
    summary_bytes = (tmp_path / "out" / "_veil" / "jobA" / "summary.json").read_bytes()
    summary = json.loads(summary_bytes)
    failed = sum(1 for i in range(60) if i % 7 == 3)
    assert summary["state"] == "finished" and summary["manifest_rows"] == 60
    assert summary["counts"]["failed"] == failed == sum(summary["failed_by_reason"].values())
    assert set(summary["failed_by_reason"]) == {"storage", "undecodable"}
    info = jobs.get("jobA")
    assert info.state == "finished" and info.finalized and "jobA" not in jobs.finalize_pending()
    assert show_status(jobs, "jobA", watch=True, interval=0.01) == 1  # --watch returns: finished

    # 3. Done again (veil finalize JOB): the same bytes, the write time aside
    again = fin.finalize_job("jobA", jobs, storage, settings)
    assert again.rows == 60
    assert (tmp_path / "out" / "_veil" / "jobA" / "manifest.jsonl").read_bytes() == manifest
    assert _without_written((tmp_path / "out" / "_veil" / "jobA" / "summary.json").read_bytes()) == _without_written(
        summary_bytes
    )
    assert not (tmp_path / "out" / "_veil" / "jobB").exists()
    assert not list((tmp_path / "out" / "_veil" / "jobA").glob(".veil-*.tmp"))

    # 4. The record expired: `veil finalize JOB --out OUTPUT` rebuilds both from the sidecars
    jobs.delete("jobA")
    assert fin.finalize_job("jobA", jobs, storage, settings).outcome == "no_record"
    rebuilt = fin.finalize_job("jobA", jobs, storage, settings, out=out)
    assert rebuilt.outcome == "written" and rebuilt.rows == 60
    assert (tmp_path / "out" / "_veil" / "jobA" / "manifest.jsonl").read_bytes() == manifest
    from_rows = json.loads((tmp_path / "out" / "_veil" / "jobA" / "summary.json").read_bytes())
    assert from_rows["counts"] == summary["counts"] and from_rows["failed_by_reason"] == summary["failed_by_reason"]
    assert from_rows["spec"] == summary["spec"]  # kept from the summary written before


@pytest.fixture(scope="module")
def moto():
    with moto_s3() as endpoint:
        yield endpoint


def _s3_settings(endpoint: str, db: int, **extra) -> Settings:
    values = dict(broker_url=redis_url(db), s3_endpoint_url=endpoint, s3_access_key_id="testing",
                  s3_secret_access_key="testing", cpu_queue=f"cpu-{db}", gpu_queue=f"gpu-{db}")  # fmt: skip
    return Settings.from_env({}, **(values | extra))


def _client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing", config=Config(max_pool_connections=32))  # fmt: skip


N_BIG = 2400  # x ~2.4 kB a manifest row: > 5 MiB of rows, two multipart parts of S3's least size
MIN_PART = 5 * 2**20


@pytest.fixture(scope="module")
def big_output(moto):
    """N_BIG sidecars of one job, and 40 of another, under one S3 OUTPUT."""
    client = _client(moto)
    client.create_bucket(Bucket="fin")
    sidecars.write_s3(
        client, "fin", "out/", [("big", i) for i in range(N_BIG)] + [("other", N_BIG + i) for i in range(40)]
    )
    return "s3://fin/out/"


@pytest.mark.slow
def test_multipart_manifest_then_s3_cut_mid_finalize_gives_identical_files(moto, big_output, monkeypatch):
    monkeypatch.setattr("shared.storage.PART_BYTES", MIN_PART)  # S3's least part size (default 8 MiB)
    client = _client(moto)
    with TcpProxy(int(moto.rsplit(":", 1)[1])) as proxy:
        settings = _s3_settings(proxy.url, 3, finalize_threads=8)
        jobs, storage = JobStore.from_url(settings.jobs_url), open_storage(settings)
        _ended_job(jobs, "big", big_output, N_BIG)

        # 1. An uncut finalize: a manifest of two multipart parts, only this job's rows
        first = fin.finalize_job("big", jobs, storage, settings, policy=FAST)
        assert first.outcome == "finalized" and first.rows == N_BIG and first.listed == N_BIG + 40
        head = client.head_object(Bucket="fin", Key=f"out/_veil/big/{'manifest.jsonl'}")
        assert head["ContentLength"] > MIN_PART and head["ETag"].strip('"').endswith("-2")  # a 2-part upload
        manifest = client.get_object(Bucket="fin", Key="out/_veil/big/manifest.jsonl")["Body"].read()
        summary = client.get_object(Bucket="fin", Key="out/_veil/big/summary.json")["Body"].read()
        assert {r["job_id"] for r in _rows(manifest)} == {"big"} and len(_rows(manifest)) == N_BIG

        # 2. The job ends again (as after a retry) and its files go; S3 is cut mid-finalize
        jobs.redis.hset(job_key("big"), "state", "finalizing")
        jobs.finalize_due("big")
        for name in ("manifest.jsonl", "summary.json"):
            client.delete_object(Bucket="fin", Key=f"out/_veil/big/{name}")
        failure: list[BaseException] = []

        def cut_run() -> None:
            try:
                fin.finalize_job("big", jobs, storage, settings, policy=FAST)
            except BaseException as exc:  # noqa: BLE001 - what the test looks at
                failure.append(exc)

        down_before = proxy.bytes_down
        worker = threading.Thread(target=cut_run)
        worker.start()
        wait_for(lambda: proxy.bytes_down - down_before > 2_000_000 or not worker.is_alive(), 120, "reads under way",
                 interval=0.005)  # fmt: skip
        assert worker.is_alive(), "the finalize ended before the cut"
        proxy.cut()
        worker.join(120)
        assert not worker.is_alive() and failure and isinstance(failure[0], StorageError), failure
        # nothing half-written appeared; the job is still finalizing and due
        assert client.list_objects_v2(Bucket="fin", Prefix="out/_veil/big/").get("KeyCount") == 0
        assert jobs.get("big").state == "finalizing" and "big" in jobs.finalize_pending()

        # 3. S3 back: the redone finalize writes the very same files
        proxy.restore()
        redone = fin.finalize_job("big", jobs, storage, settings, policy=FAST)
        assert redone.outcome == "finalized" and redone.rows == N_BIG
        assert client.get_object(Bucket="fin", Key="out/_veil/big/manifest.jsonl")["Body"].read() == manifest
        again = client.get_object(Bucket="fin", Key="out/_veil/big/summary.json")["Body"].read()
        assert _without_written(again) == _without_written(summary)
        assert jobs.get("big").state == "finished" and "big" not in jobs.finalize_pending()


def test_dispatcher_sends_again_when_the_lease_runs_out(moto, tmp_path):
    from workers import runtime

    settings = _s3_settings(moto, 4, finalize_lease_s=1.0)
    configure(settings)
    jobs, r = JobStore.from_url(settings.jobs_url), JobStore.from_url(settings.jobs_url).redis
    out = str(tmp_path / "out")
    sidecars.write_local(out, [("lease", i) for i in range(5)])
    _ended_job(jobs, "lease", out, 5)

    # 1. Due: one message on veil.cpu, and the job leased (due again in 1 s, not now)
    assert fin.dispatch_once(jobs, settings) == ["lease"] and r.llen("cpu-4") == 1
    assert fin.dispatch_once(jobs, settings) == [] and r.llen("cpu-4") == 1
    assert jobs.finalize_pending()["lease"] > time.time()
    # 2. That message is lost (no worker took it): the lease runs out and it is sent again
    r.delete("cpu-4")
    wait_for(lambda: fin.dispatch_once(jobs, settings) == ["lease"], 10, "the lease to run out", interval=0.1)
    raw = r.rpop("cpu-4")
    assert raw is not None
    import base64

    body = json.loads(base64.b64decode(json.loads(raw)["body"]))
    assert json.loads(raw)["headers"]["task"] == "veil.finalize" and body[0] == [
        {"schema_version": 3, "job_id": "lease"}
    ]
    # 3. A worker runs that message: the files are written, the job leaves the set
    runtime.start(settings)
    assert fin.finalize(*body[0]) == "finalized"
    assert jobs.get("lease").state == "finished" and not r.zscore(FINALIZE, "lease")
    assert len((tmp_path / "out" / "_veil" / "lease" / "manifest.jsonl").read_bytes().splitlines()) == 5
    assert fin.finalize({"job_id": "../x"}) == "invalid"  # a message is input: validated first
    assert fin.dispatch_once(jobs, settings) == []


def test_cancelled_job_gets_finalized_field(tmp_path):
    settings = Settings.from_env({}, broker_url=redis_url(4))
    jobs, storage = JobStore.from_url(settings.jobs_url), open_storage(settings)
    out = str(tmp_path / "out")
    spec = JobSpec(job_id="c1", name="c1", input="s3://in/", source="s3://in/", output=out)
    jobs.create("c1", name="c1", input="s3://in/", output=out, spec=spec)
    jobs.add_total("c1", 10)
    jobs.end_listing("c1")
    assert jobs.cancel("c1") and "c1" in jobs.finalize_pending()
    assert "cancelled (finalizing)" in describe(jobs.get("c1"), 0.0)
    assert fin.finalize_job("c1", jobs, storage, settings).outcome == "finalized"
    info = jobs.get("c1")
    assert info.state == "cancelled" and info.finalized and "c1" not in jobs.finalize_pending()
    assert json.loads((tmp_path / "out" / "_veil" / "c1" / "summary.json").read_text())["counts"]["cancelled"] == 10
    assert job_file(out, "c1", "summary.json").startswith(out)
