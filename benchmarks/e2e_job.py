"""One whole job through real worker processes, counted: the control plane's per-key costs.

    python benchmarks/e2e_job.py --keys 20000 --json out.json [--storage local|s3]

Starts its own redis-server and (``--storage s3``) moto_server on spare ports, writes the tiny
RANDOM models (their images are noise: this measures plumbing, never the method), makes KEYS
small inputs (real face photos from ``VEIL_FACES_DIR`` cut to 96 px, so MTCNN's real weights
still find the face), submits them as one job, runs one CPU worker (``--cpu-concurrency``
processes) and one GPU worker (64 px, 1 step), waits for the job's summary, and reports:

- exact counts: every key ended once (sidecars = done + no_face + failed = keys), summary.json
  and manifest.jsonl present and their counts equal;
- Redis commands per key (``INFO commandstats`` before and after, by command), and the share of
  them that is the idle workers' polling (measured over an idle interval before the job);
- S3 requests per key by method (``--storage s3``: moto_server's request log);
- the CPU seconds of each tier's processes (``/proc`` via psutil) per key, and how they split
  between the models' stages (decode, detect, attributes, generate, encode) and the control
  plane (Celery, kombu, Redis, JSON, storage calls): py-spy samples both tiers' processes while
  the job runs (on-CPU samples only), and a sample is the models' when a frame of its stack is in
  model code (``STAGE_CODE``). A share of samples, unlike stage wall times, does not grow with
  the machine's load.

``run(keys, ...)`` is what ``benchmarks/scale.py`` calls for its ``e2e`` figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import redis
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.services import free_port, wait_for  # noqa: E402  (the tests' service helpers)

PHOTOS = ["fr_biden.jpg", "id02_12.jpg", "id03_16.jpg", "id05_67.jpg", "id07_25.jpg"]
BUCKET = "veil-bench"


def _small_jpegs(faces_dir: Path, side: int = 96) -> list[bytes]:
    out = []
    for name in PHOTOS:
        img = Image.open(faces_dir / name).convert("RGB")
        s = min(img.size)
        left, top = (img.width - s) // 2, (img.height - s) // 2
        img = img.crop((left, top, left + s, top + s)).resize((side, side), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _redis_server(port: int, workdir: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for(lambda: _pings(port), 20, "redis-server")
    return proc


def _pings(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port).ping())
    except redis.RedisError:
        return False


def _moto(port: int, log: Path) -> subprocess.Popen:
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=open(log, "wb"))  # fmt: skip
    wait_for(lambda: _tcp_up(port), 30, "moto_server")
    return proc


def _tcp_up(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _commandstats(r: redis.Redis) -> Counter:
    stats = r.info("commandstats")
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})


def _s3_requests(log: Path) -> Counter:
    """moto_server (werkzeug) logs one line per request: ``"GET /bucket/key HTTP/1.1" 200``."""
    counts: Counter = Counter()
    for line in log.read_text(errors="replace").splitlines():
        m = re.search(r'"(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP', line)
        if m:
            method, path = m.groups()
            kind = "LIST" if method == "GET" and ("list-type" in path or path.rstrip("/").count("/") <= 1) else method
            counts[kind] += 1
    return counts


def _tree_cpu_s(proc: subprocess.Popen) -> float:
    """User + system seconds of a process and all its live children."""
    try:
        root = psutil.Process(proc.pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _stage_seconds(ports: list[int]) -> Counter:
    """``veil_stage_seconds_sum`` by stage, summed over the worker processes serving these ports
    (each tier's own Prometheus metrics: decode, detect, attributes, generate, encode, upload)."""
    import urllib.request

    total: Counter = Counter()
    for port in ports:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except OSError:
            continue
        for m in re.finditer(r'^veil_stage_seconds_sum\{stage="([^"]+)"\} (\S+)$', text, re.M):
            total[m.group(1)] += float(m.group(2))
    return total


#: frames whose file is one of these are the models' work (either tier); the rest is plumbing
STAGE_CODE = re.compile(
    r"workers/cpu/(detection|attributes|classical)\.py|models/farl\.py|workers/gpu/(generation|scene)\.py"
    r"|shared/imageio\.py|site-packages/(torch|facenet_pytorch|facer|deepface|onnxruntime|cv2|PIL|diffusers"
    r"|transformers|numpy|timm|tokenizers)/"
)


def _profile(pid: int, out: Path) -> subprocess.Popen | None:
    """py-spy sampling a worker and its pool children (on-CPU samples only) until SIGINT."""
    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if exe is None:
        return None
    cmd = [exe, "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--rate", "50",
           "--format", "raw", "--output", str(out)]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stage_share(raw: Path) -> dict[str, float] | None:
    """Of py-spy's on-CPU samples: how many, and the share inside model code."""
    if not raw.exists():
        return None
    total = model = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        if STAGE_CODE.search(stack):
            model += int(count)
    return {"samples": total, "model_share": round(model / total, 4) if total else 0.0}


def _env(**veil: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    env.update({f"VEIL_{k.upper()}": str(v) for k, v in veil.items()})
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    return env


def _veil(env: dict[str, str], *args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def _write_inputs(keys: int, jpegs: list[bytes], storage: str, inp: Path, client) -> None:  # noqa: ANN001
    def put(i: int) -> None:
        rel = f"{i // 1000:04d}/{i:07d}.jpg"
        data = jpegs[i % len(jpegs)]
        if storage == "local":
            path = inp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        else:
            client.put_object(Bucket=BUCKET, Key=f"in/{rel}", Body=data)

    with ThreadPoolExecutor(16 if storage == "s3" else 4) as pool:
        list(pool.map(put, range(keys)))


def run(keys: int, *, storage: str = "local", cpu_concurrency: int = 1, batch_size: int = 16,
        idle_s: float = 10.0, timeout_s: float = 7200, keep: Path | None = None) -> dict:  # fmt: skip
    faces_dir = Path(os.environ.get("VEIL_FACES_DIR", ROOT.parent / "shared" / "faces"))
    work = Path(tempfile.mkdtemp(prefix="veil-e2e-", dir=keep))
    procs: list[subprocess.Popen] = []
    try:
        # 1. Services: a private redis-server (and moto_server), tiny models
        rport = free_port()
        procs.append(_redis_server(rport, work))
        r = redis.Redis(port=rport, decode_responses=True)
        from models.tiny import write_tiny_models

        models = work / "models"
        write_tiny_models(models)
        settings: dict[str, object] = dict(
            models_dir=models, broker_url=f"redis://127.0.0.1:{rport}/0", image_size=64, steps=1,
            batch_size=batch_size, gpu_batch_wait_s=0.5, queue_window=max(1000, 4 * batch_size),
        )  # fmt: skip
        client = None
        if storage == "s3":
            import boto3

            mport, mlog = free_port(), work / "moto.log"
            procs.append(_moto(mport, mlog))
            endpoint = f"http://127.0.0.1:{mport}"
            client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                  aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
            client.create_bucket(Bucket=BUCKET)
            settings |= dict(s3_endpoint_url=endpoint, s3_access_key_id="testing", s3_secret_access_key="testing")
            inp, out = f"s3://{BUCKET}/in/", f"s3://{BUCKET}/out/"
        else:
            (work / "in").mkdir()
            inp, out = str(work / "in"), str(work / "out")
        env = _env(**settings)
        base_cpu, base_gpu = 20000 + os.getpid() % 20000, 45000 + os.getpid() % 10000
        cpu_ports = [base_cpu + i for i in range(cpu_concurrency + 1)]
        gpu_ports = [base_gpu]
        # 2. Inputs
        t0 = time.monotonic()
        _write_inputs(keys, _small_jpegs(faces_dir), storage, work / "in", client)
        inputs_s = time.monotonic() - t0
        s3_before = _s3_requests(mlog) if storage == "s3" else Counter()
        # 3. Workers, then an idle interval to measure their polling alone
        logs = {t: open(work / f"{t}.log", "ab") for t in ("cpu", "gpu")}
        cpu = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "worker", "cpu", "--concurrency",
                                str(cpu_concurrency)], env=env | {"VEIL_METRICS_PORT": str(base_cpu)}, cwd=ROOT, stdout=logs["cpu"],
                               stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        gpu = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "worker", "gpu"], env=env | {"VEIL_METRICS_PORT": str(base_gpu)}, cwd=ROOT,
                               stdout=logs["gpu"], stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        procs += [cpu, gpu]
        wait_for(lambda: "ready" in (work / "cpu.log").read_text(errors="replace"), 300, "CPU worker")
        wait_for(lambda: "ready" in (work / "gpu.log").read_text(errors="replace"), 300, "GPU worker")
        time.sleep(2)
        idle0, idle_t0 = _commandstats(r), time.monotonic()
        cpu_idle0, gpu_idle0 = _tree_cpu_s(cpu), _tree_cpu_s(gpu)
        time.sleep(idle_s)
        idle1, idle_dt = _commandstats(r), time.monotonic() - idle_t0
        idle_cpu = {"cpu": _tree_cpu_s(cpu) - cpu_idle0, "gpu": _tree_cpu_s(gpu) - gpu_idle0}
        idle_per_s = sum((idle1 - idle0).values()) / idle_dt
        # 4. The job: submit, then wait until its summary exists
        before, cpu0, gpu0 = _commandstats(r), _tree_cpu_s(cpu), _tree_cpu_s(gpu)
        stages0 = {"cpu": _stage_seconds(cpu_ports), "gpu": _stage_seconds(gpu_ports)}
        spies = {t: _profile(p.pid, work / f"{t}.pyspy") for t, p in (("cpu", cpu), ("gpu", gpu))}
        t0 = time.monotonic()
        sub = _veil(env, "submit", inp, "--out", out, "--name", "e2e")
        if sub.returncode != 0:
            raise RuntimeError(f"veil submit failed: {sub.stderr[-2000:]}")
        submit_s = time.monotonic() - t0
        job_id = sub.stdout.strip().splitlines()[-1]
        from shared.jobsummary import job_file
        from shared.settings import Settings
        from shared.storage import open_storage

        store = open_storage(Settings(**settings))  # type: ignore[arg-type]
        summary_uri = job_file(out, job_id, "summary.json")

        def summary_written() -> bool:
            return store.exists(summary_uri) and r.hget(f"veil:job:{job_id}", "state") in ("finished", "cancelled")

        wait_for(summary_written, timeout_s, "the job's summary", interval=1.0)
        job_s = time.monotonic() - t0
        after, cpu1, gpu1 = _commandstats(r), _tree_cpu_s(cpu), _tree_cpu_s(gpu)
        stages = {t: _stage_seconds(ports) - stages0[t] for t, ports in (("cpu", cpu_ports), ("gpu", gpu_ports))}
        for spy in spies.values():
            if spy is not None:
                spy.send_signal(2)  # SIGINT: py-spy writes its file and exits
                spy.wait(60)
        shares = {t: _stage_share(work / f"{t}.pyspy") for t in spies}
        s3_after = _s3_requests(mlog) if storage == "s3" else Counter()
        # 5. Check: every key once, summary and manifest agree
        summary = json.loads(store.read(summary_uri))
        manifest = store.read(job_file(out, job_id, "manifest.jsonl")).decode().splitlines()
        statuses = Counter(json.loads(line)["status"] for line in manifest)
        counts = summary["counts"]
        ended = counts.get("done", 0) + counts.get("no_face", 0) + counts.get("failed", 0)
        commands = after - before
        total_cmds = sum(commands.values())
        polling = idle_per_s * job_s
        s3 = s3_after - s3_before
        tier_cpu = {"cpu": cpu1 - cpu0, "gpu": gpu1 - gpu0}
        idle_rate = {t: idle_cpu[t] / idle_dt for t in idle_cpu}
        return {
            "keys": keys,
            "storage": storage,
            "machine": {"cores": os.cpu_count(), "loadavg_after": os.getloadavg()},
            "inputs_write_s": round(inputs_s, 1),
            "submit_s": round(submit_s, 2),
            "job_s": round(job_s, 1),
            "keys_per_s": round(keys / job_s, 2),
            "exact": {
                "summary_counts": counts,
                "manifest_rows": len(manifest),
                "manifest_statuses": dict(statuses),
                "every_key_once": ended == keys and len(manifest) == keys,
            },
            "redis": {
                "commands_per_key": round(total_cmds / keys, 2),
                "commands_per_key_without_idle_polling": round((total_cmds - polling) / keys, 2),
                "idle_polling_commands_per_s": round(idle_per_s, 1),
                "by_command_per_key": {k: round(v / keys, 3) for k, v in commands.most_common(20)},
            },
            "s3": {k: round(v / keys, 3) for k, v in s3.items()} if storage == "s3" else None,
            "cpu_ms_per_key": {t: round(1000 * tier_cpu[t] / keys, 2) for t in tier_cpu},
            "idle_cpu_ms_per_s": {t: round(1000 * idle_rate[t], 2) for t in idle_rate},
            "stage_ms_per_key": {t: {k: round(1000 * v / keys, 2) for k, v in stages[t].most_common()} for t in stages},
            "profile": shares,
            # the tier's CPU time per key times py-spy's share of samples outside model code:
            # what Celery, kombu, Redis, JSON and the storage calls cost per key
            "control_plane_cpu_ms_per_key": {
                t: round(1000 * tier_cpu[t] / keys * (1 - shares[t]["model_share"]), 2) for t in tier_cpu if shares[t]
            },
        }
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, 15) if p.pid == os.getpgid(p.pid) else p.terminate()
                except (ProcessLookupError, PermissionError):
                    pass
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=2000)
    ap.add_argument("--storage", choices=["local", "s3"], default="local")
    ap.add_argument(
        "--cpu-concurrency",
        type=int,
        default=1,
        help="CPU pool processes (1: each tier has a core on a 2-core VM, so stage wall time ~ CPU time)",
    )
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = run(args.keys, storage=args.storage, cpu_concurrency=args.cpu_concurrency, batch_size=args.batch_size)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if result["exact"]["every_key_once"] else 1


if __name__ == "__main__":
    sys.exit(main())
