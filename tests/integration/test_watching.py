"""Watching both tiers (issue 11), with real processes: Flower, a CPU worker, a GPU worker (on
the CPU, tiny random models: images are noise) and `veil exporter`, on one Redis database.

- the GPU worker stays Online in Flower while a long batch runs, and every generated key shows
  as a `veil.generate` task with its state and runtime;
- Flower's /api/queues/length lists both queues, with the GPU queue's depth;
- each worker process serves Prometheus metrics on its own port, and the exporter the depths;
- headless Chromium (Debian's chromium + chromium-driver, through selenium) renders Flower's
  workers page with both workers Online during a batch, and the Broker tab with both queues.
  Screenshots are kept under test-artifacts/ (ignored by git).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from shared.jobs import JobStore
from tests.badinputs import write_bad_inputs
from tests.services import ROOT, free_port, redis_url, start_worker, stop, wait_for, worker_env

pytestmark = pytest.mark.slow

AUTH = ("veil", "s3cret-watch")
ARTIFACTS = ROOT / "test-artifacts"
BATCH = 2
#: diffusion steps of the tiny model that make one batch of BATCH last several heartbeat
#: intervals (2 s): about 0.2 s a step for 2 images at 64 px on one core of a loaded 2-core VM.
#: The tests wait for events, never for a duration.
LONG_STEPS = 60
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


class Cluster:
    def __init__(self, tmp: Path, tiny_models: Path):
        self.tmp = tmp
        self.broker = redis_url(6)
        self.flower_port, self.cpu_metrics, self.gpu_metrics, self.exporter_port = (free_port() for _ in range(4))
        base = dict(models_dir=tiny_models, broker_url=self.broker, batch_size=BATCH, gpu_batch_wait_s=1.0,
                    steps=LONG_STEPS, image_size=64, flower_password=AUTH[1], flower_port=self.flower_port)
        # one torch thread per process: on 2 shared cores two spinning intra-op threads made the
        # tiny model ~25x slower (measured: a batch of 2 x 40 steps took minutes instead of ~9 s)
        self.env = worker_env(**base) | {"OMP_NUM_THREADS": "1"}
        self.procs: list[subprocess.Popen] = []
        self.flower_url = f"http://127.0.0.1:{self.flower_port}"

    def start(self) -> None:
        self.procs.append(self._veil("flower", log="flower.log"))
        self.procs.append(start_worker("cpu", self.env | {"VEIL_METRICS_PORT": str(self.cpu_metrics)},
                                       self.tmp / "cpu.log", "--concurrency", "1"))
        self.procs.append(start_worker("gpu", self.env | {"VEIL_METRICS_PORT": str(self.gpu_metrics)},
                                       self.tmp / "gpu.log"))
        self.procs.append(self._veil("exporter", "--port", str(self.exporter_port), log="exporter.log"))
        wait_for(lambda: self.workers_alive() == {"cpu": True, "gpu": True}, 240, "both workers online in Flower",
                 interval=1.0)

    def _veil(self, *args: str, log: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], env=self.env, cwd=ROOT,
                                stdout=open(self.tmp / log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)

    def api(self, path: str, **params):
        r = requests.get(self.flower_url + path, auth=AUTH, params=params, timeout=10)
        r.raise_for_status()
        return r.json()

    def workers_alive(self) -> dict[str, bool] | None:
        """{"cpu": alive, "gpu": alive} from Flower's /api/workers?status=true."""
        try:
            status = self.api("/api/workers", status="true")
        except requests.RequestException:
            return None
        tiers = {"cpu": [v for k, v in status.items() if k.startswith("cpu@")],
                 "gpu": [v for k, v in status.items() if k.startswith("gpu-")]}
        return {tier: any(values) for tier, values in tiers.items()}

    def send_prompts(self, n: int, out: Path, job_id: str) -> list[Path]:
        from shared.settings import Settings
        from workers.celery_app import GPU_TASK, configure

        app = configure(Settings.from_env({}, broker_url=self.broker))
        jobs = JobStore.from_url(self.broker)
        jobs.create(job_id, name="watch", input="in", output=str(out))
        jobs.add_total(job_id, n)
        for i in range(n):
            app.send_task(GPU_TASK, args=[prompt(i, out, job_id)], queue="veil.gpu")
        return [out / f"{i}.png.json" for i in range(n)]

    def gpu_started_batches(self) -> int:
        return len(re.findall(r"batch of \d+ requests", (self.tmp / "gpu.log").read_text(errors="replace")))


