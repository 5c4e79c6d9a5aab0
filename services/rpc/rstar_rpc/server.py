"""What every rstar gRPC server shares: the factory, the service base class, the lifecycle.

* `RpcService` is the base of PolicyService, RewardService and ExecutorService. It owns
  the service's health status, its Prometheus metrics (one registry per server, so two
  replicas in one test process count separately) and admission control: calls are
  UNAVAILABLE until `start(backend)` has warmed the backend up and after `drain()`, and
  RESOURCE_EXHAUSTED once `max_in_flight` work items are being served.
* `rpc` wraps a servicer method (unary or server-streaming): `ServiceError` becomes its
  status code, anything else is logged and becomes INTERNAL, and every call is counted
  and timed (``grpc_server_handled_total``, ``grpc_server_handling_seconds``, the names
  of go-grpc-prometheus, so standard dashboards work).
* `create_server(service, settings)` binds ``host:port`` (port 0: any free port) and adds
  the service, ``grpc.health.v1.Health`` (NOT_SERVING until the service is started) and
  server reflection; it starts the metrics endpoint when a metrics port is set. With
  `settings.tls` (``RSTAR_TLS_*``) the port speaks TLS only, and with a CA it requires a
  client certificate signed by that CA (mutual TLS); plaintext and certificate-less
  clients then fail the handshake.
* `serve(service, settings, load)` is a service process: listen, load the backend (health
  stays NOT_SERVING meanwhile), warm up, SERVING; on SIGTERM/SIGINT, or when the service
  declares its backend dead, NOT_SERVING, `server.stop(grace)` so in-flight calls finish,
  then close the backend.

Not here: authentication beyond the client certificate (any certificate of the CA gets
every RPC), TLS on the metrics endpoint (plain HTTP; keep it on an internal network), the
services' own request validation (`converters`, the services).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import inspect
import logging
import signal
import time
from typing import Awaitable, Callable, ClassVar, Generic, Iterator, TypeVar

import grpc
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from .settings import ServerSettings

__all__ = [
    "RpcMetrics",
    "RpcService",
    "ServiceError",
    "configure_logging",
    "create_server",
    "invalid_argument",
    "rpc",
    "serve",
]

log = logging.getLogger(__name__)

B = TypeVar("B")
# Batches of long prompts or many prefixes exceed gRPC's 4 MiB default.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Clients re-resolve DNS only when a connection ends: closing connections every few
    # minutes (gracefully, calls in flight get a long grace) lets round-robin clients
    # discover replicas added by `--scale` or a Kubernetes scale-up.
    ("grpc.max_connection_age_ms", 5 * 60 * 1000),
    ("grpc.max_connection_age_grace_ms", 10 * 60 * 1000),
]
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServiceError(Exception):
    """An expected failure with the status code the client should see."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@contextlib.contextmanager
def invalid_argument() -> Iterator[None]:
    """Turn `ValueError`s of request validation into INVALID_ARGUMENT."""
    try:
        yield
    except ValueError as exc:
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc


class RpcMetrics:
    """The metrics of one server, on a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # The process metrics prometheus_client would put on its global registry.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.handled = Counter(
            "grpc_server_handled_total", "RPCs completed, by method and status code.",
            ["grpc_service", "grpc_method", "grpc_code"], registry=self.registry)
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds", "Time to serve an RPC, by method.",
            ["grpc_service", "grpc_method"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge(
            "rstar_in_flight_items", "Work items (samples, prefixes, executions) being served.",
            registry=self.registry)
        self.ready = Gauge("rstar_ready", "1 while the service is SERVING.", registry=self.registry)
        self._http = None

    def value(self, name: str, **labels: str) -> float:
        """Current value of one sample (0 when it was never recorded); handy in tests."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def start_http(self, port: int, host: str) -> None:
        # prometheus_client wants a bare address where gRPC takes "[::]".
        self._http, _ = start_http_server(port, addr=host.strip("[]"), registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", host, port)

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http = None


class RpcService(abc.ABC, Generic[B]):
    """Base of a servicer over a backend `B` (engine, model, sandbox).

    Subclasses also inherit the generated ``XServiceServicer``, set `name` to the full
    proto service name, and decorate their RPC methods with `rpc`.
    """

    name: ClassVar[str]

    def __init__(self, *, max_in_flight: int = 256) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.health = grpc_health.aio.HealthServicer()
        self.metrics = RpcMetrics()
        self.max_in_flight = max_in_flight
        self._backend: B | None = None
        self._ready = False
        self._in_flight = 0
        # Set when the backend died: `serve` then drains and exits so that the
        # orchestrator restarts the process.
        self.failed = asyncio.Event()

    # ---- to implement ---------------------------------------------------------------

    @abc.abstractmethod
    def register(self, server: grpc.aio.Server) -> None:
        """Add this servicer to `server` (the generated ``add_XServicer_to_server``)."""

    @property
    @abc.abstractmethod
    def model_version(self) -> str:
        """The version every response carries (valid once started)."""

    @abc.abstractmethod
    async def warm_up(self, backend: B) -> None:
        """One real call through `backend`; raise if it did not work."""

    @abc.abstractmethod
    async def close_backend(self, backend: B) -> None:
        """Release the backend (engine processes, workers, threads)."""

    # ---- lifecycle ------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def backend(self) -> B:
        if self._backend is None:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, f"{self.name} has no backend loaded")
        return self._backend

    async def start(self, backend: B) -> None:
        """Warm `backend` up, then report SERVING."""
        self._backend = backend
        await self.warm_up(backend)
        self._ready = True
        self.metrics.ready.set(1)
        for service in ("", self.name):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("%s is SERVING model version %s", self.name, self.model_version)

    async def drain(self) -> None:
        """NOT_SERVING from now on; calls already admitted keep running."""
        self._ready = False
        self.metrics.ready.set(0)
        await self.health.enter_graceful_shutdown()

    async def close(self) -> None:
        await self.drain()
        backend, self._backend = self._backend, None
        if backend is not None:
            await self.close_backend(backend)

    async def fail(self, reason: str) -> None:
        """The backend is dead: stop taking calls and have `serve` exit with an error."""
        log.error("%s: %s; draining so that the process is restarted", self.name, reason)
        await self.drain()
        self.failed.set()

    @contextlib.contextmanager
    def admit(self, items: int) -> Iterator[None]:
        """Admission of a call carrying `items` work items (0 for an empty batch)."""
        if not self._ready:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, f"{self.name} is not serving (loading or draining)")
        if items > self.max_in_flight:
            # Would never fit: a retry cannot help, so not RESOURCE_EXHAUSTED.
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"a call may carry at most {self.max_in_flight} items, got {items}")
        if self._in_flight + items > self.max_in_flight:
            raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"{self._in_flight} items in flight, limit {self.max_in_flight}")
        self._in_flight += items
        self.metrics.in_flight.set(self._in_flight)
        try:
            yield
        finally:
            self._in_flight -= items
            self.metrics.in_flight.set(self._in_flight)


