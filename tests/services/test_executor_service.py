"""ExecutorService on a real server (port 0) over the real sandbox."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_helpers import handled, health, reflected_services, start_server

from rstar_executor import SandboxExecutor, SandboxSettings
from rstar_executor.service import ExecutorService, ExecutorServiceSettings, sandbox_version
from rstar_rpc.gen.rstar.v1 import executor_pb2, executor_pb2_grpc

SETTINGS = SandboxSettings(pool_size=2, preload_modules=("math",), wall_s=2.0)


@pytest.fixture(scope="module")
def sandbox(loop):
    executor = SandboxExecutor(SETTINGS)
    yield executor
    loop.run_until_complete(executor.close())


@pytest.fixture(scope="module")
def served(loop, sandbox):
    """(service, address) of one started server, shared by the module."""
    service = ExecutorService(max_timeout_s=10)
    server, address = loop.run_until_complete(start_server(service, sandbox))
    yield service, address
    loop.run_until_complete(server.stop(None))


def _call(loop, address, method, request):
    async def go():
        async with grpc.aio.insecure_channel(address) as channel:
            return await getattr(executor_pb2_grpc.ExecutorServiceStub(channel), method)(request, timeout=10)

    return loop.run_until_complete(go())


def _error(loop, address, method, request) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _call(loop, address, method, request)
    return info.value


def test_health_is_not_serving_until_started(loop, sandbox):
    async def go():
        service = ExecutorService()
        server, address = await start_server(service)
        try:
            before = await health(address), await health(address, service.name)
            async with grpc.aio.insecure_channel(address) as channel:
                stub = executor_pb2_grpc.ExecutorServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as unavailable:
                    await stub.Run(executor_pb2.RunRequest(code="print(1)"), timeout=5)
            await service.start(sandbox)
            after = await health(address), await health(address, service.name)
        finally:
            await server.stop(None)
        return before, unavailable.value, after

    before, unavailable, after = loop.run_until_complete(go())
    assert before == ("NOT_SERVING", "NOT_SERVING")
    assert unavailable.code() == grpc.StatusCode.UNAVAILABLE and "not serving" in unavailable.details()
    assert after == ("SERVING", "SERVING")


def test_run_ok_error_and_timeout(loop, served):
    service, address = served
    ok = _call(loop, address, "Run", executor_pb2.RunRequest(code="print(6 * 7)"))
    assert ok.result.status == executor_pb2.EXECUTION_STATUS_OK
    assert ok.result.stdout == "42\n" and ok.result.exit_code == 0
    assert ok.model_version == sandbox_version(SETTINGS) == service.model_version

    error = _call(loop, address, "Run", executor_pb2.RunRequest(code="1 / 0"))
    assert error.result.status == executor_pb2.EXECUTION_STATUS_ERROR
    assert "ZeroDivisionError" in error.result.error and error.result.exit_code == 1

    timeout = _call(loop, address, "Run", executor_pb2.RunRequest(code="while True: pass", timeout_s=0.3))
    assert timeout.result.status == executor_pb2.EXECUTION_STATUS_TIMEOUT
    assert 0.3 <= timeout.result.duration_s < 2


def test_run_batch_keeps_order(loop, served):
    _, address = served
    runs = [executor_pb2.RunRequest(code=f"print({i} * {i})") for i in range(5)]
    runs.append(executor_pb2.RunRequest(code="import sys; sys.exit(3)"))
    response = _call(loop, address, "RunBatch", executor_pb2.RunBatchRequest(runs=runs))
    assert [r.stdout for r in response.results[:5]] == [f"{i * i}\n" for i in range(5)]
    assert response.results[5].status == executor_pb2.EXECUTION_STATUS_ERROR
    assert response.results[5].exit_code == 3
    empty = _call(loop, address, "RunBatch", executor_pb2.RunBatchRequest())
    assert list(empty.results) == [] and empty.model_version == response.model_version != ""


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        ("Run", executor_pb2.RunRequest(code="print(1)", timeout_s=-1), "timeout_s"),
        ("Run", executor_pb2.RunRequest(code="print(1)", timeout_s=0), "timeout_s"),
        ("Run", executor_pb2.RunRequest(code="print(1)", timeout_s=11), "timeout_s must be at most 10"),
        ("RunBatch", executor_pb2.RunBatchRequest(runs=[executor_pb2.RunRequest(code=""),
                                                        executor_pb2.RunRequest(code="", timeout_s=float("nan"))]),
         "runs[1].timeout_s"),
    ],
)
def test_bad_arguments_are_invalid_argument(loop, served, method, request_, field):
    _, address = served
    error = _error(loop, address, method, request_)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in error.details()


def test_reflection_lists_the_services(loop, served):
    _, address = served
    services = loop.run_until_complete(reflected_services(address))
    assert {"rstar.v1.ExecutorService", "grpc.health.v1.Health"} <= services


def test_metrics_count_calls_and_executions(loop, served):
    service, address = served
    runs_ok = handled(service, "Run")
    invalid = handled(service, "Run", "INVALID_ARGUMENT")
    ok_executions = service.metrics.value("rstar_executor_executions_total", status="ok")
    _call(loop, address, "Run", executor_pb2.RunRequest(code="print(1)"))
    _error(loop, address, "Run", executor_pb2.RunRequest(code="", timeout_s=-1))
    assert handled(service, "Run") == runs_ok + 1
    assert handled(service, "Run", "INVALID_ARGUMENT") == invalid + 1
    assert service.metrics.value("rstar_executor_executions_total", status="ok") == ok_executions + 1
    assert service.metrics.value("grpc_server_handling_seconds_count", grpc_service=service.name,
                                 grpc_method="Run") >= 2


def test_full_server_is_resource_exhausted(loop, sandbox):
    async def go():
        service = ExecutorService(max_in_flight=2)
        server, address = await start_server(service, sandbox)
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = executor_pb2_grpc.ExecutorServiceStub(channel)
                busy = asyncio.ensure_future(stub.RunBatch(executor_pb2.RunBatchRequest(
                    runs=[executor_pb2.RunRequest(code="import time; time.sleep(0.5)")] * 2), timeout=5))
                while service.metrics.value("rstar_in_flight_items") < 2:
                    await asyncio.sleep(0.01)
                with pytest.raises(grpc.aio.AioRpcError) as full:
                    await stub.Run(executor_pb2.RunRequest(code="print(1)"), timeout=5)
                with pytest.raises(grpc.aio.AioRpcError) as too_big:
                    await stub.RunBatch(executor_pb2.RunBatchRequest(runs=[executor_pb2.RunRequest()] * 3), timeout=5)
                done = await busy
        finally:
            await server.stop(None)
        return full.value, too_big.value, done

    full, too_big, done = loop.run_until_complete(go())
    assert full.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # A call that can never fit is not retryable, hence not RESOURCE_EXHAUSTED.
    assert too_big.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 2" in too_big.details()
    assert all(r.status == executor_pb2.EXECUTION_STATUS_OK for r in done.results)


def test_drain_finishes_calls_in_flight_and_refuses_new_ones(loop, sandbox):
    async def go():
        service = ExecutorService()
        server, address = await start_server(service, sandbox)
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = executor_pb2_grpc.ExecutorServiceStub(channel)
                slow = asyncio.ensure_future(stub.Run(executor_pb2.RunRequest(
                    code="import time; time.sleep(0.4); print('done')"), timeout=5))
                while service.metrics.value("rstar_in_flight_items") < 1:
                    await asyncio.sleep(0.01)
                await service.drain()
                status = await health(address, service.name)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.Run(executor_pb2.RunRequest(code="print(1)"), timeout=5)
                finished = await slow
        finally:
            await server.stop(None)
        return status, refused.value, finished

    status, refused, finished = loop.run_until_complete(go())
    assert status == "NOT_SERVING"
    assert refused.code() == grpc.StatusCode.UNAVAILABLE
    assert finished.result.stdout == "done\n"


def test_settings_from_env():
    settings = ExecutorServiceSettings.from_env({
        "RSTAR_EXECUTOR_POOL_SIZE": "3", "RSTAR_EXECUTOR_MEMORY_MB": "256",
        "RSTAR_EXECUTOR_WALL_S": "1.5", "RSTAR_EXECUTOR_MAX_TIMEOUT_S": "20"})
    assert (settings.sandbox.pool_size, settings.sandbox.memory_mb, settings.sandbox.wall_s) == (3, 256, 1.5)
    assert settings.max_timeout_s == 20
    assert sandbox_version(settings.sandbox) != sandbox_version(SandboxSettings())
