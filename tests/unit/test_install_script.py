"""scripts/install.sh keeps pip quiet (issue 25 item 4): the phase lines only, pip's whole output
in .venv/install.log, and when pip fails its last lines and the log's path. Run on a copy of the
script in a folder whose .venv holds a fake ``python`` (and the tools the script looks for), so
nothing is installed and nothing is downloaded."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAKE_PYTHON = """#!/usr/bin/env bash
# ``python -c ...`` succeeds (imports "there"); ``python -m pip install`` prints 400 lines and
# exits with $FAKE_PIP_STATUS
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  for i in $(seq 1 400); do echo "Collecting package-$i"; done
  echo "ERROR: the last line pip printed" >&2
  exit "${FAKE_PIP_STATUS:-0}"
fi
if [ "$1" = "-c" ] && [[ "$2" == *"import torch, torchvision"* ]]; then exit 1; fi  # torch "missing"
exit 0
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "install.sh", tmp_path / "scripts" / "install.sh")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("python", "chromium", "chromedriver", "prometheus"):
        (bin_dir / tool).write_text(FAKE_PYTHON if tool == "python" else "#!/bin/sh\nexit 0\n")
        (bin_dir / tool).chmod(0o755)
    (bin_dir / "activate").write_text(f'PATH="{bin_dir}:/usr/bin:/bin"\n')
    return tmp_path


def _install(project: Path, status: int) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "FAKE_PIP_STATUS": str(status), "HOME": str(project)}
    return subprocess.run(["bash", "scripts/install.sh"], cwd=project, env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def test_pip_is_quiet_and_its_output_kept_in_a_log(project):
    done = _install(project, 0)
    assert done.returncode == 0, done.stderr
    lines = (done.stdout + done.stderr).splitlines()
    assert all(line.startswith("== [") for line in lines), lines  # the phases only
    assert ".venv/install.log" in done.stdout and "install done" in done.stdout
    log = (project / ".venv" / "install.log").read_text()
    assert log.count("Collecting package-") == 3 * 400  # torch, veil, opencv: all of pip's lines kept


def test_a_failing_pip_names_its_log_with_its_last_lines(project):
    failed = _install(project, 1)
    assert failed.returncode != 0
    assert "pip install torch==2.14.1 torchvision==0.29.1 failed" in failed.stderr
    assert "ERROR: the last line pip printed" in failed.stderr and "Collecting package-1\n" not in failed.stderr
    assert f"{project}/.venv/install.log" in failed.stderr
    assert len(failed.stderr.splitlines()) < 25 and "Collecting" not in failed.stdout
    assert (project / ".venv" / "install.log").read_text().count("Collecting package-") == 400


def test_verbose_shows_pips_lines(project):
    env_done = subprocess.run(["bash", "scripts/install.sh"], cwd=project, capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "VEIL_INSTALL_VERBOSE": "1", "HOME": str(project)})  # fmt: skip
    assert env_done.returncode == 0, env_done.stderr
    assert env_done.stdout.count("Collecting package-") == 3 * 400
