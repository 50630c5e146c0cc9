"""`veil submit` as an attacker tries it (issue 18): it refuses what `veil run` refuses (OUTPUT
inside INPUT; two inputs on one output, or an output on an input, wherever they are in the
listing: `a.gif` and `a.gif.png` 1,500 keys apart), a refused submit leaves no job behind, and
two submits of one `--name` started together make one job with the right total (the second is
refused while the first runs). Real `veil submit` processes and Redis; no workers."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading

import boto3
import redis

from orchestrator.submit import SubmitLock
from shared.jobs import JobStore, job_key
from tests.services import ROOT, moto_s3, redis_url, worker_env

DB = 14


def _env(**extra: str) -> dict[str, str]:
    return worker_env(broker_url=redis_url(DB), cpu_queue=f"cpu-{DB}", gpu_queue=f"gpu-{DB}", **extra)


def _veil(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=180)  # fmt: skip


def _refused(proc: subprocess.CompletedProcess, *words: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("veil: "), proc.stderr
    assert all(w in lines[0] for w in words), lines[0]


def _no_jobs(env) -> None:
    jobs = JobStore.from_url(env["VEIL_BROKER_URL"])
    assert jobs.list() == [] and jobs.redis.keys("veil:job*") == []
    listed = _veil(env, "jobs")
    assert listed.returncode == 0 and "submitting" not in listed.stdout, listed.stdout


def _lines(path, entries: list[str]) -> str:
    path.write_text("".join(e + "\n" for e in entries))
    return str(path)


def _fillers(root, n: int) -> list[str]:
    return [f"{root}/f/{i:05d}.jpg" for i in range(n)]


def test_refusals_leave_no_job(tmp_path):
    env = _env()
    data = tmp_path / "data"
    (data / "in").mkdir(parents=True)
    (data / "in" / "a.jpg").write_bytes(b"not decoded by submit")
    # OUTPUT inside INPUT, or the same folder (veil run's rule, its own message)
    _refused(_veil(env, "submit", str(data / "in"), "--out", str(data / "in" / "out"), "--name", "x"), "inside INPUT")
    _refused(_veil(env, "submit", str(data / "in"), "--out", str(data / "in"), "--name", "x"), "inside INPUT")
    _no_jobs(env)
    # two inputs on one output, 1,500 keys apart (two listing pages): a.gif -> a.gif.png
    both = _lines(tmp_path / "both.txt", [f"{data}/in/a.gif", *_fillers(f"{data}/in", 1500), f"{data}/in/a.gif.png"])
    _refused(_veil(env, "submit", both, "--out", str(tmp_path / "out"), "--name", "c"), "a.gif.png", "two or more")
    _no_jobs(env)
    # an output on an input, pages apart: in/x.jpg's output is OUT/in/x.jpg, listed as an input too
    onto = _lines(tmp_path / "onto.txt", [f"{data}/in/x.jpg", *_fillers(f"{data}/in", 1500), f"{data}/out/in/x.jpg"])
    _refused(_veil(env, "submit", onto, "--out", str(data / "out"), "--name", "o"), "overwrite", "out/in/x.jpg")
    _no_jobs(env)
    # nothing to submit
    _refused(_veil(env, "submit", _lines(tmp_path / "empty.txt", ["# nothing"]), "--out", str(tmp_path / "out")))
    _no_jobs(env)
    # the same input twice is not a collision: enqueued once, as veil run does
    twice = _lines(tmp_path / "twice.txt", [f"{data}/in/a.jpg", *_fillers(f"{data}/in", 1500), f"{data}/in/a.jpg"])
    ok = _veil(env, "submit", twice, "--out", str(tmp_path / "out"), "--name", "t")
    assert ok.returncode == 0 and "1 input(s) listed more than once" in ok.stderr, ok.stderr
    assert JobStore.from_url(env["VEIL_BROKER_URL"]).get(ok.stdout.strip()).total == 1501


def test_a_missing_bucket_is_refused_before_any_job():
    with moto_s3() as endpoint:
        env = _env(s3_endpoint_url=endpoint, s3_access_key_id="testing", s3_secret_access_key="testing")
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
        client.create_bucket(Bucket="here")
        client.put_object(Bucket="here", Key="in/a.jpg", Body=b"x")
        _refused(_veil(env, "submit", "s3://here/in/", "--out", "s3://gone/out/"), "OUTPUT", "no_such_bucket")
        _refused(_veil(env, "submit", "s3://gone/in/", "--out", "s3://here/out/"), "INPUT", "no_such_bucket")
        _refused(_veil(env, "submit", "s3://here/in/", "--out", "s3://here/in/out/"), "inside INPUT")
        _no_jobs(env)


def test_two_submits_of_one_name_make_one_job(tmp_path):
    """Started together on one listing (30,000 keys: long enough for them to overlap), they make
    one job whose total is the listing's, every key queued once; whichever comes second is refused
    while the first runs (exit 2), or, had the first ended already, finds the job complete."""
    env = _env(queue_window="1")
    total = 30_000
    listing = _lines(tmp_path / "keys.txt", [f"s3://b/in/{i % 7}/{i:05d}.jpg" for i in range(total)])
    args = [sys.executable, "-m", "orchestrator.cli", "submit", listing, "--out", str(tmp_path / "out"), "--name", "n"]
    procs = [subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    results = [(p.wait(180), *p.communicate()) for p in procs]
    codes = sorted(rc for rc, _, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    for rc, _, err in results:
        if rc == 2:
            _refused(subprocess.CompletedProcess(args, rc, "", err), "another veil submit --name 'n' is running")
    if codes == [0, 0]:
        assert any("nothing to add" in err for _, _, err in results), results
    jobs = JobStore.from_url(env["VEIL_BROKER_URL"])
    [job] = jobs.list()
    assert job.total == total and job.listed and job.state == "running", job
    r = redis.Redis.from_url(env["VEIL_BROKER_URL"])
    pending = [k.decode() for k in r.lrange(job_key(job.job_id, "pending"), 0, -1)]
    fed = [json.loads(base64.b64decode(json.loads(m)["body"]))[0][0]["input_uri"].split("/in/", 1)[1]
           for m in r.lrange(f"cpu-{DB}", 0, -1)]  # fmt: skip
    assert len(pending) + len(fed) == len(set(pending + fed)) == total  # every key queued once
    assert r.get("veil:submitting:n") is None  # the lock is released


def test_a_running_submit_refuses_a_second_and_a_dead_one_does_not(tmp_path):
    env = _env()
    listing = _lines(tmp_path / "keys.txt", [f"s3://b/in/{i:03d}.jpg" for i in range(12)])
    jobs = JobStore.from_url(env["VEIL_BROKER_URL"])
    held = SubmitLock(jobs.redis, "busy")  # what a running `veil submit --name busy` holds
    held.acquire()
    try:
        _refused(_veil(env, "submit", listing, "--out", str(tmp_path / "out"), "--name", "busy"), "is running")
        _no_jobs(env)
    finally:
        held._r.connection.disconnect()  # its holder gone (as a killed process's connection closes)
    ok = _veil(env, "submit", listing, "--out", str(tmp_path / "out"), "--name", "busy")
    assert ok.returncode == 0, ok.stderr
    assert jobs.get(ok.stdout.strip()).total == 12


def test_job_creation_takes_its_name_atomically():
    """Eight creators of one name at once (threads, real Redis): one job, one name."""
    from shared.messages import JobSpec

    jobs = JobStore.from_url(redis_url(DB))
    won: list[str] = []
    start = threading.Barrier(8)

    def create(i: int) -> None:
        spec = JobSpec(job_id=f"j{i}", name="same", input="s3://b/in/", source="s3://b/in/", output="s3://b/out/",
                       seed=0, overwrite=False, created=0.0)  # fmt: skip
        start.wait()
        if jobs.create(spec.job_id, name="same", input=spec.source, output=spec.output, spec=spec):
            won.append(spec.job_id)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and jobs.by_name("same") == won[0] and [j.job_id for j in jobs.list()] == won
    jobs.delete(won[0])  # a name whose job is gone is free again
    spec = JobSpec(job_id="k", name="same", input="s3://b/in/", source="s3://b/in/", output="s3://b/out/",
                   seed=0, overwrite=False, created=0.0)  # fmt: skip
    assert jobs.create("k", name="same", input="s3://b/in/", output="s3://b/out/", spec=spec)

