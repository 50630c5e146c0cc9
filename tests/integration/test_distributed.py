"""The distributed pipeline end to end, with real services: moto_server (S3 over HTTP), Redis,
CPU and GPU Celery workers as separate processes, Flower, and the `veil` command.

The models are the tiny RANDOM test models (`veil models tiny`): images are noise; what is
tested is the plumbing: every key ends with the right status, image and sidecar.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import boto3
import pytest
import requests

from shared.jobs import JobStore
from tests.badinputs import write_bad_inputs
from tests.faults import MID_BATCH_STEPS, generated_since, kill_mid_batch
from tests.services import ROOT, free_port, moto_s3, redis_url, start_worker, stop, wait_for, worker_env

pytestmark = pytest.mark.slow

FACES = ["couple.jpg", "fr_biden.jpg", "id02_12.jpg", "id03_16.jpg", "id05_67.jpg", "id07_25.jpg"]
BAD = {"zero_bytes.jpg": "failed", "no_face.jpg": "no_face", "text_renamed.jpg": "failed"}
BUCKET = "veil-test"


@pytest.fixture(scope="module")
def s3(faces_dir, tmp_path_factory):
    with moto_s3() as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket=BUCKET)
        for name in FACES:
            client.put_object(Bucket=BUCKET, Key=f"in/people/{name}", Body=(faces_dir / name).read_bytes())
        bad_dir = tmp_path_factory.mktemp("bad")
        write_bad_inputs(faces_dir, bad_dir)
        for name in BAD:
            client.put_object(Bucket=BUCKET, Key=f"in/odd/{name}", Body=(bad_dir / name).read_bytes())
        yield endpoint, client


def make_env(tiny_models, endpoint, db, **extra):
    values = dict(models_dir=tiny_models, broker_url=redis_url(db), s3_endpoint_url=endpoint,
                  s3_access_key_id="testing", s3_secret_access_key="testing", batch_size=4, gpu_batch_wait_s=1.0,
                  steps=3, image_size=64, cpu_queue=f"cpu-{db}", gpu_queue=f"gpu-{db}")
    return worker_env(**(values | extra))


def veil(env, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def submit(env, out_prefix: str) -> str:
    result = veil(env, "submit", f"s3://{BUCKET}/in/", "--out", f"s3://{BUCKET}/{out_prefix}/", "--name", "test")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def wait_job(env, job_id: str, total: int, timeout: float):
    jobs = JobStore.from_url(env["VEIL_BROKER_URL"])

    def finished():
        job = jobs.get(job_id)
        return job if job and job.total == total and job.finished >= total else None

    return wait_for(finished, timeout, f"job {job_id} to finish", interval=1.0)


def keys(client, prefix: str) -> list[str]:
    """Outputs and sidecars under ``prefix`` (a job's summary and manifest under ``_veil/`` left out)."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []) if "/_veil/" not in o["Key"])


def check_outputs(client, out_prefix: str):
    found = keys(client, out_prefix + "/")
    sidecars = [k for k in found if k.endswith(".json")]
    images = [k for k in found if not k.endswith(".json")]
    expected = {f"people/{n}": "done" for n in FACES} | {f"odd/{n}": s for n, s in BAD.items()}
    assert len(sidecars) == len(expected), found
    for rel, status in expected.items():
        row = json.loads(client.get_object(Bucket=BUCKET, Key=f"{out_prefix}/{rel}.json")["Body"].read())
        assert row["status"] == status, (rel, row)
        assert row["input"] == f"s3://{BUCKET}/in/{rel}"
        has_image = f"{out_prefix}/{rel}" in images
        assert has_image == (status == "done"), rel  # never a copy of the original
        if status == "done":
            assert len(row["celeba_scores"]) == 40 and row["prompt"].startswith("closeup portrait photo of a ")
            assert set(row["model_sha256"]) >= {"realistic-vision-v5.1", "sd-vae-ft-mse", "facer-farl-celeba-224"}
            body = client.get_object(Bucket=BUCKET, Key=f"{out_prefix}/{rel}")["Body"].read()
            assert body[:2] == b"\xff\xd8"  # a JPEG, as the input's name says
        text = json.dumps(row)
        assert "testing" not in text  # credentials never reach a sidecar
    assert len(images) == len(FACES)


def batch_sizes(log_path) -> list[int]:
    return [int(n) for n in re.findall(r"batch of (\d+) requests", log_path.read_text(errors="replace"))]


def test_submit_runs_both_tiers_and_flower_lists_them(s3, tiny_models, tmp_path):
    endpoint, client = s3
    env = make_env(tiny_models, endpoint, 13, flower_password="s3cret-flower", flower_port=free_port())
    cpu = start_worker("cpu", env, tmp_path / "cpu.log", "--concurrency", "1")
    gpu = start_worker("gpu", env, tmp_path / "gpu.log")
    flower = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "flower"], env=env, cwd=ROOT,
                              stdout=open(tmp_path / "flower.log", "wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        t0 = time.monotonic()
        job_id = submit(env, "out")
        total = len(FACES) + len(BAD)
        job = wait_job(env, job_id, total, timeout=600)
        elapsed = time.monotonic() - t0
        assert job.counts == {"done": len(FACES), "no_face": 1, "failed": 2}
        check_outputs(client, "out")
        sizes = batch_sizes(tmp_path / "gpu.log")
        assert sum(sizes) == len(FACES) and max(sizes) <= 4  # each prompt generated once
        # each tier receives only its own tasks
        cpu_log, gpu_log = ((tmp_path / f).read_text(errors="replace") for f in ("cpu.log", "gpu.log"))
        assert "veil.analyze[" in cpu_log and "veil.analyze[" not in gpu_log
        assert "veil.generate[" not in cpu_log
        print(f"\n{total} keys in {elapsed:.1f}s through the queues; GPU batch sizes {sizes}")
        status = veil(env, "status", job_id)
        assert f"{total}/{total}" in status.stdout and status.returncode == 1  # 2 failed keys
        assert job_id in veil(env, "jobs").stdout

        # Flower: answers behind basic auth and lists both tiers' workers
        url = f"http://127.0.0.1:{env['VEIL_FLOWER_PORT']}/api/workers"
        auth = ("veil", "s3cret-flower")

        def listed():
            try:
                r = requests.get(url, auth=auth, timeout=5, params={"refresh": "1"})
            except requests.ConnectionError:
                return None
            return r.json() if r.status_code == 200 and len(r.json()) >= 2 else None

        workers = wait_for(listed, 60, "Flower to list the workers", interval=1.0)
        assert any(name.startswith("cpu@") for name in workers) and any(name.startswith("gpu-") for name in workers)
        assert requests.get(url, timeout=5).status_code == 401
        assert "s3cret-flower" not in (tmp_path / "flower.log").read_text(errors="replace")

        # A second submit to the same output skips every finished key (one listing of its sidecars)
        again = veil(env, "submit", f"s3://{BUCKET}/in/", "--out", f"s3://{BUCKET}/out/", "--name", "again")
        assert again.returncode == 0, again.stderr
        skipped = wait_job(env, again.stdout.strip().splitlines()[-1], total, timeout=120)
        assert skipped.skipped == total and skipped.state in ("finalizing", "finished")  # ended; a finalize writes
        wait_for(lambda: JobStore.from_url(env["VEIL_BROKER_URL"]).state(skipped.job_id) == "finished", 60, "finalize")
        assert max(batch_sizes(tmp_path / "gpu.log")[len(sizes):] or [0]) <= 4
    finally:
        for proc in (flower, gpu, cpu):
            stop(proc)


def test_sigkill_mid_batch_then_restart_gives_one_output_per_key(s3, tiny_models, tmp_path):
    endpoint, client = s3
    # visibility (5 s) shorter than a batch: kombu restores a live worker's reserved keys too;
    # each key still ends once (workers/redis_transport.py: a fresh delivery tag per delivery)
    env = make_env(tiny_models, endpoint, 14, visibility_timeout_s=5, steps=MID_BATCH_STEPS)
    cpu = start_worker("cpu", env, tmp_path / "cpu.log", "--concurrency", "1")
    gpu_log = tmp_path / "gpu.log"
    gpu = start_worker("gpu", env, gpu_log)
    try:
        job_id = submit(env, "killed")
        at_kill = kill_mid_batch(gpu, gpu_log)
        gpu = start_worker("gpu", env, gpu_log)
        job = wait_job(env, job_id, len(FACES) + len(BAD), timeout=600)
        assert job.counts == {"done": len(FACES), "no_face": 1, "failed": 2}
        check_outputs(client, "killed")
        assert generated_since(gpu_log, at_kill) >= len(FACES)  # the killed batch's keys among them
    finally:
        stop(gpu)
        stop(cpu)


def test_veil_run_reads_and_writes_s3(s3, tiny_models, tmp_path):
    endpoint, client = s3
    env = make_env(tiny_models, endpoint, 15, steps=2)
    listing = tmp_path / "keys.txt"  # a manifest file of keys works as INPUT too
    listing.write_text(f"s3://{BUCKET}/in/people/fr_biden.jpg\ns3://{BUCKET}/in/odd/no_face.jpg\n")
    proc = veil(env, "run", str(listing), f"s3://{BUCKET}/embedded/", "-q", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in
            client.get_object(Bucket=BUCKET, Key="embedded/manifest.jsonl")["Body"].read().decode().splitlines()]
    assert {r["input"].rsplit("/", 1)[-1]: r["status"] for r in rows} == {"fr_biden.jpg": "done", "no_face.jpg": "no_face"}
    assert keys(client, "embedded/") == ["embedded/manifest.jsonl", "embedded/people/fr_biden.jpg"]


def test_gpu_command_starts_one_pinned_worker_per_device(tiny_models, tmp_path):
    """`veil worker gpu --devices 0,1` starts one child per device, each with its own name and
    CUDA_VISIBLE_DEVICES; on this GPU-less machine each child falls back to the CPU."""
    env = make_env(tiny_models, "http://127.0.0.1:9", 8)
    parent = start_worker("gpu", env, tmp_path / "gpus.log", "--devices", "0,1")
    try:
        def pinged():
            proc = veil_celery(env, "inspect", "ping", "--timeout", "2")
            return proc.stdout if "gpu0@" in proc.stdout and "gpu1@" in proc.stdout else None

        wait_for(pinged, 180, "both device workers to answer", interval=2.0)
        children = subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 2
        pinned = sorted(open(f"/proc/{pid}/environ", "rb").read().split(b"\0") for pid in children)
        assert [b"CUDA_VISIBLE_DEVICES=0" in e for e in pinned].count(True) == 1
        assert [b"CUDA_VISIBLE_DEVICES=1" in e for e in pinned].count(True) == 1
    finally:
        stop(parent)  # SIGTERM to the group: the parent forwards it and both children exit
    assert parent.returncode is not None


def veil_celery(env, *args) -> subprocess.CompletedProcess:
    code = ("import sys; from shared.settings import Settings; from workers.celery_app import configure; "
            "configure(Settings.from_env()).start(sys.argv[1:])")
    return subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
