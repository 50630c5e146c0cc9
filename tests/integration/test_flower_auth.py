"""Flower's /metrics lists worker and task names: behind basic auth unless opened by a setting."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests

from tests.services import ROOT, free_port, redis_url, stop, wait_for, worker_env


def _start(tmp_path, **settings):
    env = worker_env(broker_url=redis_url(9), flower_password="s3cret-flower", flower_port=free_port(), **settings)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "flower"], env=env, cwd=ROOT,
                            stdout=open(tmp_path / "flower.log", "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{env['VEIL_FLOWER_PORT']}"

    def up():
        try:
            return requests.get(base + "/healthcheck", timeout=2).status_code == 200
        except requests.ConnectionError:
            return None

    try:
        wait_for(up, 60, "Flower to answer", interval=0.5)
    except BaseException:
        stop(proc)
        raise
    return proc, base


@pytest.mark.parametrize("public, status_without_auth", [(False, 401), (True, 200)])
def test_metrics_need_auth_unless_opened(tmp_path, public, status_without_auth):
    proc, base = _start(tmp_path, flower_public_metrics=str(public).lower())
    try:
        assert requests.get(base + "/metrics", timeout=5).status_code == status_without_auth
        assert requests.get(base + "/metrics", auth=("veil", "wrong"), timeout=5).status_code == (
            401 if not public else 200)
        ok = requests.get(base + "/metrics", auth=("veil", "s3cret-flower"), timeout=5)
        assert ok.status_code == 200 and b"flower_" in ok.content
        assert requests.get(base + "/api/workers", timeout=5).status_code == 401  # the rest stays closed
    finally:
        stop(proc)
