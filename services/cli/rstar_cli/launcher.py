"""`rstar up` / `rstar down`: the compose stack as local processes (no Docker needed).

Starts the executor, reward and policy gRPC services, Celery search workers, trainer
workers (the `train` queue) and the web console (`rstar web`, on 127.0.0.1) against
the RabbitMQ and PostgreSQL already running on this machine, with one log file per
process under a run directory, and waits until every service reports SERVING on gRPC
health and the console answers 200 on `/healthz` (it can read the store). `rstar down` stops what `rstar up` started (SIGTERM to each process, which drains
and stops its children, then SIGKILL to its whole process group after a grace period). The wiring the CLI needs (`RSTAR_DATABASE_URL`,
`RSTAR_BROKER_URL`) is written to `<run-dir>/env` so a shell can `source` it, and the
services' metrics endpoints to `<run-dir>/prometheus-targets.json` (Prometheus file-based
discovery; deploy/prometheus/local.yml reads it).

`roll_service` rolls a running stack's service onto another model version (what
`rstar models promote` does): replica by replica, SIGTERM (the service drains its calls),
start it again with the new environment, wait until it is SERVING. The new environment is
kept in `<run-dir>/stack.json`, so later restarts keep the version.

Not here: supervision/restarts (use compose or Kubernetes for that).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["StackSpec", "prometheus_targets", "roll_service", "spawn_service", "spawn_trainer", "spawn_web", "spawn_worker",
           "start_stack", "stop_stack", "wait_healthy"]

DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/rstar"
DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"
STATE_FILE = "stack.json"
TARGETS_FILE = "prometheus-targets.json"


@dataclass
class StackSpec:
    run_dir: Path
    database_url: str = DEFAULT_DB
    broker_url: str = DEFAULT_BROKER
    workers: int = 1
    worker_concurrency: int = 16
    executors: int = 1
    with_reward: bool = True
    # Trainer workers on the `train` queue (`python -m rstar_trainer`, one job at a time).
    trainers: int = 0
    # The web console (`python -m rstar_web`) on 127.0.0.1:web_port; 0: none.
    web_port: int = 0
    base_port: int = 50051
    # Extra environment for every process (tests set model paths, queue prefixes, ...).
    env: dict[str, str] = field(default_factory=dict)


def _ports(spec: StackSpec) -> dict[str, list[int]]:
    # Replicas of one service listen on ports 10 apart: 50051, 50061, ...
    return {
        "policy": [spec.base_port],
        "reward": [spec.base_port + 1],
        "executor": [spec.base_port + 2 + 10 * i for i in range(spec.executors)],
    }


def _services(spec: StackSpec) -> list[str]:
    # In start order: the executor first, the slow-loading models last.
    return ["executor", "policy"] + (["reward"] if spec.with_reward else [])


def stack_env(spec: StackSpec) -> dict[str, str]:
    ports = _ports(spec)
    env = {
        "RSTAR_DATABASE_URL": spec.database_url,
        "RSTAR_BROKER_URL": spec.broker_url,
        "RSTAR_POLICY_ADDR": ",".join(f"127.0.0.1:{p}" for p in ports["policy"]),
        "RSTAR_REWARD_ADDR": ",".join(f"127.0.0.1:{p}" for p in ports["reward"]),
        "RSTAR_EXECUTOR_ADDR": ",".join(f"127.0.0.1:{p}" for p in ports["executor"]),
    }
    env.update(spec.env)
    return env


def ensure_database(url: str) -> None:
    """Create the PostgreSQL database named in `url` if it does not exist, then migrate."""
    from sqlalchemy.engine import make_url

    from rstar_store import migrate

    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        import psycopg

        admin = parsed.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
        with psycopg.connect(admin, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (parsed.database,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{parsed.database}"')
    migrate(url)


def _spawn(name: str, argv: list[str], env: dict[str, str], run_dir: Path) -> subprocess.Popen:
    # Own process group: `down` signals the service and everything it started (engine core).
    with (run_dir / f"{name}.log").open("ab") as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def spawn_service(spec: StackSpec, service: str, replica: int = 0) -> subprocess.Popen:
    """Start (or restart) one replica of a gRPC service on its fixed port."""
    return _spawn_replica(spec.run_dir, service, replica, _ports(spec)[service][replica], _current_env(spec))


def _spawn_replica(run_dir: Path, service: str, replica: int, port: int, stack: Mapping[str, str]) -> subprocess.Popen:
    env = {**os.environ, **stack}
    env[f"RSTAR_{service.upper()}_PORT"] = str(port)
    env[f"RSTAR_{service.upper()}_METRICS_PORT"] = str(metrics_port(port))
    name = f"{service}-{replica}"
    proc = _spawn(name, [sys.executable, "-m", f"rstar_{service}.service"], env, run_dir)
    _record_pid(run_dir, name, proc.pid)
    return proc


def _current_env(spec: StackSpec) -> dict[str, str]:
    """The stack's environment as last written to its state: a roll-out may have changed it."""
    path = spec.run_dir / STATE_FILE
    if path.exists():
        return json.loads(path.read_text()).get("env", stack_env(spec))
    return stack_env(spec)


