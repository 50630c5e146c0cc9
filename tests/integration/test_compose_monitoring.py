"""docker-compose.yml's monitoring services (issue 11): `exporter`, `prometheus`, `grafana`.
The whole file is validated against the Compose schema in test_compose.py; here: what they run
and mount exists, and the ports Prometheus scrapes are the ones the workers serve."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.integration.test_compose import cli_problems, command_argv, environment, literal_secrets

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def mounted(service: dict) -> dict[str, str]:
    """host path -> container path of a service's bind mounts (./...)."""
    out = {}
    for volume in service.get("volumes", []):
        host, container = str(volume).split(":")[:2]
        if host.startswith("./"):
            out[host] = container
    return out


def test_exporter_runs_veil_exporter():
    assert cli_problems(command_argv(SERVICES["exporter"])) == []
    assert command_argv(SERVICES["exporter"]) == ["veil", "exporter"]
    assert environment(SERVICES["exporter"])["VEIL_METRICS_PORT"] == "9100"


def test_workers_serve_the_ports_prometheus_scrapes():
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    base = int(environment(SERVICES["cpu-worker"])["VEIL_METRICS_PORT"])
    argv = command_argv(SERVICES["cpu-worker"])
    concurrency = int(argv[argv.index("--concurrency") + 1])
    assert {c["port"] for c in jobs["veil-cpu"]["dns_sd_configs"]} == {base + n for n in range(concurrency)}
    assert {c["names"][0] for c in jobs["veil-cpu"]["dns_sd_configs"]} == {"cpu-worker"}
    assert [c["port"] for c in jobs["veil-gpu"]["dns_sd_configs"]] == [
        int(environment(SERVICES["gpu-worker"])["VEIL_METRICS_PORT"])]


def test_prometheus_and_grafana_mount_files_that_exist():
    prom = mounted(SERVICES["prometheus"])
    assert prom == {"./deploy/prometheus/prometheus.yml": "/etc/prometheus/prometheus.yml"}
    graf = mounted(SERVICES["grafana"])
    assert graf["./deploy/grafana/veil.json"] == environment(SERVICES["grafana"])[
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/veil.yml").read_text())
    assert graf["./deploy/grafana/veil.json"].startswith(provider["providers"][0]["options"]["path"] + "/")
    for host in [*prom, *graf]:
        assert (ROOT / host).exists(), host
    assert literal_secrets(COMPOSE) == []  # Grafana's admin password comes by ${...} too
    assert environment(SERVICES["grafana"])["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
