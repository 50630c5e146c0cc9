"""workers/metrics.py and the Grafana dashboard built on it (issue 11): no services.

The dashboard's JSON is checked for the structure Grafana needs (unique panel ids, grid
positions, a Prometheus data source, targets with queries) and every metric a query names must
be one the code really exports; each checker is also run on a broken copy."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from workers import metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "veil.json"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
METRIC = re.compile(r"\bveil_[a-z0-9_]+")
#: what the issue asks the dashboard to show -> a metric that shows it
REQUIRED = {
    "throughput per tier": "veil_images_total",
    "latency": "veil_stage_seconds_bucket",
    "batch size": "veil_gpu_batch_size",
    "failures by reason": "veil_failures_total",
    "queue depth": "veil_queue_depth",
}


def dashboard_problems(dash: dict, exported: set[str], datasource_uid: str) -> list[str]:
    problems = []
    for key in ("uid", "title", "panels", "schemaVersion"):
        if key not in dash:
            problems.append(f"no {key}")
    panels = dash.get("panels") or []
    if not panels:
        problems.append("no panels")
    ids = [p.get("id") for p in panels]
    if len(set(ids)) != len(ids) or None in ids:
        problems.append(f"panel ids not unique: {ids}")
    queried = set()
    for p in panels:
        name = p.get("title") or f"panel {p.get('id')}"
        grid = p.get("gridPos") or {}
        if not all(isinstance(grid.get(k), int) for k in ("x", "y", "w", "h")) or grid.get("x", 0) + grid.get("w", 0) > 24:
            problems.append(f"{name}: bad gridPos {grid}")
        sources = [p.get("datasource") or {}] + [t.get("datasource") or {} for t in p.get("targets") or []]
        if any(s.get("uid") != datasource_uid for s in sources):
            problems.append(f"{name}: data source is not {datasource_uid}")
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"{name}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs):
            problems.append(f"{name}: refIds not unique")
        for t in targets:
            expr = t.get("expr") or ""
            names = set(METRIC.findall(expr))
            if not names:
                problems.append(f"{name}: target {t.get('refId')} queries no veil_ metric")
            for unknown in sorted(names - exported):
                problems.append(f"{name}: {unknown} is not exported by the code")
            queried |= names
    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list") or []}
    if datasource_uid.startswith("${"):
        var = variables.get(datasource_uid[2:-1]) or {}
        if (var.get("type"), var.get("query")) != ("datasource", "prometheus"):
            problems.append(f"{datasource_uid} is not a Prometheus data source variable")
    for what, metric in REQUIRED.items():
        if not any(q == metric or q.startswith(metric + "_") for q in queried):
            problems.append(f"nothing shows {what} ({metric})")
    return problems


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def datasource_uid() -> str:
    """Every panel and target reads the dashboard's ``datasource`` variable: a dashboard fixed to
    one data source uid broke when imported by hand into another Grafana."""
    return "${datasource}"


def test_provisioned_prometheus_is_the_default_the_variable_picks():
    assert yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["isDefault"] is True


def test_exported_names_follow_prometheus_conventions():
    names = metrics.exported_samples()
    assert {"veil_images_total", "veil_failures_total", "veil_retries_total", "veil_stage_seconds_bucket",
            "veil_gpu_batch_size_bucket", "veil_gpu_memory_bytes", "veil_gpu_memory_peak_bytes",
            "veil_queue_depth"} <= names
    assert all(re.fullmatch(r"veil_[a-z0-9_]+", n) for n in names)


def test_dashboard_structure_and_metrics(dashboard, datasource_uid):
    assert dashboard_problems(dashboard, metrics.exported_samples(), datasource_uid) == []


def test_dashboard_checker_rejects_broken_copies(dashboard, datasource_uid):
    exported = metrics.exported_samples()
    typo = copy.deepcopy(dashboard)
    typo["panels"][0]["targets"][0]["expr"] = "rate(veil_image_total[5m])"
    assert any("veil_image_total is not exported" in p for p in dashboard_problems(typo, exported, datasource_uid))
    no_depth = copy.deepcopy(dashboard)
    no_depth["panels"] = [p for p in no_depth["panels"] if "veil_queue_depth" not in json.dumps(p)]
    assert "nothing shows queue depth (veil_queue_depth)" in dashboard_problems(no_depth, exported, datasource_uid)
    dup = copy.deepcopy(dashboard)
    dup["panels"][1]["id"] = dup["panels"][0]["id"]
    assert any("not unique" in p for p in dashboard_problems(dup, exported, datasource_uid))
    assert dashboard_problems(dashboard, exported, "another-uid") != []
    fixed = copy.deepcopy(dashboard)
    fixed["panels"][2]["targets"][0]["datasource"]["uid"] = "veil-prometheus"
    assert any("data source is not" in p for p in dashboard_problems(fixed, exported, datasource_uid))
    no_var = copy.deepcopy(dashboard)
    no_var["templating"]["list"] = []
    assert "${datasource} is not a Prometheus data source variable" in dashboard_problems(no_var, exported,
                                                                                          datasource_uid)


def prometheus_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's histogram_quantile on cumulative (upper bound, count) buckets: linear
    interpolation inside the bucket that holds the rank (promql/quantile.go)."""
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    raise AssertionError("unreachable")


