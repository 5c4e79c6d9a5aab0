"""Monitoring: the Prometheus configs, the Grafana provisioning and dashboard, and the
compose override that runs them.

The dashboard's queries are checked against the metrics our services really register
(their real `RpcService` objects, no model loaded) and against Flower's own metric
objects, and their `job` filters against the jobs Prometheus defines, so a renamed metric
or job fails here rather than as an empty panel. The broker's metric names come from the
rabbitmq_prometheus plugin, which is not installed here: they are listed below.
"""

import json
import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from prometheus_client import CollectorRegistry

from rstar_rpc.settings import ServerSettings
from tools import find_tool, needs

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "docker-compose.yml"
MONITORING = REPO / "docker-compose.monitoring.yml"
PROMETHEUS = REPO / "deploy/prometheus/prometheus.yml"
LOCAL_PROMETHEUS = REPO / "deploy/prometheus/local.yml"
ALERTS = REPO / "deploy/prometheus/alerts.yml"
ALERT_TESTS = Path(__file__).parent / "alerts_test.yml"
GRAFANA = REPO / "deploy/grafana"
DASHBOARD = GRAFANA / "dashboards/rstar.json"
SERVICES = ("policy", "reward", "executor")
ENV = {"POSTGRES_PASSWORD": "pg", "RABBITMQ_PASSWORD": "mq", "GRAFANA_ADMIN_PASSWORD": "gf",
       "RSTAR_WEB_TOKEN": "test-web-token-0123456789"}
# rabbitmq_prometheus: aggregated metrics on /metrics, per-queue ones on /metrics/detailed.
RABBITMQ_METRICS = {"rabbitmq_connections", "rabbitmq_channels",
                    "rabbitmq_detailed_queue_messages_ready", "rabbitmq_detailed_queue_messages_unacked"}

