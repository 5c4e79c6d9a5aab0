"""The compose files: valid for docker-compose (no engine needed) and shaped as DESIGN.md §2
and STYLE.md 8 and 13 ask (healthchecks, one-shot jobs, hardened executor on an internal
network, trainer behind a profile with a GPU, nothing that stops `--scale`).

The structural checks read the YAML themselves, so they run without docker-compose; the
`config` checks need the binary (Debian's docker-compose 1.29 reads these Compose Spec
files too) and are skipped without it.
"""

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tools import needs

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "docker-compose.yml"
GPU = REPO / "docker-compose.gpu.yml"

# Settings the stack cannot start without (`${VAR?message}` in the compose file).
REQUIRED_ENV = {"POSTGRES_PASSWORD": "test-pg-password", "RABBITMQ_PASSWORD": "test-mq-password",
                "RSTAR_WEB_TOKEN": "test-web-token-0123456789"}
# Run to completion (or by hand), so no healthcheck.
ONE_SHOT = {"migrate", "model-init", "cli"}
# Started with --scale: no container_name, no published host port.
SCALABLE = {"policy", "reward", "executor", "worker"}
# What the sandbox needs (services/executor/Dockerfile explains each).
EXECUTOR_CAPS = {"SETUID", "SETGID", "CHOWN", "KILL", "DAC_OVERRIDE", "SYS_ADMIN"}
GPU_DEVICE = {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}

needs_compose = needs("docker-compose")


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _services(path: Path = MAIN) -> dict:
    return _load(path)["services"]


def _compose(*files: Path, args=("config", "-q"), env: dict | None = None):
    command = ["docker-compose"]
    for path in files:
        command += ["-f", str(path)]
    environment = {k: v for k, v in os.environ.items() if k not in REQUIRED_ENV}
    environment.update(REQUIRED_ENV if env is None else env)
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60,
                          env=environment, cwd=REPO)


def _gpu_devices(service: dict) -> list:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


# -- docker-compose config -----------------------------------------------------------------

@needs_compose
def test_compose_config_is_valid():
    result = _compose(MAIN)
    assert result.returncode == 0, result.stderr


@needs_compose
def test_gpu_override_is_valid():
    result = _compose(MAIN, GPU)
    assert result.returncode == 0, result.stderr


@needs_compose
@pytest.mark.parametrize("missing", sorted(REQUIRED_ENV))
def test_required_settings_are_enforced(missing):
    env = {k: v for k, v in REQUIRED_ENV.items() if k != missing}
    result = _compose(MAIN, env=env)
    assert result.returncode != 0
    assert f"set {missing}" in result.stderr


@needs_compose
def test_gpu_override_switches_the_policy_image_and_reserves_a_gpu():
    result = _compose(MAIN, GPU, args=("config",))
    assert result.returncode == 0, result.stderr
    policy = yaml.safe_load(result.stdout)["services"]["policy"]
    assert policy["build"]["dockerfile"] == "services/policy/Dockerfile.gpu"
    assert policy["build"]["context"] == str(REPO)  # kept from the base file
    assert "gpu" in policy["image"]
    assert _gpu_devices(policy) == [GPU_DEVICE]
    # Everything else of the base service survives the merge.
    assert policy["healthcheck"]["test"][-1] == "localhost:50051"


# -- structure ------------------------------------------------------------------------------

def test_compose_spec_file_without_version_key():
    # Compose Spec: read by `docker compose` v2 and by docker-compose >= 1.28.
    assert "version" not in _load(MAIN)
    assert "version" not in _load(GPU)


def test_every_long_running_service_has_a_healthcheck():
    for name, service in _services().items():
        if name in ONE_SHOT:
            continue
        check = service.get("healthcheck")
        assert check and not check.get("disable") and check.get("test"), f"{name} has no healthcheck"


def test_model_services_get_long_start_periods():
    services = _services()
    assert services["policy"]["healthcheck"]["start_period"] == "300s"
    assert services["reward"]["healthcheck"]["start_period"] == "180s"
    for name, port in (("policy", 50051), ("reward", 50052), ("executor", 50053)):
        test = services[name]["healthcheck"]["test"]
        assert test == ["CMD", "python", "-m", "rstar_rpc.healthcheck", f"localhost:{port}"], name


def test_one_shot_jobs_gate_their_dependents():
    services = _services()
    for name in ("migrate", "model-init"):
        assert services[name]["restart"] == "no"
    worker_deps = services["worker"]["depends_on"]
    assert worker_deps["migrate"] == {"condition": "service_completed_successfully"}
    for dep in ("rabbitmq", "postgres", "policy", "reward", "executor"):
        assert worker_deps[dep] == {"condition": "service_healthy"}, dep
    for name in ("policy", "reward"):
        assert services[name]["depends_on"]["model-init"] == {"condition": "service_completed_successfully"}


