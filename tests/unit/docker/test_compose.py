"""docker-compose.yml and docker/prometheus.yml: every service, port and volume named consistently.

No Docker engine runs here, so these read the files: the compose file parses, its services are the
ones the docs promise, every named volume is declared (and every declared one used), every bind
mount exists in the repository, and Prometheus scrapes the ports the services really listen on.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def prometheus() -> dict:
    return yaml.safe_load((REPO / "docker" / "prometheus.yml").read_text())


def _volumes(service: dict) -> list[tuple[str, str]]:
    """(source, target) of each volume entry."""
    out = []
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        out.append((source, target))
    return out


def _setting(service: dict, name: str) -> str:
    """A SPIKESERVE_* setting of a service: settings go in ``environment``, never in the command."""
    assert not any(part.startswith("--") for part in service.get("command", [])), service["command"]
    return str(service["environment"][f"SPIKESERVE_{name}"])


def test_the_stack_has_every_service(compose):
    assert set(compose["services"]) == {"redis", "gateway", "worker", "worker-cpu", "prometheus", "grafana"}


def test_named_volumes_are_declared_and_used(compose):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in compose["services"].items():
        for source, _target in _volumes(service):
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name} mounts {source}, which is not in the repository"
            else:
                assert source in declared, f"{name} uses volume {source!r}, not declared at the top level"
                used.add(source)
    assert declared == used, f"declared but unused volumes: {declared - used}"


def test_builds_point_at_dockerfiles_that_exist(compose):
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is None:
            continue
        assert (REPO / build["context"] / build["dockerfile"]).is_file(), name


def test_published_ports_are_unique_and_match_what_the_services_listen_on(compose):
    published = {}
    for name, service in compose["services"].items():
        for mapping in service.get("ports", []):
            host, container = mapping.split(":")
            assert host == container, f"{name} publishes {container} as {host}: the docs say the same port"
            assert host not in published, f"{name} and {published.get(host)} both publish {host}"
            published[host] = name
    assert published == {"8000": "gateway", "9090": "prometheus", "3000": "grafana"}
    gateway = compose["services"]["gateway"]
    assert _setting(gateway, "PORT") == "8000"
    assert _setting(gateway, "HOST") == "0.0.0.0"


def test_gateway_and_workers_share_redis_and_the_registry(compose):
    services = compose["services"]
    redis_url = _setting(services["gateway"], "REDIS_URL")
    assert redis_url.startswith("redis://redis:")  # the compose service name
    assert services["gateway"]["command"] == ["serve"]
    for name in ("worker", "worker-cpu"):
        worker = services[name]
        assert _setting(worker, "REDIS_URL") == redis_url
        registry = _setting(worker, "REGISTRY")
        assert worker["volumes"] == [f"./zoo:{registry}:ro"]  # workers only read it
        assert "redis" in worker["depends_on"]
        assert worker["command"] == ["worker"]
    assert ("./zoo", _setting(services["gateway"], "REGISTRY")) in _volumes(services["gateway"])


def test_gpu_worker_reserves_a_gpu_and_the_cpu_profile_does_not(compose):
    gpu, cpu = compose["services"]["worker"], compose["services"]["worker-cpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert _setting(gpu, "DEVICE") == "cuda"
    assert gpu["build"]["dockerfile"] == "docker/worker.Dockerfile"
    assert gpu["profiles"] == ["gpu"]
    assert "deploy" not in cpu
    assert _setting(cpu, "DEVICE") == "cpu"
    assert cpu["build"]["dockerfile"] == "docker/worker-cpu.Dockerfile"
    assert cpu["profiles"] == ["cpu"]


def test_prometheus_scrapes_gateways_and_workers_where_they_listen(compose, prometheus):
    services = compose["services"]
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    gateway_sd = jobs["spikeserve-gateway"]["dns_sd_configs"][0]
    assert gateway_sd["names"] == ["gateway"]
    assert str(gateway_sd["port"]) == _setting(services["gateway"], "PORT")
    worker_sd = jobs["spikeserve-worker"]["dns_sd_configs"][0]
    assert set(worker_sd["names"]) == {"worker", "worker-cpu"}
    for name in worker_sd["names"]:
        assert str(worker_sd["port"]) == _setting(services[name], "METRICS_PORT")
        assert str(worker_sd["port"]) in services[name]["expose"]
    mounts = dict(_volumes(services["prometheus"]))
    assert mounts["./docker/prometheus.yml"] == "/etc/prometheus/prometheus.yml"


def test_grafana_is_provisioned_with_the_datasource_and_dashboard(compose):
    mounts = dict(_volumes(compose["services"]["grafana"]))
    assert mounts["./docker/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboards_dir = mounts["./docker/grafana/dashboards"]
    provider = yaml.safe_load((REPO / "docker/grafana/provisioning/dashboards/spikeserve.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == dashboards_dir
    datasource = yaml.safe_load((REPO / "docker/grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    assert source["url"] == "http://prometheus:9090"  # the compose service and its port
    home = compose["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_dir)
    assert (REPO / "docker/grafana/dashboards" / Path(home).name).is_file()
