"""Issue 23: the broker is not a skeleton key, and no single message takes a worker down.

Forged messages (input or output outside the allowed roots, another bucket, a local absolute
path, a symlink leading out of a root, a foreign or unknown ``job_id``) and poison envelopes
(not JSON, a body that is not base64, one bigger than VEIL_MAX_MESSAGE_BYTES) are pushed into a
real worker's queue, followed by one legitimate message. Real parts: Redis, moto_server, worker
processes (the CPU worker with a classical method needs no model files; the GPU worker runs the
tiny random models). The legitimate message's result proves the worker went on; nothing appears
outside the roots and the other jobs' counters do not move."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import boto3
import pytest
import redis
import requests

from shared.jobs import JobStore
from shared.messages import JobSpec
from shared.settings import Settings
from tests.services import ROOT, free_port, moto_s3, redis_url, start_worker, stop, wait_for, worker_env

pytestmark = pytest.mark.slow

DB = 13
BUCKET, OTHER = "veil-sec", "other"


def _folders(tmp_path, faces_dir):
    d = {name: tmp_path / name for name in ("in", "out", "in2", "out2", "secret", "elsewhere")}
    for p in d.values():
        p.mkdir()
    photo = (faces_dir / "id02_12.jpg").read_bytes()
    (d["in"] / "a.jpg").write_bytes(photo)
    (d["in2"] / "b.jpg").write_bytes(photo)
    (d["secret"] / "couple.jpg").write_bytes(photo)
    (d["in"] / "link.jpg").symlink_to(d["secret"] / "couple.jpg")  # a symlink leading out of an input root
    (d["out"] / "escape").symlink_to(d["elsewhere"])  # a folder symlink leading out of an output root
    return d


def _jobs(broker: str, d) -> JobStore:
    jobs = JobStore.from_url(broker)
    for job_id, src, out in (("A", d["in"], d["out"]), ("B", d["in2"], d["out2"])):
        spec = JobSpec(job_id=job_id, name=job_id, input=str(src), source=str(src), output=str(out), method="pixelate")
        jobs.create(job_id, name=job_id, input=str(src), output=str(out), spec=spec)
        jobs.add_total(job_id, 10)
    return jobs


def _poison(client: redis.Redis, app, queue: str) -> None:
    """Garbage, a kombu envelope whose body is not base64, and an envelope over the size bound."""
    app.send_task("veil.nothing", args=[{}], queue="scratch-23")
    envelope = json.loads(client.rpop("scratch-23"))
    client.lpush(queue, b"garbage\x1b[2J")  # with a terminal escape, which `veil deadletter` must not print raw
    client.lpush(queue, json.dumps(envelope | {"body": "!!! not base64 ~~~"}))
    big = base64.b64encode(json.dumps([[{"prompt": "x" * (2 * 2**20)}], {}, {}]).encode()).decode()
    client.lpush(queue, json.dumps(envelope | {"body": big}))


def _outside_files(d, s3) -> list[str]:
    found = [str(p) for key in ("secret", "elsewhere", "in", "in2", "out2") for p in d[key].rglob("*")]
    found = [f for f in found if not f.endswith(("a.jpg", "b.jpg", "couple.jpg", "link.jpg"))]
    other = s3.list_objects_v2(Bucket=OTHER).get("KeyCount", 0)
    return found + [f"s3://{OTHER}/ ({other} objects)"] * bool(other)


def _dead_letters(broker: str) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "deadletter", "--json"],
                         env=worker_env(broker_url=broker), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [e["reason"] for e in json.loads(out.stdout)["entries"]]


def test_forged_and_poison_messages_against_a_cpu_worker(faces_dir, tmp_path):
    d = _folders(tmp_path, faces_dir)
    with moto_s3() as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        for b in (BUCKET, OTHER):
            s3.create_bucket(Bucket=b)
        broker = redis_url(DB)
        client = redis.Redis.from_url(broker)
        jobs = _jobs(broker, d)
        queue = f"cpu-{DB}"
        env = worker_env(models_dir=tmp_path / "no-models", broker_url=broker, s3_endpoint_url=endpoint,
                         s3_access_key_id="testing", s3_secret_access_key="testing", cpu_queue=queue,
                         gpu_queue=f"gpu-{DB}", input_roots=f"{d['in']},{d['in2']},s3://{BUCKET}/in/",
                         output_roots=f"{d['out']},{d['out2']},s3://{BUCKET}/out/")
        from workers.celery_app import CPU_TASK, configure

        app = configure(Settings.from_env({}, broker_url=broker))
        out = d["out"]

        def msg(job, inp, outp, **kw):
            return dict(job_id=job, input_uri=str(inp), output_uri=str(outp), seed=1, method="pixelate", **kw)

        forged = {
            "input outside the roots": msg("A", d["secret"] / "couple.jpg", out / "s1.jpg"),
            "input by a symlink out of a root": msg("A", d["in"] / "link.jpg", out / "s2.jpg"),
            "output at a local absolute path": msg("A", d["in"] / "a.jpg", d["elsewhere"] / "pwned.jpg"),
            "output through a symlinked folder": msg("A", d["in"] / "a.jpg", out / "escape" / "pwned.jpg"),
            "output in another bucket": msg("A", d["in"] / "a.jpg", f"s3://{OTHER}/pwned.jpg", overwrite=True),
            "local photo copied to another bucket": msg("A", d["in"] / "a.jpg", f"s3://{OTHER}/exfil_couple.jpg"),
            "foreign job_id": msg("B", d["in"] / "a.jpg", out / "s3.jpg"),
            "unknown job_id": msg("nope", d["in"] / "a.jpg", out / "s4.jpg"),
        }
        for m in forged.values():
            app.send_task(CPU_TASK, args=[m], queue=queue)
        _poison(client, app, queue)
        app.send_task(CPU_TASK, args=[msg("A", d["in"] / "a.jpg", out / "a.jpg")], queue=queue)  # legitimate
        cpu = start_worker("cpu", env, tmp_path / "cpu.log", "--concurrency", "1")
        try:
            wait_for(lambda: (out / "a.jpg.json").exists() or cpu.poll() is not None, 400, "the legitimate key")
            log = (tmp_path / "cpu.log").read_text(errors="replace")
            assert cpu.poll() is None, log[-3000:]
            assert json.loads((out / "a.jpg.json").read_text())["status"] == "done", log[-3000:]
        finally:
            stop(cpu)
        # nothing written outside the roots, nothing read from outside (no output for those keys)
        assert _outside_files(d, s3) == [], log[-3000:]
        # a refused key whose output lies under its own job's output gets a failed sidecar saying why
        for name in ("s1", "s2"):
            row = json.loads((out / f"{name}.jpg.json").read_text())
            assert row["status"] == "failed" and row["reason"].startswith("outside_allowed_roots"), row
            assert not (out / f"{name}.jpg").exists()
        assert not (out / "s3.jpg.json").exists() and not (out / "s4.jpg.json").exists()
        assert log.count("refused veil.analyze message") == len(forged), log[-3000:]
        # the foreign job's counters did not move
        assert jobs.get("B").finished == 0
        assert sorted(_dead_letters(broker)) == ["bad_envelope", "bad_envelope", "message_too_large"]
        purged = subprocess.run([sys.executable, "-m", "orchestrator.cli", "deadletter", "--purge"],
                                env=worker_env(broker_url=broker), cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert purged.returncode == 0 and "3 dead letter(s)" in purged.stdout, purged.stdout + purged.stderr
        assert "\x1b" not in purged.stdout and "garbage\\x1b[2J" in purged.stdout  # shown escaped, never raw
        assert client.llen("veil:deadletter") == 0


def test_forged_and_poison_messages_against_a_gpu_worker(tiny_models, tmp_path, faces_dir):
    d = _folders(tmp_path, faces_dir)
    broker = redis_url(DB)
    client = redis.Redis.from_url(broker)
    jobs = _jobs(broker, d)
    queue, port = f"gpu-{DB}", free_port()
    env = worker_env(models_dir=tiny_models, broker_url=broker, cpu_queue=f"cpu-{DB}", gpu_queue=queue,
                     batch_size=2, gpu_batch_wait_s=1.0, steps=1, image_size=64, metrics_port=port,
                     input_roots=f"{d['in']},{d['in2']}", output_roots=f"{d['out']},{d['out2']}")
    from workers.celery_app import GPU_TASK, configure

    app = configure(Settings.from_env({}, broker_url=broker))
    out = d["out"]
    analysis = dict(face_box=[0.0, 0.0, 10.0, 10.0, 0.9], celeba_scores={"Male": 0.9}, age=30, ethnicity="white",
                    deepface_gender="Man")

    def prompt(job, inp, outp, text="closeup portrait photo of a man"):
        return dict(job_id=job, input_uri=str(inp), output_uri=str(outp), seed=1, prompt=text,
                    negative_prompt="blurry", analysis=analysis, model_sha256={})

    forged = {
        "output at a local absolute path": prompt("A", d["in"] / "a.jpg", d["elsewhere"] / "pwned.png"),
        "output through a symlinked folder": prompt("A", d["in"] / "a.jpg", out / "escape" / "pwned.png"),
        "foreign job_id": prompt("B", d["in"] / "a.jpg", out / "f.png"),
        "input outside the roots": prompt("A", d["secret"] / "couple.jpg", out / "s1.png"),
    }
    for m in forged.values():
        app.send_task(GPU_TASK, args=[m], queue=queue)
    _poison(client, app, queue)
    # legitimate, with a prompt of 100,000 characters: cut before tokenising, the cut text recorded
    app.send_task(GPU_TASK, args=[prompt("A", d["in"] / "a.jpg", out / "a.png", "face " * 20_000)], queue=queue)
    gpu = start_worker("gpu", env, tmp_path / "gpu.log")
    try:
        wait_for(lambda: (out / "a.png.json").exists() or gpu.poll() is not None, 400, "the legitimate key")
        log = (tmp_path / "gpu.log").read_text(errors="replace")
        assert gpu.poll() is None, log[-3000:]
        row = json.loads((out / "a.png.json").read_text())
        assert row["status"] == "done" and len(row["prompt"]) == Settings().max_prompt_chars, log[-3000:]
        samples = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        stop(gpu)
    found = [str(p) for key in ("secret", "elsewhere") for p in d[key].rglob("*") if not str(p).endswith("couple.jpg")]
    assert found == [], log[-3000:]
    assert not (out / "f.png").exists() and not (out / "s1.png").exists()
    assert json.loads((out / "s1.png.json").read_text())["reason"].startswith("outside_allowed_roots")
    assert jobs.get("B").finished == 0
    failures = [line for line in samples.splitlines() if line.startswith("veil_failures_total")]
    assert 'veil_failures_total{reason="bad_envelope",tier="gpu"} 2.0' in failures, failures
    assert 'veil_failures_total{reason="message_too_large",tier="gpu"} 1.0' in failures, failures
    assert 'veil_failures_total{reason="outside_allowed_roots",tier="gpu"} 4.0' in failures, failures
    assert sorted(_dead_letters(broker)) == ["bad_envelope", "bad_envelope", "message_too_large"]
    assert os.path.exists(out / "a.png")


def test_a_forged_job_record_gets_no_manifest_outside_the_roots(faces_dir, tmp_path):
    """A job record is Redis's word too: a job whose spec names an output outside the roots (made
    by someone with broker access, not by ``veil submit``) is finalized with nothing written."""
    from shared.storage import open_storage
    from workers.finalize import finalize_job

    d = _folders(tmp_path, faces_dir)
    broker = redis_url(DB)
    jobs = JobStore.from_url(broker)
    spec = JobSpec(job_id="F", name="F", input=str(d["in"]), source=str(d["in"]), output=str(d["elsewhere"]))
    jobs.create("F", name="F", input=str(d["in"]), output=str(d["elsewhere"]), spec=spec)
    settings = Settings.from_env({}, broker_url=broker, output_roots=[str(d["out"])])
    result = finalize_job("F", jobs, open_storage(settings), settings)
    assert result.outcome == "outside_allowed_roots"
    assert list(d["elsewhere"].rglob("*")) == []