def test_nothing_blocks_scaling():
    for name, service in _services().items():
        assert "container_name" not in service, name
    for name in SCALABLE:
        assert "ports" not in _services()[name], f"{name} publishes a host port: --scale would conflict"


def test_workers_find_every_replica_through_dns():
    env = _load(MAIN)["x-stack-env"]
    assert env["RSTAR_POLICY_ADDR"] == "dns:///policy:50051"
    assert env["RSTAR_REWARD_ADDR"] == "dns:///reward:50052"
    assert env["RSTAR_EXECUTOR_ADDR"] == "dns:///executor:50053"


def test_secrets_are_required_not_defaulted():
    text = MAIN.read_text()
    for name in REQUIRED_ENV:
        assert f"${{{name}?" in text, name
        assert f"${{{name}:-" not in text, f"{name} must not have a default"


def test_executor_is_hardened_and_isolated():
    compose = _load(MAIN)
    executor = compose["services"]["executor"]
    assert executor["read_only"] is True
    assert any(str(t).startswith("/tmp") for t in executor["tmpfs"])
    assert executor["cap_drop"] == ["ALL"]
    assert set(executor["cap_add"]) == EXECUTOR_CAPS
    assert "no-new-privileges:true" in executor["security_opt"]
    assert not any("unconfined" in opt for opt in executor["security_opt"])
    assert executor["pids_limit"] and executor["mem_limit"]
    assert "privileged" not in executor and "ports" not in executor
    # Only on the internal network, which only the workers share.
    assert executor["networks"] == ["sandbox"]
    assert compose["networks"]["sandbox"]["internal"] is True
    on_sandbox = {name for name, s in compose["services"].items() if "sandbox" in s.get("networks", [])}
    assert on_sandbox == {"executor", "worker"}
    assert set(compose["services"]["worker"]["networks"]) == {"default", "sandbox"}


def test_trainer_is_behind_a_profile_with_a_gpu():
    trainer = _services()["trainer"]
    assert trainer["profiles"] == ["train"]
    assert _gpu_devices(trainer) == [GPU_DEVICE]


def test_gpu_override_reserves_a_gpu_for_the_policy():
    policy = _services(GPU)["policy"]
    assert policy["build"]["dockerfile"] == "services/policy/Dockerfile.gpu"
    assert _gpu_devices(policy) == [GPU_DEVICE]


def test_model_store_volume_on_model_services():
    services = _services()
    for name in ("policy", "reward", "trainer", "model-init"):
        assert any(str(v).startswith("models:/models") for v in services[name]["volumes"]), name
    assert "models" in _load(MAIN)["volumes"]


def test_broker_gets_the_raised_consumer_timeout():
    volumes = _services()["rabbitmq"]["volumes"]
    assert any(v.startswith("./deploy/rabbitmq/rabbitmq.conf:/etc/rabbitmq/conf.d/") for v in volumes)
    conf = (REPO / "deploy/rabbitmq/rabbitmq.conf").read_text()
    timeout_ms = int(next(line.split("=")[1] for line in conf.splitlines()
                          if line.startswith("consumer_timeout")))
    assert timeout_ms > 30 * 60 * 1000  # above RabbitMQ's 30-minute default


def test_every_built_image_has_a_dockerfile_that_generates_the_stubs():
    services = [*_services().values(), *_services(GPU).values()]
    dockerfiles = {s["build"]["dockerfile"] for s in services if isinstance(s.get("build"), dict)}
    assert {"services/policy/Dockerfile", "services/policy/Dockerfile.gpu", "services/reward/Dockerfile",
            "services/executor/Dockerfile", "services/worker/Dockerfile", "services/trainer/Dockerfile",
            "services/cli/Dockerfile"} <= dockerfiles
    for dockerfile in dockerfiles:
        text = (REPO / dockerfile).read_text()
        assert "COPY protos" in text and "rstar_rpc.build_protos" in text, dockerfile


def test_only_the_executor_and_cli_images_run_as_root():
    for dockerfile in ("policy/Dockerfile", "policy/Dockerfile.gpu", "reward/Dockerfile",
                       "worker/Dockerfile", "trainer/Dockerfile", "web/Dockerfile"):
        users = [line.split()[1] for line in (REPO / "services" / dockerfile).read_text().splitlines()
                 if line.startswith("USER ")]
        assert users and users[-1] == "rstar", dockerfile


def test_worker_image_installs_no_engine():
    instructions = "\n".join(line for line in (REPO / "services/worker/Dockerfile").read_text().splitlines()
                             if not line.lstrip().startswith("#"))
    for heavy in ("torch", "vllm", "'models'"):
        assert heavy not in instructions, heavy
    assert "['services']" in instructions


def test_dockerignore_keeps_environments_and_generated_stubs_out():
    lines = set((REPO / ".dockerignore").read_text().splitlines())
    for entry in (".git", ".venv", ".cache", "runs/", "**/__pycache__", "services/rpc/rstar_rpc/gen"):
        assert entry in lines, entry
