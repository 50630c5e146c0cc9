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

from shared.jobs import JobStore
from tests.services import ROOT, free_port, start_worker, stop, wait_for, worker_env

pytestmark = pytest.mark.slow

#: Veil's ACL: its own keys (veil*: queues, jobs, feeder, dead letters), kombu's bindings and
#: unacked hash, Celery's pidbox and event queues; every channel (Celery's events); every command
#: but the @dangerous ones (FLUSHALL, CONFIG, KEYS, DEBUG, ...). Documented in SECURITY.md.
ACL = ["~veil*", "~_kombu.*", "~unacked*", "~*.pidbox*", "~celery*", "&*", "+@all", "-@dangerous"]
PASSWORD = "veil-acl-pw-23"


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
         "--user", "veil", "on", f">{PASSWORD}", *ACL], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
        finally:
            stop(cpu)
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
