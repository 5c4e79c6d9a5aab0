"""The Kubernetes manifests in deploy/k8s: they parse, the kustomization lists them, and
the services are wired and probed as DESIGN.md §2 asks (headless gRPC services, gRPC
readiness probes, a GPU for the policy, a hardened executor). `kubectl kustomize` runs
when kubectl is installed (it needs no cluster)."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
GRPC_SERVICES = {"policy": 50051, "reward": 50052, "executor": 50053}
EXECUTOR_CAPS = {"SETUID", "SETGID", "CHOWN", "KILL", "DAC_OVERRIDE", "SYS_ADMIN"}


def _docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _objects() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in _docs(path)]


def _find(kind: str, name: str) -> dict:
    matches = [o for o in _objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def _containers(workload: dict) -> list[dict]:
    return workload["spec"]["template"]["spec"]["containers"]


def test_every_manifest_parses_into_named_objects():
    files = sorted(K8S.glob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        docs = _docs(path)
        assert docs, f"{path.name} is empty"
        for doc in docs:
            assert doc.get("apiVersion") and doc.get("kind"), path.name
            if doc["kind"] != "Kustomization":
                assert doc["metadata"]["name"], path.name


def test_kustomization_lists_every_manifest_but_the_secret_template():
    kustomization = _docs(K8S / "kustomization.yaml")[0]
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - {"secret.example.yaml"}
    assert kustomization["namespace"] == "rstar"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds():
    result = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc}
    assert {"Namespace", "ConfigMap", "Deployment", "StatefulSet", "Service", "Job",
            "PersistentVolumeClaim", "HorizontalPodAutoscaler", "NetworkPolicy"} <= kinds


def test_every_deployment_has_readiness_probes():
    deployments = [o for o in _objects() if o["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} >= {"policy", "reward", "executor", "worker"}
    for deployment in deployments:
        for container in _containers(deployment):
            assert container.get("readinessProbe"), f"{deployment['metadata']['name']}/{container['name']}"


@pytest.mark.parametrize("name", sorted(GRPC_SERVICES))
def test_grpc_services_are_headless_and_probed_over_grpc_health(name):
    port = GRPC_SERVICES[name]
    service = _find("Service", name)
    assert service["spec"]["clusterIP"] == "None"  # DNS returns every pod: client-side round robin
    assert any(p["port"] == port for p in service["spec"]["ports"])
    (container,) = _containers(_find("Deployment", name))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == port, probe
    assert any(p["containerPort"] == port for p in container["ports"])


@pytest.mark.parametrize("name", sorted(GRPC_SERVICES))
def test_grpc_services_announce_their_metrics_port_to_prometheus(name):
    deployment = _find("Deployment", name)
    (container,) = _containers(deployment)
    (metrics,) = [p["containerPort"] for p in container["ports"] if p["name"] == "metrics"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(metrics),
                           "prometheus.io/path": "/metrics"}


def test_config_points_clients_at_the_headless_services():
    data = _find("ConfigMap", "rstar-config")["data"]
    for name, port in GRPC_SERVICES.items():
        assert data[f"RSTAR_{name.upper()}_ADDR"] == f"dns:///{name}:{port}"
    assert "PASSWORD" not in " ".join(data)


def test_policy_requests_a_gpu_and_rolls_out_without_losing_capacity():
    policy = _find("Deployment", "policy")
    (container,) = _containers(policy)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert policy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_executor_is_hardened():
    executor = _find("Deployment", "executor")
    pod = executor["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context.get("privileged", False) is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert set(context["capabilities"]["add"]) == EXECUTOR_CAPS
    assert container["resources"]["limits"]["memory"]
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
    policy = _find("NetworkPolicy", "executor")
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert policy["spec"]["egress"] == []


def test_rstar_pods_other_than_the_executor_run_as_non_root():
    for obj in _objects():
        if obj["kind"] not in ("Deployment", "StatefulSet", "Job") or obj["metadata"]["name"] == "executor":
            continue
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, obj["metadata"]["name"]
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_worker_autoscaler_and_migration_job():
    hpa = _find("HorizontalPodAutoscaler", "worker")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "worker"
    (container,) = _containers(_find("Job", "migrate"))
    assert container["command"] == ["python", "-m", "rstar_store", "migrate"]


def test_broker_config_matches_the_compose_one():
    def settings(text: str) -> dict:
        return dict(line.split(" = ", 1) for line in text.splitlines()
                    if line.strip() and not line.lstrip().startswith("#"))

    compose_conf = settings((REPO / "deploy/rabbitmq/rabbitmq.conf").read_text())
    k8s_conf = settings(_find("ConfigMap", "rabbitmq-config")["data"]["20-rstar.conf"])
    assert k8s_conf == compose_conf


def test_network_policy_lets_only_workers_reach_the_executors_grpc_port():
    executor = _find("Deployment", "executor")
    worker = _find("Deployment", "worker")
    policy = _find("NetworkPolicy", "executor")["spec"]
    pod_labels = executor["spec"]["template"]["metadata"]["labels"]
    # It selects the executor pods (and only them: every label it asks for is theirs).
    selector = policy["podSelector"]["matchLabels"]
    assert selector and selector.items() <= pod_labels.items()
    assert selector.items() <= _find("Service", "executor")["spec"]["selector"].items()
    assert not selector.items() <= worker["spec"]["template"]["metadata"]["labels"].items()
    assert "Ingress" in policy["policyTypes"]

    grpc_port, metrics_port = GRPC_SERVICES["executor"], 9103
    worker_labels = worker["spec"]["template"]["metadata"]["labels"]
    for rule in policy["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])}
        sources = rule.get("from")
        assert ports, "a rule without ports opens every port"
        assert sources, "a rule without sources admits everyone"
        if grpc_port in ports:
            assert ports == {grpc_port}
            # Worker pods of this namespace only: no namespaceSelector, no ipBlock.
            assert len(sources) == 1 and set(sources[0]) == {"podSelector"}
            wanted = sources[0]["podSelector"]["matchLabels"]
            assert wanted and wanted.items() <= worker_labels.items()
            assert not wanted.items() <= pod_labels.items()
        else:
            # Anything else reaches the metrics port only, and only from Prometheus pods.
            assert ports == {metrics_port}
            for source in sources:
                assert "ipBlock" not in source
                assert source["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert any(grpc_port in {p["port"] for p in r["ports"]} for r in policy["ingress"])
