"""Control plane at dataset scale (issue 18): how long a job's finalize takes, and its peak RSS.

    python benchmarks/scale.py --sidecars N [--s3-sidecars M] [--latency-ms 15] [--feed-keys K] --json FILE

Starts its own redis-server and moto_server on spare ports, then:

- ``finalize``: N synthetic sidecars (``tests/sidecars.py``: ~2.7 kB ResultRecord JSON each, in
  97 folders) of one job, plus 1 % of another job mixed in, in a local OUTPUT; the job's record
  in Redis as it is when it ends; then ``workers.finalize.finalize_job`` in a CHILD process,
  timed, and the child's peak RSS (``ru_maxrss`` from ``os.wait4``).
- ``finalize_s3``: the same with M sidecars on moto (bulk-written by many threads, straight to
  moto), the finalize going through ``tests.tcpproxy.TcpProxy`` with ``--latency-ms`` added to
  each request, as against a distant S3.
- ``feeder`` (only with ``--feed-keys K`` > 0): ``benchmarks.feed_rate.measure(redis_url, K)``,
  the feeder moving K keys from a pending list to ``veil.cpu`` while a consumer drains it.
- ``e2e`` (only with ``--e2e-keys E`` > 0): ``benchmarks.e2e_job.run(E)``, a whole job of E small
  images through real CPU and GPU worker processes (tiny models, 64 px, 1 step; its own
  redis-server): exact counts, the summary, Redis commands and S3 requests per key, CPU-ms per
  key per tier and the control plane's share of it.

Goals (issue 18): 1,000,000 local sidecars with peak RSS <= 256 MB; 100,000 on moto with 15 ms
latency in <= 10 minutes. The numbers depend on the machine and its load: say both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

JOB, OTHER = "scalejob0001", "otherjob0002"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


def _items(n: int) -> list[tuple[str, int]]:
    """This job's N keys, and one key of another job after every 100th (1 %)."""
    out: list[tuple[str, int]] = []
    for i in range(n):
        out.append((JOB, i))
        if i % 100 == 99:
            out.append((OTHER, n + i))
    return out


def _job_record(redis_url: str, output: str, n: int) -> None:
    """The job as Redis has it when its last key was counted: finalizing, counts, failures."""
    import redis

    from shared.jobs import FINALIZE, JOBS, job_key
    from shared.messages import JobSpec
    from tests.sidecars import record

    r = redis.Redis.from_url(redis_url)
    r.flushdb()
    spec = JobSpec(job_id=JOB, name="scale", input="s3://in/", source="s3://in/", output=output, created=1.0)
    counts = {"done": 0, "no_face": 0, "failed": 0}
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        rec = record(JOB, i) if i % 7 == 3 or i % 11 == 5 else None
        if rec is None:
            counts["done"] += 1
            continue
        counts[rec.status.value] += 1
        if rec.reason:
            pipe.hset(job_key(JOB, "failed"), rec.input, rec.reason)
        if len(pipe) > 5000:
            pipe.execute()
    pipe.hset(job_key(JOB), mapping={"name": "scale", "input": "s3://in/", "output": output, "total": n,
                                     "created": 1.0, "state": "finalizing", "listed": 1, "ended": 2.0,
                                     "spec": spec.model_dump_json(), **counts})  # fmt: skip
    pipe.zadd(JOBS, {JOB: 1.0})
    pipe.zadd(FINALIZE, {JOB: 2.0})
    pipe.execute()


