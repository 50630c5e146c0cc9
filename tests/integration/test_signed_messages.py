"""Issue 23, item 4: signed messages (Celery's ``auth`` serializer behind ``VEIL_SECURITY_*``).

Keys and certificates made here with the openssl commands SECURITY.md gives. A whole job with
signing on: ``veil submit``, the feeder's messages (built by ``workers/transport.py``, signed as
``send_task`` signs them) and the job's ``veil.finalize`` message, taken by a real CPU worker
(a classical method: no model files). Before it starts, the worker's queue holds an unsigned
message, a signed one whose body was changed after signing, and one signed by a key whose
certificate is not in the store: each is dead-lettered (``unsigned``, ``bad_signature``),
nothing of theirs is written, and the worker goes on to finish the job."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest
import redis

from shared.jobs import JobStore
from shared.settings import Settings
from tests.services import ROOT, redis_url, start_worker, stop, wait_for, worker_env
from workers import transport

pytestmark = pytest.mark.slow

DB = 12


def _signing_key(d, name: str) -> None:
    """SECURITY.md's command: an RSA key and its self-signed certificate."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                    "-out", f"{name}.crt", "-days", "1", "-subj", f"/CN={name}"],
                   cwd=d, check=True, capture_output=True, timeout=60)  # fmt: skip


def _signed_envelope(envelope: dict, data: list, key, cert, store) -> dict:
    """``envelope`` with ``data`` signed by ``key`` as Celery's ``auth`` serializer signs it (its
    own ``SecureSerializer``, not registered in this process: kombu's registry stays as it is)."""
    from celery.security.certificate import Certificate, FSCertStore
    from celery.security.key import PrivateKey
    from celery.security.serialization import SecureSerializer

    serializer = SecureSerializer(PrivateKey(key.read_text()), Certificate(cert.read_text()), FSCertStore(str(store)))
    signed = serializer.serialize(data)
    return envelope | {"content-type": "application/data", "body": base64.b64encode(signed.encode()).decode()}


def _dead_letters(broker: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "deadletter", "--json"],
                         env=worker_env(broker_url=broker), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["entries"]