def prompt(i: int, out: Path, job_id: str) -> dict:
    analysis = dict(face_box=[0.0, 0.0, 10.0, 10.0, 0.9], celeba_scores={"Male": 0.9}, age=30, ethnicity="white",
                    deepface_gender="Man")
    return dict(job_id=job_id, input_uri=f"/in/{i}.png", output_uri=str(out / f"{i}.png"), seed=i,
                prompt="closeup portrait photo of a man", negative_prompt="blurry", analysis=analysis,
                model_sha256={})


def scrape(port: int) -> dict[str, float]:
    """One Prometheus text exposition as {"name{labels}": value} (labels sorted as written)."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


@pytest.fixture(scope="module")
def cluster(tiny_models, tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("watch"), tiny_models)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def watch_during(cluster: Cluster, done, what: str, timeout: float = 600) -> list[dict]:
    """Polls Flower and the exporter every 0.5 s until ``done()``; returns the polls."""
    polls = []
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        poll = {"t": time.monotonic(), "alive": cluster.workers_alive(), "batches": cluster.gpu_started_batches()}
        try:
            poll["queues"] = {q["name"]: q["messages"] for q in cluster.api("/api/queues/length")["active_queues"]}
        except requests.RequestException:
            poll["queues"] = None
        poll["depth"] = scrape(cluster.exporter_port).get('veil_queue_depth{queue="veil.gpu"}')
        polls.append(poll)
        time.sleep(0.5)
    return polls


def test_gpu_worker_online_and_each_key_a_task_during_long_batches(cluster, tmp_path):
    n = 2 * BATCH + 1  # more than the two batches a GPU worker reserves: the rest waits in Redis
    sidecars = cluster.send_prompts(n, tmp_path / "out", "watch-1")
    polls = watch_during(cluster, lambda: all(p.exists() for p in sidecars), f"{n} generated keys")
    during = [p for p in polls if p["batches"] > 0]  # from the first batch's start to the last key
    gpu_online = [p["alive"] and p["alive"]["gpu"] for p in during]
    print(f"\nGPU worker online in {sum(gpu_online)} of {len(during)} Flower polls over "
          f"{during[-1]['t'] - during[0]['t']:.1f} s of batches" if during else "\nno poll during a batch")
    assert len(during) >= 4, "the batches were too short to watch"
    assert all(gpu_online), [p["alive"] for p in during]
    assert all(p["alive"]["cpu"] for p in during)
    # Broker: both queues listed in every answer, the GPU queue with its waiting messages
    assert all(p["queues"] is not None and {"veil.cpu", "veil.gpu"} <= set(p["queues"]) for p in polls)
    assert max(p["queues"]["veil.gpu"] for p in polls) > 0
    assert max(p["depth"] for p in polls) > 0  # the exporter saw them too
    assert all(json.loads(p.read_text())["status"] == "done" for p in sidecars)

    # Each key a veil.generate task in Flower, with its state and runtime
    def tasks_listed():
        tasks = cluster.api("/api/tasks", taskname="veil.generate")
        mine = [t for t in tasks.values() if t.get("state") == "SUCCESS" and "watch-1" in str(t.get("args"))]
        return mine if len(mine) == n else None

    tasks = wait_for(tasks_listed, 30, f"{n} veil.generate tasks in Flower", interval=1.0)
    assert all(t["runtime"] > 0 and t["received"] and t["started"] and t["worker"].startswith("gpu-") for t in tasks)
    assert all(t["received"] <= t["started"] for t in tasks), [(t["received"], t["started"]) for t in tasks]
    flower_metrics = requests.get(cluster.flower_url + "/metrics", auth=AUTH, timeout=10).text
    assert any(line.startswith("flower_events_total{") and 'task="veil.generate"' in line
               and 'type="task-succeeded"' in line for line in flower_metrics.splitlines())

    # The GPU worker's own metrics
    gpu = scrape(cluster.gpu_metrics)
    assert gpu['veil_images_total{status="done",tier="gpu"}'] == n
    assert gpu["veil_gpu_batch_size_sum"] == n and gpu["veil_gpu_batch_size_count"] >= 3
    for stage in ("generate", "encode", "upload"):
        assert gpu[f'veil_stage_seconds_count{{stage="{stage}"}}'] == n, stage
    assert scrape(cluster.exporter_port)['veil_queue_depth{queue="veil.gpu"}'] == 0


def test_cpu_worker_metrics_count_each_outcome(cluster, faces_dir, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(faces_dir / "fr_biden.jpg", inputs / "face.jpg")
    write_bad_inputs(faces_dir, tmp_path / "bad")
    for name in ("no_face.jpg", "text_renamed.jpg"):
        shutil.copy(tmp_path / "bad" / name, inputs / name)
    before = scrape(cluster.cpu_metrics)
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "submit", str(inputs), "--out",
                           str(tmp_path / "out")], env=cluster.env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().splitlines()[-1]
    jobs = JobStore.from_url(cluster.broker)
    wait_for(lambda: (j := jobs.get(job_id)) and j.finished >= 3, 300, "the job", interval=1.0)
    after = scrape(cluster.cpu_metrics)

    def added(sample: str) -> float:
        return after.get(sample, 0.0) - before.get(sample, 0.0)

    assert added('veil_images_total{status="prompted",tier="cpu"}') == 1
    assert added('veil_images_total{status="no_face",tier="cpu"}') == 1
    assert added('veil_images_total{status="failed",tier="cpu"}') == 1
    assert added('veil_failures_total{reason="undecodable",tier="cpu"}') == 1
    assert added('veil_stage_seconds_count{stage="detect"}') == 1 + 1  # the face and the no-face photo
    assert added('veil_stage_seconds_count{stage="attributes"}') == 1


# -- a real browser --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMEDRIVER).exists():
        pytest.fail("chromedriver not found: apt-get install -y chromium chromium-driver (scripts/install.sh)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def authorize(driver) -> None:
    """Basic auth on every request of the page (its own XHRs too), through DevTools."""
    import base64

    token = base64.b64encode(":".join(AUTH).encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})


def shot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def table_rows(driver, table_id: str) -> list[list[str]]:
    """The cells' text of a table's body rows, read in one script run: the page's DataTables
    redraws the table every few seconds, so element handles would go stale between reads."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map("
        "r => Array.from(r.cells).map(c => c.innerText.trim()));", f"#{table_id} tbody tr")