def spawn_worker(spec: StackSpec, index: int = 0) -> subprocess.Popen:
    """Start (or restart) one Celery worker process running `worker_concurrency` searches."""
    env = {**os.environ, **_current_env(spec)}
    prefix = env.get("RSTAR_QUEUE_PREFIX", "")
    argv = [sys.executable, "-m", "celery", "-A", "rstar_worker.app", "worker", "-P", "threads",
            "-Q", f"{prefix}search,{prefix}eval", "-c", str(spec.worker_concurrency),
            "--prefetch-multiplier", "1", "-n", f"worker{index}.{os.getpid()}@%h", "--loglevel", "INFO"]
    name = f"worker-{index}"
    proc = _spawn(name, argv, env, spec.run_dir)
    _record_pid(spec.run_dir, name, proc.pid)
    return proc


def spawn_trainer(spec: StackSpec, index: int = 0) -> subprocess.Popen:
    """Start (or restart) one trainer worker: the `train` queue, one training job at a time."""
    env = {**os.environ, **_current_env(spec)}
    name = f"trainer-{index}"
    env.setdefault("RSTAR_TRAINER_NAME", f"trainer{index}.{os.getpid()}@{os.uname().nodename}")
    proc = _spawn(name, [sys.executable, "-m", "rstar_trainer"], env, spec.run_dir)
    _record_pid(spec.run_dir, name, proc.pid)
    return proc


def spawn_web(spec: StackSpec) -> subprocess.Popen:
    """Start the web console on 127.0.0.1 (RSTAR_WEB_TOKEN, if set, enables its enqueue)."""
    env = {**os.environ, **_current_env(spec), "RSTAR_WEB_HOST": "127.0.0.1", "RSTAR_WEB_PORT": str(spec.web_port)}
    proc = _spawn("web", [sys.executable, "-m", "rstar_web"], env, spec.run_dir)
    _record_pid(spec.run_dir, "web", proc.pid)
    return proc


def metrics_port(grpc_port: int) -> int:
    return grpc_port + 10000


def prometheus_targets(spec: StackSpec) -> list[dict]:
    """The stack's metrics endpoints as Prometheus file_sd target groups, one per service.

    Each group carries its service's name as the `service` label; deploy/prometheus/local.yml
    makes it the `job` label, as in the compose stack, so the Grafana dashboard reads both.
    """
    return [{"targets": [f"127.0.0.1:{metrics_port(port)}" for port in _ports(spec)[service]],
             "labels": {"service": service}} for service in _services(spec)]


def _record_pid(run_dir: Path, name: str, pid: int) -> None:
    path = run_dir / STATE_FILE
    state = json.loads(path.read_text())
    state["pids"][name] = pid
    path.write_text(json.dumps(state, indent=2))


def start_stack(spec: StackSpec) -> dict[str, int]:
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    state_path = spec.run_dir / STATE_FILE
    if state_path.exists():
        alive = [n for n, pid in json.loads(state_path.read_text())["pids"].items() if _alive(pid)]
        if alive:
            raise RuntimeError(f"a stack from {spec.run_dir} is still running ({', '.join(sorted(alive))}): "
                               "stop it first (rstar down)")
    # Checked before anything starts: another console on the port would answer our /healthz.
    if spec.web_port and not _port_free(spec.web_port):
        raise RuntimeError(f"127.0.0.1:{spec.web_port} is in use: give `rstar up` another --web-port "
                           "(0: no console)")
    ensure_database(spec.database_url)
    state = {"pids": {}, "env": stack_env(spec), "ports": _ports(spec)}
    (spec.run_dir / STATE_FILE).write_text(json.dumps(state, indent=2))
    _write_env_file(spec.run_dir, stack_env(spec))
    (spec.run_dir / TARGETS_FILE).write_text(json.dumps(prometheus_targets(spec), indent=2))
    for service in _services(spec):
        for replica in range(len(_ports(spec)[service])):
            spawn_service(spec, service, replica)
    for index in range(spec.workers):
        spawn_worker(spec, index)
    for index in range(spec.trainers):
        spawn_trainer(spec, index)
    if spec.web_port:
        spawn_web(spec)
    return json.loads((spec.run_dir / STATE_FILE).read_text())["pids"]


def _write_env_file(run_dir: Path, env: Mapping[str, str]) -> None:
    (run_dir / "env").write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))