def test_batch_size_buckets_read_exact_sizes():
    def buckets() -> list[tuple[float, float]]:
        return [(float(s.labels["le"]), s.value) for f in metrics.REGISTRY.collect()
                if f.name == "veil_gpu_batch_size" for s in f.samples if s.name.endswith("_bucket")]

    metrics.set_max_batch(8)
    for _ in range(10):
        metrics.gpu_batch(8)
    assert [b for b, _ in buckets()][-2:] == [8.5, float("inf")]
    assert prometheus_quantile(0.5, buckets()) == 8.0  # every batch was 8: (4, 8] buckets read 6
    metrics.gpu_batch(3)
    assert prometheus_quantile(0.01, buckets()) == pytest.approx(3.0, abs=0.5)


def test_gpu_label_is_the_real_device_index():
    assert metrics.real_device_index(0, "3") == "3"
    assert metrics.real_device_index(1, "2,5") == "5"
    assert metrics.real_device_index(0, "") == "0"


def test_prometheus_scrapes_workers_and_exporter():
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == {"veil-cpu", "veil-gpu", "veil-exporter"}
    cpu_ports = {c["port"] for c in jobs["veil-cpu"]["dns_sd_configs"]}
    assert cpu_ports == {9100, 9101}  # compose's cpu-worker runs --concurrency 2: one port per child
    assert jobs["veil-exporter"]["static_configs"][0]["targets"] == ["exporter:9100"]


def test_helpers_never_raise_and_bound_labels():
    before = metrics.FAILURES.labels("gpu", "storage")._value.get()
    metrics.failure("gpu", "storage: S3 answered 503 for s3://bucket/some/key.jpg")
    assert metrics.FAILURES.labels("gpu", "storage")._value.get() == before + 1  # the code, not the message
    metrics.stage_times({"detect": "not a number", "made_up_stage": 1.0})  # swallowed, logged at debug
    metrics.image("gpu", None)  # type: ignore[arg-type]  # a bad label: swallowed
    metrics.gpu_batch("x")  # type: ignore[arg-type]
    assert metrics.serve(0) is None  # 0 = off


def test_pool_children_get_consecutive_ports():
    assert metrics.pool_child_port(0) == 0
    assert metrics.pool_child_port(9100) == 9100  # this (main) process has index 0 or none


def test_known_series_exist_at_zero_before_any_event():
    metrics.create_known_series("gpu")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in metrics.REGISTRY.collect() for s in f.samples}
    from shared.errors import StorageError

    assert samples[("veil_failures_total", (("reason", "disk_full"), ("tier", "gpu")))] == 0
    assert samples[("veil_retries_total", (("reason", StorageError.reason),))] == 0
    assert samples[("veil_images_total", (("status", "failed"), ("tier", "gpu")))] == 0
    assert {"bad_message", "bad_envelope", "out_of_memory"} <= set(metrics.known_reasons())