def rendered_workers(driver) -> dict[str, str]:
    """{worker name: status badge text} from the workers table as the page's script rendered it."""
    return {cells[0]: cells[1] for cells in table_rows(driver, "workers-table") if len(cells) >= 2}


def test_browser_workers_page_shows_both_online_during_a_batch(cluster, browser, tmp_path):
    sidecars = cluster.send_prompts(2 * BATCH, tmp_path / "out", "watch-browser")
    started = cluster.gpu_started_batches()
    wait_for(lambda: cluster.gpu_started_batches() > started, 120, "a GPU batch to start", interval=0.2)
    authorize(browser)
    browser.get(cluster.flower_url + "/workers")

    def both_online():
        rows = rendered_workers(browser)
        tiers = {("gpu" if n.startswith("gpu-") else "cpu" if n.startswith("cpu@") else n): s for n, s in rows.items()}
        return rows if tiers.get("gpu") == "Online" and tiers.get("cpu") == "Online" else None

    rows = wait_for(both_online, 30, "both workers Online on Flower's workers page", interval=0.5)
    in_batch = not all(p.exists() for p in sidecars)
    path = shot(browser, "flower-workers-during-batch")
    print(f"\nrendered: {rows}; batch still running: {in_batch}; screenshot {path}")
    assert in_batch, "the batch ended before the page rendered: make LONG_STEPS larger"
    # and it stays Online through the batch: the page's own refreshes (every few seconds)
    while not all(p.exists() for p in sidecars):
        assert both_online(), rendered_workers(browser)
        time.sleep(1.0)


