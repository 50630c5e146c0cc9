"""The worker health file and `veil health`, what the Kubernetes probes run (workers/health.py).
A real worker writing it, and going stale when frozen: tests/integration/test_k8s.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from shared.settings import Settings
from tests.services import ROOT, worker_env
from workers import health


def veil_health(*args: str, **env: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "health", *args], env=worker_env(**env),
                          cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip


def test_check_fresh_stale_and_missing(tmp_path):
    path = tmp_path / "health"
    assert health.check(path, 60) == (False, f"unhealthy: no health file {path} (worker starting, or not consuming)")
    health.write(path, tier="gpu", state="consuming")
    assert json.loads(path.read_text())["tier"] == "gpu"
    assert health.check(path, 60)[0]
    now = time.time()
    os.utime(path, (now - 61, now - 61))
    ok, line = health.check(path, 60)
    assert not ok and "61 s ago (> 60 s)" in line
    assert health.check(path, 120)[0]
    assert not list(tmp_path.glob(".*tmp"))  # written by rename: no temp file left


def test_reset_drops_an_earlier_runs_file(tmp_path):
    path = tmp_path / "run" / "health"
    settings = Settings.from_env({}, health_file=path)
    health.reset(settings)  # makes the folder
    health.write(path)
    health.reset(settings)
    assert not path.exists() and path.parent.is_dir()
    health.reset(Settings.from_env({}))  # no file configured: nothing to do


def test_veil_health_exit_codes(tmp_path):
    path = tmp_path / "health"
    missing = veil_health(health_file=path)
    assert missing.returncode == 1 and "no health file" in missing.stderr
    health.write(path)
    fresh = veil_health("--max-age", "30", health_file=path)
    assert fresh.returncode == 0 and fresh.stdout.startswith("healthy:")
    os.utime(path, (time.time() - 100, time.time() - 100))
    assert veil_health("--max-age", "30", health_file=path).returncode == 1
    assert veil_health("--max-age", "300", "--file", str(path)).returncode == 0
    unset = veil_health()
    assert unset.returncode == 2 and "VEIL_HEALTH_FILE" in unset.stderr