def wait_healthy(spec: StackSpec, timeout_s: float = 600.0) -> None:
    """Block until the console answers /healthz and every gRPC service is SERVING.

    Raises with the log tail if one of them dies, TimeoutError after `timeout_s`.

    The console first: it is up in seconds, so a console that cannot start (a store it
    cannot read) fails `rstar up` before the models have loaded.
    """
    deadline = time.monotonic() + timeout_s
    state = json.loads((spec.run_dir / STATE_FILE).read_text())
    if spec.web_port and "web" in state["pids"]:
        _wait_web(spec.run_dir, state["pids"]["web"], spec.web_port, timeout_s)
    targets = {f"{svc}-{i}": (state["pids"][f"{svc}-{i}"], port) for svc, ports in state["ports"].items()
               for i, port in enumerate(ports) if f"{svc}-{i}" in state["pids"]}
    _wait_serving(spec.run_dir, targets, max(deadline - time.monotonic(), 0.0))


def _wait_web(run_dir: Path, pid: int, port: int, timeout_s: float) -> None:
    """Wait until the console (process `pid`) answers 200 on http://127.0.0.1:`port`/healthz."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        if not _alive(pid):
            tail = (run_dir / "web.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"web exited during start-up; log tail:\n{tail}")
        try:
            # /healthz needs no token; 503 until the console can read the store.
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError as exc:  # refused while it starts, HTTPError 503 while the store is unreadable
            last = str(exc)
        if time.monotonic() > deadline:
            raise TimeoutError(f"the web console did not answer /healthz on 127.0.0.1:{port} within "
                               f"{timeout_s:.0f} s ({last})")
        time.sleep(0.5)


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        # As uvicorn binds: connections of an earlier console in TIME_WAIT do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_serving(run_dir: Path, targets: Mapping[str, tuple[int, int]], timeout_s: float) -> None:
    """Wait until every `name: (pid, port)` answers SERVING on gRPC health."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    waiting = {name: port for name, (_pid, port) in targets.items()}
    while waiting:
        for name, port in list(waiting.items()):
            if not _alive(targets[name][0]):
                tail = (run_dir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited during start-up; log tail:\n{tail}")
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
                except grpc.RpcError:
                    continue
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                del waiting[name]
        if waiting and time.monotonic() > deadline:
            raise TimeoutError(f"not SERVING after {timeout_s:.0f} s: {sorted(waiting)}")
        if waiting:
            time.sleep(1.0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours is dead too.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def stop_stack(run_dir: Path, grace_s: float = 30.0) -> list[str]:
    path = run_dir / STATE_FILE
    if not path.exists():
        return []
    pids = json.loads(path.read_text())["pids"]
    _stop_groups(list(pids.values()), grace_s)
    path.unlink()
    return sorted(pids)


def roll_service(run_dir: Path, service: str, env_updates: Mapping[str, str], *, grace_s: float = 30.0,
                 timeout_s: float = 600.0) -> bool:
    """Restart each replica of `service` in the stack of `run_dir` with `env_updates`, one after another.

    Each replica gets SIGTERM (it turns NOT_SERVING and drains its calls; SIGKILL after
    `grace_s`), starts again on its port with the updated environment and must answer
    SERVING within `timeout_s` before the next one goes; with several replicas the others
    keep serving meanwhile. Returns False, changing nothing, when no stack runs in
    `run_dir` or it runs no replica of `service`. Raises RuntimeError (with the log tail)
    or TimeoutError when a new replica does not come up.
    """
    path = run_dir / STATE_FILE
    if not path.exists():
        return False
    state = json.loads(path.read_text())
    replicas = [(i, port) for i, port in enumerate(state["ports"].get(service, []))
                if f"{service}-{i}" in state["pids"]]
    if not any(_alive(state["pids"][f"{service}-{i}"]) for i, _ in replicas):
        return False
    state["env"].update(env_updates)
    path.write_text(json.dumps(state, indent=2))
    _write_env_file(run_dir, state["env"])
    for i, port in replicas:
        name = f"{service}-{i}"
        _stop_groups([state["pids"][name]], grace_s)
        proc = _spawn_replica(run_dir, service, i, port, state["env"])
        _wait_serving(run_dir, {name: (proc.pid, port)}, timeout_s)
    return True


def _stop_groups(pids: list[int], grace_s: float) -> None:
    """SIGTERM each group's leader, SIGKILL each group after `grace_s`, wait until all are gone.

    Only the leader (the service or worker) gets SIGTERM: it drains its calls, or finishes
    its tasks, and stops the processes it started. Signalling the whole group would stop
    a service's engine under the calls it is still draining.
    """
    for pid in pids:
        _signal_leader(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        _signal_group(pid, signal.SIGKILL)
    # Wait until every process of every group is gone (engine children hold GBs of memory).
    deadline = time.monotonic() + 10.0
    while any(_group_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    """Some process of the group is still running (zombies waiting to be reaped do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # Fields after the ")" that closes the command name: state, ppid, pgrp, ...
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        if int(pgrp) == pgid and state != "Z":
            return True
    return False


def _signal_leader(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