def rpc(method: Callable) -> Callable:
    """Decorate a servicer method (unary, or an async generator for a server stream):
    status mapping, counting and timing."""
    method_name = method.__name__

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_handler(self: RpcService, request, context: grpc.aio.ServicerContext):
            async with _handling(self, method_name, context):
                async for response in method(self, request, context):
                    yield response

        return stream_handler

    @functools.wraps(method)
    async def handler(self: RpcService, request, context: grpc.aio.ServicerContext):
        async with _handling(self, method_name, context):
            return await method(self, request, context)

    return handler


@contextlib.asynccontextmanager
async def _handling(service: RpcService, method_name: str, context: grpc.aio.ServicerContext):
    start = time.perf_counter()
    recorded = False

    def record(code: grpc.StatusCode) -> None:
        # Counted before the status goes out (abort awaits), so a client that saw the
        # status always finds it in the metrics.
        nonlocal recorded
        if not recorded:
            recorded = True
            service.metrics.handled.labels(service.name, method_name, code.name).inc()
            service.metrics.handling_seconds.labels(service.name, method_name).observe(time.perf_counter() - start)

    try:
        yield
    except ServiceError as exc:
        record(exc.code)
        await context.abort(exc.code, exc.message)
    except asyncio.CancelledError:
        # The client went away or its deadline passed; nobody reads a status now.
        remaining = context.time_remaining()
        record(grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0
               else grpc.StatusCode.CANCELLED)
        raise
    except Exception:
        log.exception("%s/%s failed", service.name, method_name)
        record(grpc.StatusCode.INTERNAL)
        await context.abort(grpc.StatusCode.INTERNAL, f"{method_name} failed on the server")
    finally:
        record(grpc.StatusCode.OK)


async def create_server(service: RpcService, settings: ServerSettings) -> tuple[grpc.aio.Server, int]:
    """A started-to-be server for `service` with health and reflection; (server, bound port).

    Call it inside the event loop that will run the server; then ``await server.start()``.
    """
    server = grpc.aio.server(options=_SERVER_OPTIONS)
    service.register(server)
    health_pb2_grpc.add_HealthServicer_to_server(service.health, server)
    # "" is the whole server (what plain probes ask for); the name is what clients'
    # health-aware load balancing asks for.
    for name in ("", service.name):
        await service.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection((service.name, health_name, reflection.SERVICE_NAME), server)
    address = f"{settings.host}:{settings.port}"
    if settings.tls.enabled:
        port = server.add_secure_port(address, settings.tls.server_credentials())
    else:
        port = server.add_insecure_port(address)
    if port == 0:  # pragma: no cover - grpc returns 0 instead of raising on some failures
        raise RuntimeError(f"could not bind {address}")
    if settings.metrics_port:
        service.metrics.start_http(settings.metrics_port, settings.host)
    return server, port


async def serve(service: RpcService[B], settings: ServerSettings, load: Callable[[], Awaitable[B]]) -> bool:
    """Run one service process until SIGTERM/SIGINT; False when the backend failed.

    `load` should keep the event loop free (load in a thread) so that health checks are
    answered, with NOT_SERVING, while a model loads.
    """
    server, port = await create_server(service, settings)
    await server.start()
    log.info("%s listening on %s:%d (%s)", service.name, settings.host, port,
             ("mutual TLS" if settings.tls.ca else "TLS") if settings.tls.enabled else "plaintext")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async def start() -> None:
        await service.start(await load())

    starting = asyncio.create_task(start(), name="start-backend")
    waiters = [asyncio.create_task(event.wait()) for event in (stop, service.failed)]
    try:
        await asyncio.wait([starting, *waiters], return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # a failed load or warm-up ends the process here
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        log.info("%s shutting down: NOT_SERVING, up to %gs for calls in flight", service.name, settings.grace_s)
        for task in (starting, *waiters):
            task.cancel()
        await service.drain()
        await server.stop(settings.grace_s)
        await service.close()
        service.metrics.stop_http()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return not service.failed.is_set()


def configure_logging(level: str) -> None:
    """Process-wide logging for a service's main (once per process)."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