def test_a_signed_worker_runs_signed_jobs_and_refuses_unsigned_and_tampered_messages(faces_dir, tmp_path):
    keys, store, src, out = (tmp_path / name for name in ("keys", "keys/store", "in", "out"))
    store.mkdir(parents=True)
    src.mkdir()
    _signing_key(keys, "veil")
    _signing_key(keys, "intruder")
    (store / "veil.crt").write_bytes((keys / "veil.crt").read_bytes())
    for name in ("id02_12.jpg", "id07_25.jpg"):
        (src / name).write_bytes((faces_dir / name).read_bytes())
    broker = redis_url(DB)
    client = redis.Redis.from_url(broker)
    queue = f"cpu-{DB}"
    signing = dict(security_key=keys / "veil.key", security_certificate=keys / "veil.crt", security_cert_store=store)
    env = worker_env(broker_url=broker, models_dir=tmp_path / "no-models", cpu_queue=queue, gpu_queue=f"gpu-{DB}",
                     input_roots=str(src), output_roots=str(out), **signing)
    from workers.celery_app import CPU_TASK, configure

    app = configure(Settings.from_env({}, broker_url=broker))  # this process sends unsigned (JSON) messages
    # the job first (keys wait in its pending list until a worker's feeder runs): the forged
    # messages below name it and lie under its roots, so only their signatures keep them out
    submitted = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "submit", str(src), "--out", str(out), "--method", "pixelate"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]

    def msg(name: str) -> dict:
        return dict(job_id=job_id, input_uri=str(src / "id02_12.jpg"), output_uri=str(out / name), seed=1,
                    method="pixelate")  # fmt: skip

    app.send_task(CPU_TASK, args=[msg("unsigned.jpg")], queue=queue)
    app.send_task(CPU_TASK, args=[msg("template.jpg")], queue="scratch-sign")
    envelope = json.loads(client.rpop("scratch-sign"))
    body = [[msg("tampered.jpg")], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    signed = _signed_envelope(envelope, body, keys / "veil.key", keys / "veil.crt", store)
    packed = base64.b64decode(base64.b64decode(signed["body"]))
    assert packed.count(b"tampered.jpg") == 1
    changed = base64.b64encode(base64.b64encode(packed.replace(b"tampered.jpg", b"forgery1.jpg"))).decode()
    client.lpush(queue, json.dumps(signed | {"body": changed}))  # signed by Veil's key, body changed since
    assert transport.task_args(json.dumps(signed))[0]["output_uri"] == str(out / "tampered.jpg")  # veil cancel reads it
    intruder = _signed_envelope(envelope, [[msg("intruder.jpg")], {}, body[2]], keys / "intruder.key",
                                keys / "intruder.crt", keys / "intruder.crt")  # fmt: skip
    client.lpush(queue, json.dumps(intruder))  # a well-formed signature by a certificate not in the store

    cpu = start_worker("cpu", env, tmp_path / "cpu.log", "--concurrency", "1")
    try:
        jobs = JobStore.from_url(broker)
        job = wait_for(lambda: ((j := jobs.get(job_id)) and j.state == "finished" and j) or cpu.poll() is not None,
                       300, "the signed job")  # fmt: skip
        log = (tmp_path / "cpu.log").read_text(errors="replace")
        assert cpu.poll() is None, log[-3000:]
        assert job.counts["done"] == 2, log[-3000:]
        assert (out / "_veil" / job_id / "summary.json").is_file()  # veil.finalize's message was signed too
    finally:
        stop(cpu)
    written = sorted(p.name for p in out.iterdir() if p.name != "_veil")
    assert written == ["id02_12.jpg", "id02_12.jpg.json", "id07_25.jpg", "id07_25.jpg.json"], log[-3000:]
    letters = _dead_letters(broker)
    assert sorted(e["reason"] for e in letters) == ["bad_signature", "bad_signature", "unsigned"], letters
    assert any("Unknown certificate" in e["error"] for e in letters), letters
    assert log.count("dead-lettered a message from") == 3, log[-3000:]


def test_signing_settings_are_all_or_nothing_and_checked_at_start(tmp_path):
    with pytest.raises(ValueError, match="VEIL_SECURITY_CERT_STORE unset"):
        Settings.from_env({}, security_key=tmp_path / "k", security_certificate=tmp_path / "c")
    assert not Settings.from_env({}).signing
    # a store without a certificate, a key file that is not there: one line naming the settings, exit 2
    store = tmp_path / "store"
    store.mkdir()
    for key, expected in (("none.key", "holds no certificate"), ("none.key", "VEIL_SECURITY_KEY")):
        env = worker_env(broker_url=redis_url(DB), security_key=tmp_path / key,
                         security_certificate=tmp_path / "veil.crt", security_cert_store=store)  # fmt: skip
        submit = [sys.executable, "-m", "orchestrator.cli", "submit", str(tmp_path), "--out", str(tmp_path / "out")]
        out = subprocess.run(submit, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert expected in out.stderr and "VEIL_SECURITY_CERT_STORE" in out.stderr, out.stderr
        _signing_key(tmp_path, "veil")
        (store / "veil.crt").write_bytes((tmp_path / "veil.crt").read_bytes())


def test_both_tiers_signed_the_gpu_worker_refuses_unsigned_and_tampered_prompts(faces_dir, tiny_models, tmp_path):
    """A whole job through both tiers with signing on (the CPU tier's prompt messages signed by
    ``send_task``, taken by celery-batches on the GPU worker), while the GPU queue also holds an
    unsigned prompt message and a signed one changed after signing, both naming the job."""
    import requests

    from tests.services import free_port

    keys, store, src, out = (tmp_path / name for name in ("keys", "keys/store", "in", "out"))
    store.mkdir(parents=True)
    src.mkdir()
    _signing_key(keys, "veil")
    (store / "veil.crt").write_bytes((keys / "veil.crt").read_bytes())
    for name in ("id02_12.jpg", "id07_25.jpg"):
        (src / name).write_bytes((faces_dir / name).read_bytes())
    broker = redis_url(DB)
    client = redis.Redis.from_url(broker)
    port = free_port()
    env = worker_env(broker_url=broker, models_dir=tiny_models, cpu_queue=f"cpu-{DB}", gpu_queue=f"gpu-{DB}",
                     batch_size=2, gpu_batch_wait_s=1.0, steps=1, image_size=64,
                     input_roots=str(src), output_roots=str(out), security_key=keys / "veil.key",
                     security_certificate=keys / "veil.crt", security_cert_store=store)  # fmt: skip
    submitted = subprocess.run([sys.executable, "-m", "orchestrator.cli", "submit", str(src), "--out", str(out)],
                               env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]
    from workers.celery_app import GPU_TASK, configure

    app = configure(Settings.from_env({}, broker_url=broker))  # unsigned (JSON)
    analysis = dict(face_box=[0.0, 0.0, 10.0, 10.0, 0.9], celeba_scores={"Male": 0.9}, age=30, ethnicity="white",
                    deepface_gender="Man")  # fmt: skip

    def prompt(name: str) -> dict:
        return dict(job_id=job_id, input_uri=str(src / "id02_12.jpg"), output_uri=str(out / name), seed=1,
                    prompt="closeup portrait photo of a man", negative_prompt="blurry", analysis=analysis,
                    model_sha256={})  # fmt: skip

    app.send_task(GPU_TASK, args=[prompt("unsigned.png")], queue=f"gpu-{DB}")
    app.send_task(GPU_TASK, args=[prompt("template.png")], queue="scratch-sign")
    envelope = json.loads(client.rpop("scratch-sign"))
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    signed = _signed_envelope(envelope, [[prompt("tampered.png")], {}, embed], keys / "veil.key", keys / "veil.crt",
                              store)  # fmt: skip
    packed = base64.b64decode(base64.b64decode(signed["body"])).replace(b"tampered.png", b"forgery1.png")
    client.lpush(f"gpu-{DB}", json.dumps(signed | {"body": base64.b64encode(base64.b64encode(packed)).decode()}))

    cpu = start_worker("cpu", env, tmp_path / "cpu.log", "--concurrency", "1")
    gpu = start_worker("gpu", env | {"VEIL_METRICS_PORT": str(port)}, tmp_path / "gpu.log")  # its counters served
    try:
        jobs = JobStore.from_url(broker)
        job = wait_for(lambda: ((j := jobs.get(job_id)) and j.state == "finished" and j)
                       or cpu.poll() is not None or gpu.poll() is not None, 600, "the signed job")  # fmt: skip
        logs = "".join((tmp_path / f"{t}.log").read_text(errors="replace")[-2000:] for t in ("cpu", "gpu"))
        assert cpu.poll() is None and gpu.poll() is None, logs
        assert job.counts["done"] == 2, logs
        samples = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        stop(gpu)
        stop(cpu)
    written = sorted(p.name for p in out.iterdir() if p.name != "_veil")
    assert written == ["id02_12.jpg", "id02_12.jpg.json", "id07_25.jpg", "id07_25.jpg.json"], (written, logs)
    assert sorted(e["reason"] for e in _dead_letters(broker)) == ["bad_signature", "unsigned"]
    failures = [line for line in samples.splitlines() if line.startswith("veil_failures_total")]
    assert 'veil_failures_total{reason="unsigned",tier="gpu"} 1.0' in failures, failures
    assert 'veil_failures_total{reason="bad_signature",tier="gpu"} 1.0' in failures, failures
