"""Issue 23, exposure, with real parts: ``veil -v`` against a real S3 endpoint (moto_server)
logs botocore's requests without the credentials, and ``veil exporter`` listens on loopback
unless VEIL_METRICS_HOST says otherwise."""

from __future__ import annotations

import subprocess
import sys

import boto3
import pytest

from tests.services import ROOT, free_port, moto_s3, stop, wait_for, worker_env

pytestmark = pytest.mark.slow

KEY_ID, SECRET = "AKIAVEILTEST0001", "veil-secret-0001/xyz"


def test_verbose_logging_redacts_the_s3_credentials(faces_dir, tmp_path):
    with moto_s3() as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)
        s3.create_bucket(Bucket="bkt")
        s3.put_object(Bucket="bkt", Key="in/a.jpg", Body=(faces_dir / "id02_12.jpg").read_bytes())
        env = worker_env(s3_endpoint_url=endpoint, s3_access_key_id=KEY_ID, s3_secret_access_key=SECRET)
        run = subprocess.run([sys.executable, "-m", "orchestrator.cli", "-v", "run", "s3://bkt/in/",
                              str(tmp_path / "out"), "--method", "blur", "--quiet"],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert "botocore" in log and "Credential=***" in log  # the debug lines are there, redacted
    assert KEY_ID not in log and SECRET not in log


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) listening on ``port``."""
    found = set()
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, _, hexport = local.partition(":")
        if state == "0A" and int(hexport, 16) == port:
            found.add(addr)
    return found


@pytest.mark.parametrize(("host", "expected"), [(None, "0100007F"), ("0.0.0.0", "00000000")])
def test_the_exporter_listens_on_loopback_by_default(tmp_path, host, expected):
    port = free_port()
    env = worker_env(**({"metrics_host": host} if host else {}))
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "exporter", "--port", str(port)], env=env,
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_for(lambda: _listening(port), 60, "the exporter") == {expected}
    finally:
        stop(proc)