def test_browser_broker_tab_lists_both_queues(cluster, browser):
    authorize(browser)
    browser.get(cluster.flower_url + "/broker")

    def queues():
        names = [cells[0] for cells in table_rows(browser, "queue-table") if cells]
        return names if {"veil.cpu", "veil.gpu"} <= set(names) else None

    names = wait_for(queues, 30, "both queues on Flower's Broker tab", interval=0.5)
    shot(browser, "flower-broker")
    assert sorted(names) == ["veil.cpu", "veil.gpu"]


# -- a real Prometheus ------------------------------------------------------------------------------


class Prometheus:
    """Debian's prometheus, scraping one target every second into a private TSDB."""

    def __init__(self, tmp: Path, target_port: int):
        self.port = free_port()
        config = tmp / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"scrape_configs: [{{job_name: veil, static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]}}]\n"
        )
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        if not Path(binary).exists():
            pytest.fail("prometheus not found: apt-get install -y prometheus (scripts/install.sh)")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=open(tmp / "prometheus.log", "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def query(self, expr: str) -> float | None:
        try:
            r = requests.get(f"http://127.0.0.1:{self.port}/api/v1/query", params={"query": expr}, timeout=5)
            result = r.json()["data"]["result"]
        except (requests.RequestException, KeyError, ValueError):
            return None
        return float(result[0]["value"][1]) if result else None


def test_prometheus_increase_counts_the_first_failures(cluster, tmp_path):
    """A reason no other test causes: its series exists at 0 from start-up, so increase() over a
    window sees both failures (a series born at its first event, at 1, showed 0 on the panel)."""
    from PIL import Image

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("big_a.png", "big_b.png"):  # 144 MP: over the pixel cap, refused as too_large
        Image.new("1", (12000, 12000)).save(inputs / name)
    series = 'veil_failures_total{tier="cpu",reason="too_large"}'
    prom = Prometheus(tmp_path, cluster.cpu_metrics)
    try:
        # 1. Prometheus has scraped the series at 0 a few times before the failures happen
        wait_for(
            lambda: (prom.query(f"count_over_time({series}[1m])") or 0) >= 3, 120, "three scrapes at 0", interval=0.5
        )
        assert prom.query(series) == 0
        # 2. Two keys fail
        proc = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "submit", str(inputs), "--out", str(tmp_path / "out")],
            env=cluster.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        wait_for(lambda: prom.query(series) == 2, 300, "Prometheus to scrape both failures", interval=0.5)
        # 3. What the dashboard's failures panel computes
        increase = prom.query(f"sum(increase({series}[5m]))")
        assert increase is not None and 1.5 < increase < 3, increase
    finally:
        stop(prom.proc)