needs_compose = needs("docker-compose")


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _queries() -> list[str]:
    return [t["expr"] for p in _dashboard()["panels"] for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers, groupings and ranges removed)."""
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\b(by|without)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    return set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(?!\s*\()", expr))


def job_filters(expr: str) -> set[str]:
    jobs = set()
    for op, value in re.findall(r'\bjob\s*(=~|=)\s*"([^"]*)"', expr):
        jobs.update(value.split("|") if op == "=~" else [value])
    return jobs


def _sample_names(registry: CollectorRegistry) -> set[str]:
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",)}
    return {family.name + suffix for family in registry.collect() for suffix in suffixes.get(family.type, ("",))}


def _service_metrics() -> set[str]:
    from rstar_executor.service import ExecutorService
    from rstar_policy.service import PolicyService
    from rstar_reward.ppm import ScoringStats
    from rstar_reward.service import RewardService

    reward = RewardService()
    # The PPM's own counters are exported only once a model is loaded: stand one in.
    reward._backend = SimpleNamespace(stats=ScoringStats(forwards=2, items=5, forward_s=0.5, batch_sizes={2: 1, 3: 1}))
    names = set()
    for service in (PolicyService(), reward, ExecutorService()):
        names |= _sample_names(service.metrics.registry)
    return names


def _flower_metrics() -> set[str]:
    import flower.options  # noqa: F401  (defines the runtime buckets the metrics read)
    from flower.events import get_prometheus_metrics
    from prometheus_client import REGISTRY

    get_prometheus_metrics()
    return {name for name in _sample_names(REGISTRY) if name.startswith("flower_")}


# -- the dashboard ------------------------------------------------------------------------

def test_metric_names_parses_promql():
    expr = ('histogram_quantile(0.95, sum by (le, job) (rate(grpc_server_handling_seconds_bucket'
            '{job=~"a|b"}[5m]))) / sum(up{job="x"})')
    assert metric_names(expr) == {"grpc_server_handling_seconds_bucket", "up"}
    assert job_filters(expr) == {"a", "b", "x"}


def test_dashboard_reads_only_metrics_that_exist():
    known = _service_metrics() | _flower_metrics() | RABBITMQ_METRICS | {"up"}
    used = set().union(*(metric_names(q) for q in _queries()))
    assert used - known == set()
    # Every service's own metrics appear on the dashboard.
    for name in ("rstar_policy_generated_tokens_total", "rstar_policy_completions_total",
                 "rstar_reward_request_items_sum", "rstar_reward_forward_batch_size_sum",
                 "rstar_executor_executions_total", "rstar_executor_execution_seconds_bucket",
                 "grpc_server_handled_total", "grpc_server_handling_seconds_bucket", "rstar_ready",
                 "rstar_in_flight_items", "flower_events_total", "flower_task_runtime_seconds_bucket"):
        assert name in used, name


def test_dashboard_filters_on_jobs_prometheus_defines():
    jobs = {job["job_name"] for job in _yaml(PROMETHEUS)["scrape_configs"]}
    used = set().union(*(job_filters(q) for q in _queries()))
    assert used and used <= jobs, used - jobs


def test_dashboard_uses_the_provisioned_data_source():
    source = _yaml(GRAFANA / "provisioning/datasources/prometheus.yml")["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    panels = [p for p in _dashboard()["panels"] if p["type"] != "row"]
    assert len(panels) >= 12
    for panel in panels:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"] and all(t["datasource"]["uid"] == source["uid"] for t in panel["targets"])


def test_dashboard_panels_do_not_overlap():
    taken = set()
    for panel in _dashboard()["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, panel["title"]
        taken |= cells
    ids = [p["id"] for p in _dashboard()["panels"]]
    assert len(ids) == len(set(ids))


# -- Prometheus -----------------------------------------------------------------------------

def test_prometheus_scrapes_every_replica_on_the_services_metrics_ports():
    jobs = {job["job_name"]: job for job in _yaml(PROMETHEUS)["scrape_configs"]}
    for service in SERVICES:
        (discovery,) = jobs[service]["dns_sd_configs"]
        assert discovery["names"] == [service] and discovery["type"] == "A"
        assert discovery["port"] == ServerSettings.from_env(service, {}).metrics_port, service
        # Nothing in the compose files moves a service off its default metrics port.
        environment = _yaml(MAIN)["services"][service].get("environment", {})
        assert f"RSTAR_{service.upper()}_METRICS_PORT" not in environment
    assert jobs["flower"]["static_configs"][0]["targets"] == ["flower:5555"]
    assert jobs["rabbitmq-queues"]["metrics_path"] == "/metrics/detailed"
    assert jobs["rabbitmq-queues"]["params"]["family"] == ["queue_coarse_metrics"]


def test_local_prometheus_reads_the_targets_rstar_up_writes(tmp_path):
    from rstar_cli.launcher import StackSpec, metrics_port, prometheus_targets

    (job,) = _yaml(LOCAL_PROMETHEUS)["scrape_configs"]
    (discovery,) = job["file_sd_configs"]
    # Relative to the config file: the default run directory of `rstar up`.
    assert (LOCAL_PROMETHEUS.parent / discovery["files"][0]).resolve() == REPO / "runs/local/prometheus-targets.json"
    assert job["relabel_configs"] == [{"source_labels": ["service"], "target_label": "job"}]

    groups = prometheus_targets(StackSpec(run_dir=tmp_path, executors=2, base_port=52000))
    by_service = {g["labels"]["service"]: g["targets"] for g in groups}
    assert by_service == {"executor": [f"127.0.0.1:{metrics_port(52002)}", f"127.0.0.1:{metrics_port(52012)}"],
                          "policy": [f"127.0.0.1:{metrics_port(52000)}"],
                          "reward": [f"127.0.0.1:{metrics_port(52001)}"]}
    without_reward = prometheus_targets(StackSpec(run_dir=tmp_path, with_reward=False))
    assert {g["labels"]["service"] for g in without_reward} == {"executor", "policy"}


@needs("promtool")
@pytest.mark.parametrize("config", [PROMETHEUS, LOCAL_PROMETHEUS], ids=lambda p: p.name)
def test_promtool_accepts_the_config(config):
    result = subprocess.run([find_tool("promtool"), "check", "config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs("promtool")
def test_alerts_fire_on_their_series_and_not_before():
    # Each alert of deploy/prometheus/alerts.yml against input series (tests/deploy/alerts_test.yml).
    result = subprocess.run([find_tool("promtool"), "test", "rules", str(ALERT_TESTS)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_and_both_configs_load_the_rules():
    alerts = {rule["alert"] for group in _yaml(ALERTS)["groups"] for rule in group["rules"]}
    tested = {case["alertname"] for test in _yaml(ALERT_TESTS)["tests"] for case in test["alert_rule_test"]}
    assert alerts == tested
    for config in (PROMETHEUS, LOCAL_PROMETHEUS):
        assert _yaml(config)["rule_files"] == [ALERTS.name], config.name
    volumes = _yaml(MONITORING)["services"]["prometheus"]["volumes"]
    assert f"./deploy/prometheus/{ALERTS.name}:/etc/prometheus/{ALERTS.name}:ro" in volumes


# -- the compose override ------------------------------------------------------------------

def test_monitoring_override_mounts_files_that_exist():
    services = _yaml(MONITORING)["services"]
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name}: {source}"
    provider = _yaml(GRAFANA / "provisioning/dashboards/rstar.yml")["providers"][0]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in services["grafana"]["volumes"]
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/" + DASHBOARD.name


def test_monitoring_override_keeps_the_executor_isolated():
    compose = _yaml(MONITORING)
    assert compose["networks"]["metrics"]["internal"] is True
    on_metrics = {name for name, s in compose["services"].items() if "metrics" in s.get("networks", [])}
    assert on_metrics == {"executor", "prometheus"}
    for name in ("prometheus", "grafana"):
        assert compose["services"][name]["healthcheck"]["test"]
        assert all(port.startswith("${") and "127.0.0.1" in port for port in compose["services"][name]["ports"])
    assert "${GRAFANA_ADMIN_PASSWORD?" in MONITORING.read_text()


def _compose(*args, env=None):
    environment = {k: v for k, v in os.environ.items() if k not in ENV}
    environment.update(ENV if env is None else env)
    return subprocess.run(["docker-compose", "-f", str(MAIN), "-f", str(MONITORING), *args],
                          capture_output=True, text=True, timeout=60, env=environment, cwd=REPO)


@needs_compose
def test_monitoring_override_is_valid_and_merges():
    result = _compose("config")
    assert result.returncode == 0, result.stderr
    merged = yaml.safe_load(result.stdout)
    assert set(merged["services"]["executor"]["networks"]) == {"sandbox", "metrics"}
    assert set(merged["services"]["worker"]["networks"]) == {"default", "sandbox"}
    assert {"prometheus", "grafana", "policy", "worker"} <= set(merged["services"])


@needs_compose
def test_monitoring_override_requires_a_grafana_password():
    result = _compose("config", "-q", env={k: v for k, v in ENV.items() if k != "GRAFANA_ADMIN_PASSWORD"})
    assert result.returncode != 0 and "set GRAFANA_ADMIN_PASSWORD" in result.stderr
