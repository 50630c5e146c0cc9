"""What a process really imports: processes that must not carry the GPU stack (``veil submit``,
the CPU tier, Flower's app) run in a subprocess against real Redis and moto_server, and their
``sys.modules`` is read at exit. The static layer rules are in tests/unit/test_layering.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import boto3

from tests.services import ROOT, moto_s3, redis_url, worker_env

# -- at run time: what a process really imports ----------------------------------------------

REPORT = """
import atexit, json, os, sys
atexit.register(lambda: print(json.dumps({m: m in sys.modules for m in ("torch", "diffusers", "transformers", "celery")}),
                              file=open(os.environ["MODULES_REPORT"], "w")))
{body}
"""
CLI = "from orchestrator.cli import main\nsys.exit(main(sys.argv[1:]))"


def modules_at_exit(tmp_path: Path, body: str, *args: str, env: dict[str, str] | None = None) -> dict[str, bool]:
    report = tmp_path / "modules.json"
    env = {**(env or worker_env()), "MODULES_REPORT": str(report)}
    proc = subprocess.run([sys.executable, "-c", REPORT.replace("{body}", body), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(report.read_text())


def test_submit_help_imports_no_torch(tmp_path):
    modules = modules_at_exit(tmp_path, CLI, "submit", "--help")
    assert modules == {"torch": False, "diffusers": False, "transformers": False, "celery": False}


def test_a_real_one_key_submit_imports_no_torch(tmp_path):
    with moto_s3() as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="k",
                          aws_secret_access_key="s")
        s3.create_bucket(Bucket="layers")
        s3.put_object(Bucket="layers", Key="in/a.jpg", Body=b"not decoded by submit")
        url = redis_url(9)
        env = worker_env(broker_url=url, s3_endpoint_url=endpoint, s3_access_key_id="k", s3_secret_access_key="s",
                         cpu_queue="layers-cpu", gpu_queue="layers-gpu")
        modules = modules_at_exit(tmp_path, CLI, "submit", "s3://layers/in/", "--out", "s3://layers/out/", env=env)
        import redis

        assert redis.Redis.from_url(url).llen("layers-cpu") == 1  # it really enqueued the key
    assert modules == {"torch": False, "diffusers": False, "transformers": False, "celery": True}


def test_cpu_tier_and_flower_import_no_gpu_stack(tmp_path, tiny_models):
    # What a CPU worker's pool child holds: its tier's task module and its models, loaded
    cpu = ("from shared.settings import Settings\nfrom workers.celery_app import configure, app\n"
           "import workers.launch, workers.cpu.tasks\nfrom workers import runtime\n"
           "from workers.cpu.stage import CpuModels\nsettings = Settings.from_env()\n"
           "configure(settings, tier='cpu')\nruntime.start(settings).models('cpu', CpuModels.load)\n"
           "assert 'veil.analyze' in app.tasks and 'veil.generate' not in app.tasks")
    modules = modules_at_exit(tmp_path, cpu, env=worker_env(models_dir=tiny_models))
    assert modules == {"torch": True, "diffusers": False, "transformers": False, "celery": True}
    flower = "from shared.settings import Settings\nfrom workers.celery_app import configure\nconfigure(Settings.from_env())"
    assert modules_at_exit(tmp_path, flower) == {"torch": False, "diffusers": False, "transformers": False,
                                                 "celery": True}


def test_veil_run_mistakes_are_answered_before_torch_is_imported(tmp_path, faces_dir):
    """INPUT first, then OUTPUT, then the weights, each answered with torch and diffusers never
    imported (they took 19-82 s; a typo in INPUT was answered "weights missing")."""
    photos = tmp_path / "in"
    photos.mkdir()
    (photos / "a.jpg").write_bytes((faces_dir / "id02_12.jpg").read_bytes())
    body = ("from orchestrator.cli import main\ncode = main(sys.argv[1:])\n"
            "open(os.environ['MODULES_REPORT'] + '.code', 'w').write(str(code))")
    env = worker_env(models_dir=tmp_path / "no-models")
    cases = {  # argv -> (exit code, what the one line names)
        (str(tmp_path / "typo"), str(tmp_path / "out")): (2, "INPUT"),  # weights missing too: INPUT first
        (str(photos), str(photos / "out")): (2, "OUTPUT"),
        (str(photos), str(tmp_path / "out")): (2, "weights"),
    }
    for argv, (code, named) in cases.items():
        modules = modules_at_exit(tmp_path, "import os\n" + body, "run", *argv, env=env)
        assert (tmp_path / "modules.json.code").read_text() == str(code), argv
        assert modules["torch"] is False and modules["diffusers"] is False, (argv, modules)
    # and what each said, in one process each
    for argv, (code, named) in cases.items():
        proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", *argv], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == code and named in proc.stderr.splitlines()[0], (argv, proc.stderr)
