"""Helpers of the gRPC service tests: start a real server on port 0, probe it."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rstar_rpc import RpcService, ServerSettings, create_server
from tools import free_port  # noqa: F401  (the service tests take it from here)


async def start_server(service: RpcService, backend=None, *, port: int = 0) -> tuple[grpc.aio.Server, str]:
    """Serve `service` on 127.0.0.1 (started with `backend` unless None); (server, address)."""
    server, bound = await create_server(service, ServerSettings(service=_kind(service), host="127.0.0.1", port=port))
    await server.start()
    if backend is not None:
        await service.start(backend)
    return server, f"127.0.0.1:{bound}"


def _kind(service: RpcService) -> str:
    return service.name.removeprefix("rstar.v1.").removesuffix("Service").lower()


async def health(address: str, service: str = "") -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


async def reflected_services(address: str) -> set[str]:
    async with grpc.aio.insecure_channel(address) as channel:
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        async for response in call:
            return {s.name for s in response.list_services_response.service}
    return set()


def handled(service: RpcService, method: str, code: str = "OK") -> float:
    return service.metrics.value("grpc_server_handled_total", grpc_service=service.name,
                                 grpc_method=method, grpc_code=code)
