"""ExecutorService: the sandbox's warm worker pool behind gRPC.

`python -m rstar_executor.service` serves `rstar.v1.ExecutorService` over one
`SandboxExecutor`. Executions of concurrent calls (and of one RunBatch) share the pool;
calls beyond `RSTAR_EXECUTOR_MAX_IN_FLIGHT` queued executions get RESOURCE_EXHAUSTED.
The service is SERVING once the pool is up and one warm-up execution printed what it
should. Its `model_version` names the sandbox: a digest of its settings and the
interpreter version, so results of differently configured sandboxes are told apart.

Environment (besides the server's, see `rstar_rpc.settings`):
``RSTAR_EXECUTOR_POOL_SIZE`` (workers, default: CPU count), ``RSTAR_EXECUTOR_MEMORY_MB``
(512), ``RSTAR_EXECUTOR_WALL_S`` (default timeout, 5) and ``RSTAR_EXECUTOR_MAX_TIMEOUT_S``
(the largest timeout a call may ask for, 60).

Not here: what the sandbox isolates (`rstar_executor.sandbox`), container hardening.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import platform
import sys
from dataclasses import dataclass
from typing import Mapping

import grpc
from prometheus_client import Counter, Histogram

from rstar_core.ports import ExecutionResult
from rstar_executor.sandbox import SandboxExecutor, SandboxSettings
from rstar_rpc.converters import execution_result_to_proto, run_request_from_proto
from rstar_rpc.gen.rstar.v1 import executor_pb2, executor_pb2_grpc
from rstar_rpc.server import RpcService, configure_logging, invalid_argument, rpc, serve
from rstar_rpc.settings import ServerSettings

__all__ = ["ExecutorService", "ExecutorServiceSettings", "main", "sandbox_version"]

log = logging.getLogger(__name__)

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def sandbox_version(settings: SandboxSettings) -> str:
    """``sandbox-py3.11@<digest of the settings>``: changes whenever behaviour may."""
    payload = json.dumps(dataclasses.asdict(settings), sort_keys=True) + sys.version
    version = ".".join(platform.python_version_tuple()[:2])
    return f"sandbox-py{version}@{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class ExecutorServiceSettings:
    """The sandbox and the per-call limits of this service."""

    sandbox: SandboxSettings = dataclasses.field(default_factory=SandboxSettings)
    max_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.max_timeout_s > 0:
            raise ValueError(f"max_timeout_s must be > 0, got {self.max_timeout_s}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ExecutorServiceSettings:
        env = os.environ if env is None else env
        defaults = SandboxSettings()
        sandbox = dataclasses.replace(
            defaults,
            pool_size=int(env.get("RSTAR_EXECUTOR_POOL_SIZE", defaults.pool_size)),
            memory_mb=int(env.get("RSTAR_EXECUTOR_MEMORY_MB", defaults.memory_mb)),
            wall_s=float(env.get("RSTAR_EXECUTOR_WALL_S", defaults.wall_s)),
        )
        return cls(sandbox=sandbox, max_timeout_s=float(env.get("RSTAR_EXECUTOR_MAX_TIMEOUT_S", 60.0)))


class ExecutorService(RpcService[SandboxExecutor], executor_pb2_grpc.ExecutorServiceServicer):
    """`rstar.v1.ExecutorService` over a `SandboxExecutor`."""

    name = "rstar.v1.ExecutorService"

    def __init__(self, *, max_in_flight: int = 256, max_timeout_s: float = 60.0) -> None:
        super().__init__(max_in_flight=max_in_flight)
        self.max_timeout_s = max_timeout_s
        self._version = ""
        self._executions = Counter(
            "rstar_executor_executions_total", "Executions, by outcome.", ["status"],
            registry=self.metrics.registry)
        self._duration = Histogram(
            "rstar_executor_execution_seconds", "Wall time of one execution.",
            buckets=_DURATION_BUCKETS, registry=self.metrics.registry)

    def register(self, server: grpc.aio.Server) -> None:
        executor_pb2_grpc.add_ExecutorServiceServicer_to_server(self, server)

    @property
    def model_version(self) -> str:
        return self._version

    async def warm_up(self, backend: SandboxExecutor) -> None:
        self._version = sandbox_version(backend.settings)
        await backend.start()
        result = await backend.run("print(6 * 7)")
        if not result.ok or result.stdout != "42\n":
            raise RuntimeError(f"sandbox warm-up failed: {result.status.value}: {result.error or result.stderr}")
        log.info("sandbox ready: %d workers, isolation %s", backend.settings.pool_size, backend.isolation)

    async def close_backend(self, backend: SandboxExecutor) -> None:
        await backend.close()

    @rpc
    async def Run(self, request: executor_pb2.RunRequest, context) -> executor_pb2.RunResponse:
        with invalid_argument():
            code, timeout_s = run_request_from_proto(request, max_timeout_s=self.max_timeout_s)
        with self.admit(1):
            result = await self._run(code, timeout_s)
        return executor_pb2.RunResponse(result=execution_result_to_proto(result), model_version=self.model_version)

    @rpc
    async def RunBatch(self, request: executor_pb2.RunBatchRequest, context) -> executor_pb2.RunBatchResponse:
        with invalid_argument():
            runs = [run_request_from_proto(run, max_timeout_s=self.max_timeout_s, field=f"runs[{i}].")
                    for i, run in enumerate(request.runs)]
        with self.admit(len(runs)):
            results = await asyncio.gather(*(self._run(code, timeout_s) for code, timeout_s in runs))
        return executor_pb2.RunBatchResponse(
            results=[execution_result_to_proto(r) for r in results], model_version=self.model_version)

    async def _run(self, code: str, timeout_s: float | None) -> ExecutionResult:
        result = await self.backend.run(code, timeout_s=timeout_s)
        self._executions.labels(result.status.value).inc()
        self._duration.observe(result.duration_s)
        return result


def main() -> None:
    server_settings = ServerSettings.from_env("executor")
    configure_logging(server_settings.log_level)
    settings = ExecutorServiceSettings.from_env()
    service = ExecutorService(max_in_flight=server_settings.max_in_flight, max_timeout_s=settings.max_timeout_s)

    async def load() -> SandboxExecutor:
        return SandboxExecutor(settings.sandbox)

    if not asyncio.run(serve(service, server_settings, load)):
        sys.exit(1)


if __name__ == "__main__":
    main()