def _finalize_in_child(env: dict[str, str]) -> dict:
    """``finalize_job`` in a child process: its seconds (measured inside) and its peak RSS."""
    proc = subprocess.Popen([sys.executable, __file__, "--child"], env=env, stdout=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"finalize child exited {proc.returncode}")
    result = json.loads(out)
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)  # Linux: kB
    result["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 1)
    return result


def _child() -> None:
    from shared.jobs import JobStore
    from shared.settings import Settings
    from shared.storage import open_storage
    from workers.finalize import finalize_job

    settings = Settings.from_env()
    jobs = JobStore.from_url(settings.jobs_url)
    started = time.monotonic()
    result = finalize_job(JOB, jobs, open_storage(settings), settings)
    seconds = time.monotonic() - started
    assert result.outcome == "finalized", result
    print(json.dumps({"seconds": round(seconds, 1), "rows": result.rows, "listed": result.listed}))


def _env(**veil: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    env.update({f"VEIL_{k.upper()}": str(v) for k, v in veil.items()})
    env["PYTHONPATH"] = str(ROOT)
    return env


def measure_local(redis_url: str, n: int, workdir: Path, threads: int) -> dict:
    from tests.sidecars import write_local

    out = workdir / "out"
    t0 = time.monotonic()
    written = write_local(str(out), _items(n))
    print(f"local: {written} sidecars written in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    t0 = time.monotonic()
    _job_record(redis_url, str(out), n)
    print(f"local: job record in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    result = _finalize_in_child(_env(broker_url=redis_url, finalize_threads=threads))
    manifest_mb = round((out / "_veil" / JOB / "manifest.jsonl").stat().st_size / 2**20, 1)
    assert result["rows"] == n, result
    report = {"sidecars": n, "backend": "local", "other_job_sidecars": written - n, "threads": threads, **result,
              "manifest_mb": manifest_mb}  # fmt: skip
    print(json.dumps(report), file=sys.stderr)  # before the clean-up, which is slow at 1M files
    t0 = time.monotonic()
    shutil.rmtree(out)
    print(f"local: OUTPUT removed in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return report


def measure_s3(redis_url: str, endpoint: str, n: int, latency_ms: float, threads: int) -> dict:
    import boto3
    from botocore.config import Config

    from tests.sidecars import write_s3
    from tests.tcpproxy import TcpProxy

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing", config=Config(max_pool_connections=64))  # fmt: skip
    client.create_bucket(Bucket="scale")
    t0 = time.monotonic()
    written = write_s3(client, "scale", "out/", _items(n), threads=48)
    print(f"s3: {written} sidecars PUT to moto in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    _job_record(redis_url, "s3://scale/out/", n)
    with TcpProxy(int(endpoint.rsplit(":", 1)[1]), latency_s=latency_ms / 1000) as proxy:
        env = _env(broker_url=redis_url, finalize_threads=threads, s3_endpoint_url=proxy.url,
                   s3_access_key_id="testing", s3_secret_access_key="testing")  # fmt: skip
        result = _finalize_in_child(env)
    head = client.head_object(Bucket="scale", Key=f"out/_veil/{JOB}/manifest.jsonl")
    assert result["rows"] == n, result
    return {"sidecars": n, "backend": "s3", "latency_ms": latency_ms, "other_job_sidecars": written - n,
            "threads": threads, **result, "manifest_mb": round(head["ContentLength"] / 2**20, 1)}  # fmt: skip


def measure_feeder(redis_url: str, keys: int) -> dict:
    """The feeder's rate, from ``benchmarks/feed_rate.py`` (the feeder's own benchmark)."""
    from benchmarks import feed_rate  # type: ignore[attr-defined]

    return feed_rate.measure(redis_url, keys)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sidecars", type=int, default=100_000, help="local finalize: this job's sidecars (0: skip)")
    p.add_argument("--s3-sidecars", type=int, default=None, help="finalize on moto (default min(N, 10000); 0: skip)")
    p.add_argument("--latency-ms", type=float, default=15.0, help="added to each S3 request (a TCP proxy)")
    p.add_argument("--threads", type=int, default=16, help="VEIL_FINALIZE_THREADS")
    p.add_argument("--feed-keys", type=int, default=0, help="feeder: keys to move (benchmarks/feed_rate.py)")
    p.add_argument("--e2e-keys", type=int, default=0, help="a whole job through real workers (benchmarks/e2e_job.py)")
    p.add_argument("--e2e-storage", choices=["local", "s3"], default="local", help="the e2e job's INPUT and OUTPUT")
    p.add_argument("--json", type=Path)
    p.add_argument("--workdir", type=Path, default=None, help="where the local OUTPUT goes (a temp folder)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child()
        return 0
    if args.json is None:
        p.error("--json FILE is required")
    s3_n = min(args.sidecars, 10_000) if args.s3_sidecars is None else args.s3_sidecars
    redis_port, moto_port = _free_port(), _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="veil-scale-", dir=args.workdir))
    procs = [
        subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        ),  # fmt: skip
    ]
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    procs.append(subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(moto_port)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL))  # fmt: skip
    report: dict = {"machine": {"cpus": os.cpu_count(), "load_before": os.getloadavg()}}
    try:
        _wait_port(redis_port)
        _wait_port(moto_port)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        if args.sidecars:
            report["finalize"] = measure_local(redis_url, args.sidecars, workdir, args.threads)
        if s3_n:
            report["finalize_s3"] = measure_s3(redis_url, f"http://127.0.0.1:{moto_port}", s3_n, args.latency_ms,
                                               args.threads)  # fmt: skip
            print(json.dumps(report["finalize_s3"]), file=sys.stderr)
        if args.feed_keys:
            report["feeder"] = measure_feeder(redis_url, args.feed_keys)
        if args.e2e_keys:
            from benchmarks import e2e_job  # type: ignore[attr-defined]

            report["e2e"] = e2e_job.run(args.e2e_keys, storage=args.e2e_storage)
        report["machine"]["load_after"] = os.getloadavg()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
