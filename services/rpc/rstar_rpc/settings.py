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
TLS (servers and clients alike; all unset: plaintext)
    ``RSTAR_TLS_CERT``           PEM certificate (chain) this process presents: a server's
                                 own, a client's client certificate
    ``RSTAR_TLS_KEY``            PEM private key of that certificate
    ``RSTAR_TLS_CA``             PEM CA bundle. A server then requires and verifies client
                                 certificates (mutual TLS); a client verifies the server
                                 against it (unset: the system's roots)
    ``RSTAR_TLS_SERVER_NAME``    client: the name the server's certificate must carry when
                                 it is not the target's host (an IP list, for example)
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

__all__ = ["ClientSettings", "ModelStoreSettings", "ServerSettings", "TlsSettings"]

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
class TlsSettings:
    """Certificate files for gRPC over TLS; no files = plaintext, as before TLS existed.

    The files are read when credentials are built (once, at server or channel start), so
    a missing or unreadable file is a ValueError there that names its variable.
    """

    # Paths of PEM files; "" = unset.
    cert: str = ""
    key: str = ""
    ca: str = ""
    # Client only: expected name in the server's certificate ("" = the target's host).
    server_name: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise ValueError("RSTAR_TLS_CERT and RSTAR_TLS_KEY must be set together, got "
                             f"cert={self.cert!r} key={self.key!r}")

    @property
    def enabled(self) -> bool:
        return bool(self.cert or self.ca)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TlsSettings:
        env = _env(env)
        return cls(cert=env.get("RSTAR_TLS_CERT", ""), key=env.get("RSTAR_TLS_KEY", ""),
                   ca=env.get("RSTAR_TLS_CA", ""), server_name=env.get("RSTAR_TLS_SERVER_NAME", ""))

    def check_server(self) -> None:
        """Raise ValueError unless a server can use these settings (off, or cert and key)."""
        if self.enabled and not self.cert:
            raise ValueError("a TLS server needs RSTAR_TLS_CERT and RSTAR_TLS_KEY "
                             f"(RSTAR_TLS_CA={self.ca!r} alone is not enough)")

    def server_credentials(self):
        """`grpc.ServerCredentials`: this certificate; client certificates verified against
        `ca` and required when it is set (mutual TLS)."""
        import grpc

        self.check_server()
        ca = _read_pem("RSTAR_TLS_CA", self.ca) if self.ca else None
        return grpc.ssl_server_credentials(
            [(_read_pem("RSTAR_TLS_KEY", self.key), _read_pem("RSTAR_TLS_CERT", self.cert))],
            root_certificates=ca, require_client_auth=ca is not None)

    def channel_credentials(self):
        """`grpc.ChannelCredentials`: verify the server against `ca` (or the system roots)
        and present this certificate, if any."""
        import grpc

        return grpc.ssl_channel_credentials(
            root_certificates=_read_pem("RSTAR_TLS_CA", self.ca) if self.ca else None,
            private_key=_read_pem("RSTAR_TLS_KEY", self.key) if self.key else None,
            certificate_chain=_read_pem("RSTAR_TLS_CERT", self.cert) if self.cert else None)

    def channel_options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def _read_pem(variable: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{variable}={path}: cannot read: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{variable}={path}: not a PEM file")
    return data


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
    # TLS (mutual when `tls.ca` is set); off by default.
    tls: TlsSettings = TlsSettings()

    def __post_init__(self) -> None:
        _service(self.service)
        self.tls.check_server()
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
            tls=TlsSettings.from_env(env),
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
    # TLS towards the server (with a client certificate for mutual TLS); off by default.
    tls: TlsSettings = TlsSettings()

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
            tls=TlsSettings.from_env(env),
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
