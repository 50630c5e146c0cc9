"""Issue 23: Redis with TLS (CA verified) and an ACL user carries a whole job, and wrong
credentials or an untrusted certificate give a one-line error. Real parts: a redis-server
started here with ``--tls-port`` and an ACL user that has only Veil's key patterns and no
``@dangerous`` command (Debian's redis-server has TLS), certificates made here with openssl,
``veil submit`` and a CPU worker (a classical method: no model files)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import redis
import requests

from shared.jobs import JobStore
from tests.services import ROOT, free_port, start_worker, stop, wait_for, worker_env

pytestmark = pytest.mark.slow

#: Veil's ACL, the one compose and k8s give Redis (SECURITY.md): its own keys (veil*: queues,
#: jobs, feeder, dead letters), kombu's bindings and unacked hash, Celery's pidbox and event
#: queues and channels; only the commands Veil's clients, kombu, Celery and Flower send.
ACL = (ROOT / "deploy" / "k8s" / "components" / "redis" / "veil.acl").read_text().split()
PASSWORD = "veil-acl-pw-23"
ADMIN = "veil-admin-pw-23"  # reads ACL LOG: every command the veil user was refused


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _certificates(d) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
             "-subj", "/CN=veil-test-ca", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj",
             "/CN=127.0.0.1", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out",
             "server.crt", "-days", "1", "-extfile", "ext.cnf", cwd=d)


def _get(url: str, auth: tuple[str, str] | None = None):
    try:
        response = requests.get(url, auth=auth, timeout=5)
    except requests.ConnectionError:
        return None
    return response if response.status_code == 200 and response.text.strip() not in ("", "{}") else None


def _veil(*args: str, url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=worker_env(broker_url=url), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_a_job_over_tls_with_an_acl_user(faces_dir, tmp_path):
    assert shutil.which("redis-server") and shutil.which("openssl"), "needs redis-server (with TLS) and openssl"
    tls = tmp_path / "tls"
    tls.mkdir()
    _certificates(tls)
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(tls / "server.crt"),
         "--tls-key-file", str(tls / "server.key"), "--tls-ca-cert-file", str(tls / "ca.crt"),
         "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--user", "default", "off",
         "--user", "veil", "on", f">{PASSWORD}", *ACL, "--user", "admin", "on", f">{ADMIN}", "~*", "&*", "+@all"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    ca = f"ssl_cert_reqs=required&ssl_ca_certs={tls / 'ca.crt'}"
    url = f"rediss://veil:{PASSWORD}@127.0.0.1:{port}/0?{ca}"
    try:
        wait_for(lambda: _veil("jobs", url=url).returncode == 0, 60, "redis-server with TLS")
        src = tmp_path / "in"
        src.mkdir()
        for name in ("id02_12.jpg", "id07_25.jpg"):
            (src / name).write_bytes((faces_dir / name).read_bytes())
        env = worker_env(broker_url=url, models_dir=tmp_path / "no-models")
        cpu = start_worker("cpu", env, tmp_path / "cpu.log", "--concurrency", "1")
        try:
            submitted = _veil("submit", str(src), "--out", str(tmp_path / "out"), "--method", "pixelate", url=url)
            assert submitted.returncode == 0, submitted.stderr
            job_id = submitted.stdout.strip().splitlines()[-1]
            jobs = JobStore.from_url(url)
            job = wait_for(lambda: (j := jobs.get(job_id)) and j.state == "finished" and j, 300, "the job over TLS")
            assert job.counts["done"] == 2, (tmp_path / "cpu.log").read_text(errors="replace")[-3000:]
            assert (tmp_path / "out" / "_veil" / job_id / "summary.json").is_file()
            for args in (("status", job_id), ("deadletter",), ("retry", job_id)):
                out = _veil(*args, url=url)
                assert out.returncode == 0, (args, out.stderr)
            cancelled = _veil("cancel", job_id, url=url)  # reads the job and the queues, then says it ended
            assert cancelled.returncode == 1 and "already ended" in cancelled.stderr, cancelled.stderr
            # Flower (events, the workers' inspect replies, queue lengths) and the exporter over TLS too
            fport, eport, login = free_port(), free_port(), ("veil", "fl-pw-23")
            side_env = worker_env(broker_url=url, flower_password=login[1], flower_port=fport)
            side = {name: subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT, env=side_env,
                                           stdout=open(tmp_path / f"{name}.log", "wb"), stderr=subprocess.STDOUT,
                                           start_new_session=True)
                    for name, args in (("flower", ["flower"]), ("exporter", ["exporter", "--port", str(eport)]))}
            try:
                workers = wait_for(lambda: _get(f"http://127.0.0.1:{fport}/api/workers?refresh=1", login), 60,
                                   "Flower's workers")  # fmt: skip
                assert any(name.startswith("cpu@") for name in workers.json()), workers.text
                lengths = _get(f"http://127.0.0.1:{fport}/api/queues/length", login)
                assert lengths is not None, (tmp_path / "flower.log").read_text(errors="replace")[-2000:]
                metrics = wait_for(lambda: _get(f"http://127.0.0.1:{eport}/metrics"), 60, "the exporter")
                assert 'veil_queue_depth{queue="veil.cpu"} 0.0' in metrics.text, metrics.text[-2000:]
            finally:
                for proc in side.values():
                    stop(proc)
        finally:
            stop(cpu)
        # the ACL let through everything Veil sent: Redis logged no refused command or key
        admin = redis.Redis(host="127.0.0.1", port=port, username="admin", password=ADMIN, ssl=True,
                            ssl_ca_certs=str(tls / "ca.crt"))  # fmt: skip
        assert admin.acl_log() == [], admin.acl_log()
        # ... and it refuses what Veil does not need: a key outside its patterns, an admin command
        veil = redis.Redis(host="127.0.0.1", port=port, username="veil", password=PASSWORD, ssl=True,
                           ssl_ca_certs=str(tls / "ca.crt"))  # fmt: skip
        for refused in (lambda: veil.get("session:1"), veil.flushall, lambda: veil.config_get("*"), veil.keys):
            with pytest.raises(redis.exceptions.NoPermissionError):
                refused()
        # wrong credentials, an untrusted certificate, plain TCP: one line each, exit 4 (a service), no password
        for bad, what in ((url.replace(PASSWORD, "wrong-pw"), "AuthenticationError"),
                          (f"rediss://veil:{PASSWORD}@127.0.0.1:{port}/0?ssl_cert_reqs=required", "CERTIFICATE_VERIFY"),
                          (f"redis://veil:{PASSWORD}@127.0.0.1:{port}/0", "ConnectionError")):
            out = _veil("jobs", url=bad)
            assert out.returncode == 4 and len(out.stderr.strip().splitlines()) == 1, out.stderr
            assert what in out.stderr and PASSWORD not in out.stderr, out.stderr
    finally:
        server.terminate()
        server.wait(10)