def test_celery_cli_finds_the_workers_with_only_veil_settings(cluster):
    """`celery -A workers.celery_app inspect ping` with nothing but VEIL_* set: it reads
    VEIL_BROKER_URL (it used to fall back to amqp://localhost:5672 and find no node)."""
    env = {k: v for k, v in cluster.env.items() if not k.startswith(("CELERY_", "BROKER"))}
    celery = [sys.executable, "-m", "celery", "-A", "workers.celery_app"]
    proc = subprocess.run([*celery, "inspect", "ping", "-t", "10"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"cpu@\S+: OK", proc.stdout), proc.stdout


def test_browser_tasks_page_shows_a_failed_key_as_failed(cluster, browser, faces_dir, tmp_path):
    """A key the CPU tier records failed is a FAILURE task in Flower, with its reason (it used to
    be a SUCCESS whose result was 'failed'; Flower's Failed counter stayed 0)."""
    inputs = tmp_path / "in"
    write_bad_inputs(faces_dir, tmp_path / "bad")
    inputs.mkdir()
    shutil.copy(tmp_path / "bad" / "text_renamed.jpg", inputs / "not_an_image.jpg")
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "submit", str(inputs), "--out",
                           str(tmp_path / "out")], env=cluster.env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr

    def failed_in_api():
        tasks = cluster.api("/api/tasks", taskname="veil.analyze", state="FAILURE")
        return [t for t in tasks.values() if "not_an_image.jpg" in str(t.get("exception"))] or None

    task = wait_for(failed_in_api, 120, "the failed key as a FAILURE task in Flower's API", interval=1.0)[0]
    assert "undecodable" in task["exception"], task
    authorize(browser)
    browser.get(cluster.flower_url + "/tasks")

    def failed_row():
        rows = table_rows(browser, "tasks-table")
        return [r for r in rows if any("FAILURE" in c for c in r) and any(task["uuid"] in c for c in r)] or None

    rows = wait_for(failed_row, 30, "the failed task's row on Flower's Tasks page", interval=0.5)
    path = shot(browser, "flower-tasks-failed-key")
    print(f"\nrendered: {rows[0]}; screenshot {path}")


def test_celery_inspect_answers_for_the_gpu_worker_during_a_batch(cluster, tmp_path):
    """The batch blocks the GPU worker's event loop: `inspect ping/active` said "1 node online"
    mid-batch, and `inspect stats` counted nothing. The beacon's thread answers them now. Its
    `active` lists the batch's requests, which only a mid-batch answer can (idle, the worker
    answers for itself, and celery-batches' requests are not in Celery's active set). Celery's
    own client (what the CLI calls), sent the moment the batch starts."""
    from concurrent.futures import ThreadPoolExecutor

    from shared.settings import Settings
    from workers.celery_app import configure

    app = configure(Settings.from_env({}, broker_url=cluster.broker))
    sidecars = cluster.send_prompts(2 * BATCH, tmp_path / "out", "watch-inspect")  # two batches in a row
    started = cluster.gpu_started_batches()
    wait_for(lambda: cluster.gpu_started_batches() > started, 120, "a GPU batch to start", interval=0.1)
    # every reply, not Celery's merged dict: the worker answers for itself too once a batch ends
    # (an empty `active`), and the merge keeps whichever came last
    with ThreadPoolExecutor(2) as pool:  # both at once, within the batch
        ping = pool.submit(lambda: app.control.broadcast("ping", reply=True, timeout=2.0))
        active = pool.submit(lambda: app.control.broadcast("active", reply=True, timeout=2.0))
        pongs, running = ping.result(), active.result()
    gpu = [node for reply in running for node in reply if node.startswith("gpu-")]
    listed = [r[gpu[0]] for r in running if gpu and gpu[0] in r and r[gpu[0]]]
    assert listed and [t["name"] for t in listed[0]] == ["veil.generate"] * BATCH, running
    assert {gpu[0]: {"ok": "pong"}} in pongs, pongs
    # and Celery's CLI, once the batch is over: the requests are counted
    wait_for(lambda: all(p.exists() for p in sidecars), 300, "the batch", interval=0.5)
    proc = subprocess.run([sys.executable, "-m", "celery", "-A", "workers.celery_app", "inspect", "stats", "-t", "5",
                           "--json"], env=cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats[gpu[0]]["total"].get("veil.generate", 0) >= BATCH, stats[gpu[0]]["total"]
