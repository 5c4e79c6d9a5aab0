"""Wiring of the gRPC services and their clients, read once from `RSTAR_*` variables.

Each process builds these frozen objects once at start-up (`from_env`) and passes them
down; nothing else reads the environment. `<S>` is POLICY, REWARD or EXECUTOR.

Servers
    ``RSTAR_<S>_PORT``           gRPC port (50051, 50052, 50053)
    ``RSTAR_<S>_METRICS_PORT``   Prometheus endpoint port (9101, 9102, 9103); 0 = off
    ``RSTAR_<S>_MAX_IN_FLIGHT``  work items (samples, prefixes, executions) admitted at
                                 once; beyond it calls fail with RESOURCE_EXHAUSTED
    ``RSTAR_GRPC_HOST``          bind address ("[::]": all interfaces)
    ``RSTAR_SHUTDOWN_GRACE_S``   time in-flight calls get to finish after SIGTERM (30)
    ``RSTAR_LOG_LEVEL``          logging level (INFO)
Clients
    ``RSTAR_<S>_ADDR``           target: ``host:port``, ``dns:///host:port`` (every address
                                 the name resolves to) or ``host1:port1,host2:port2``
    ``RSTAR_<S>_DEADLINE_S``     deadline of one call, retries included
                                 (policy 300, reward 60, executor 30)
    ``RSTAR_RPC_ATTEMPT_TIMEOUT_S``  limit of a single attempt (unset: the whole deadline)
Models
    ``RSTAR_MODEL_STORE``        model store directory: one sub-directory per version
    ``RSTAR_MODEL``              policy model: a version in the store, a path or a Hub id
                                 (empty: the bundled small model)
    ``RSTAR_REWARD_MODEL``       PPM: a version in the store or a path (empty: an
                                 untrained value head on the policy)

Not here: engine knobs of one service (they live with that service) and experiment knobs
(YAML configs of `rstar_core.config`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

__all__ = ["ClientSettings", "ModelStoreSettings", "ServerSettings"]

# service -> (gRPC port, metrics port, client deadline in seconds)
_DEFAULTS = {
    "policy": (50051, 9101, 300.0),
    "reward": (50052, 9102, 60.0),
    "executor": (50053, 9103, 30.0),
}


def _service(name: str) -> str:
    if name not in _DEFAULTS:
        raise ValueError(f"service must be one of {sorted(_DEFAULTS)}, got {name!r}")
    return name


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _port(name: str, value: int | None, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"{name} must be a port number in [0, 65535], got {value!r}")


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


@dataclass(frozen=True)
class ServerSettings:
    """How one service listens and sheds load."""

    service: str
    host: str = "[::]"
    # 0 binds a free port (tests); `create_server` returns the one it got.
    port: int = 0
    # Prometheus HTTP endpoint; None or 0 = off.
    metrics_port: int | None = None
    # Work items in flight at once (a Generate call counts n, a batch counts its items).
    max_in_flight: int = 256
    # After SIGTERM: how long in-flight calls may take before they are cancelled.
    grace_s: float = 30.0
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        _service(self.service)
        _port("port", self.port)
        _port("metrics_port", self.metrics_port, allow_none=True)
        if type(self.max_in_flight) is not int or self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be a positive int, got {self.max_in_flight!r}")
        _positive("grace_s", self.grace_s)

    @classmethod
    def from_env(cls, service: str, env: Mapping[str, str] | None = None) -> ServerSettings:
        env, prefix = _env(env), f"RSTAR_{_service(service).upper()}_"
        port, metrics_port, _ = _DEFAULTS[service]
        return cls(
            service=service,
            host=env.get("RSTAR_GRPC_HOST", "[::]"),
            port=int(env.get(prefix + "PORT", port)),
            metrics_port=int(env.get(prefix + "METRICS_PORT", metrics_port)) or None,
            max_in_flight=int(env.get(prefix + "MAX_IN_FLIGHT", 256)),
            grace_s=float(env.get("RSTAR_SHUTDOWN_GRACE_S", 30.0)),
            log_level=env.get("RSTAR_LOG_LEVEL", "INFO"),
        )


@dataclass(frozen=True)
class ClientSettings:
    """Where a client connects and how long and how often it tries."""

    target: str
    # The whole call, retries and backoff included.
    deadline_s: float = 60.0
    # One attempt; below deadline_s, a replica that hangs is given up on and the call
    # retried (on another replica with round robin). None = the remaining deadline.
    attempt_timeout_s: float | None = None
    # Exponential backoff between attempts: initial, doubled each time, capped, +-20% jitter.
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    # gRPC's own reconnect backoff after a failed connection (its defaults are 1 s to 120 s,
    # far too slow for a replica that restarts).
    reconnect_backoff_s: float = 0.2
    max_reconnect_backoff_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.target.strip():
            raise ValueError("target must not be empty")
        for name in ("deadline_s", "initial_backoff_s", "max_backoff_s", "reconnect_backoff_s",
                     "max_reconnect_backoff_s"):
            _positive(name, getattr(self, name))
        if self.attempt_timeout_s is not None:
            _positive("attempt_timeout_s", self.attempt_timeout_s)

    @classmethod
    def from_env(cls, service: str, env: Mapping[str, str] | None = None) -> ClientSettings:
        env, prefix = _env(env), f"RSTAR_{_service(service).upper()}_"
        port, _, deadline = _DEFAULTS[service]
        attempt = env.get("RSTAR_RPC_ATTEMPT_TIMEOUT_S")
        return cls(
            target=env.get(prefix + "ADDR", f"localhost:{port}"),
            deadline_s=float(env.get(prefix + "DEADLINE_S", deadline)),
            attempt_timeout_s=float(attempt) if attempt else None,
        )


@dataclass(frozen=True)
class ModelStoreSettings:
    """Which model versions the policy and reward services load, and from where."""

    # One sub-directory per version (the trainer's registry writes them); "" = none.
    store: str = ""
    policy_model: str = ""
    reward_model: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ModelStoreSettings:
        env = _env(env)
        return cls(store=env.get("RSTAR_MODEL_STORE", ""), policy_model=env.get("RSTAR_MODEL", ""),
                   reward_model=env.get("RSTAR_REWARD_MODEL", ""))

    def resolve(self, spec: str, *, allow_hub_id: bool = False) -> str:
        """The directory for `spec` (a path or a version in the store), or a Hub id as is."""
        if Path(spec).is_dir():
            return str(Path(spec))
        if self.store and "/" not in spec and (Path(self.store) / spec).is_dir():
            return str(Path(self.store) / spec)
        # "org/name" that is no local directory: a Hub id, if the caller can load one.
        if allow_hub_id and spec.count("/") == 1 and not spec.startswith((".", "/")):
            return spec
        raise ValueError(
            f"model {spec!r} is neither a directory nor a version in the model store "
            f"{self.store or '(RSTAR_MODEL_STORE unset)'}"
        )
