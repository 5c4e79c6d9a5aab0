"""The gRPC clients against real executor servers: balancing, health, retries, deadlines."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import grpc
import pytest
from grpc_helpers import free_port, handled, start_server

from rstar_core.ports import CodeExecutor, ExecutionStatus
from rstar_executor import SandboxExecutor, SandboxSettings
from rstar_executor.service import ExecutorService
from rstar_rpc import ClientSettings, GrpcExecutorClient
from rstar_rpc.clients import channel_target


@pytest.fixture(scope="module")
def sandbox(loop):
    executor = SandboxExecutor(SandboxSettings(pool_size=2, preload_modules=("math",), wall_s=5.0))
    yield executor
    loop.run_until_complete(executor.close())


@pytest.fixture(scope="module")
def replicas(loop, sandbox):
    """Two ExecutorService replicas on two ports, over one sandbox pool: [(service, address)]."""
    services = [ExecutorService(), ExecutorService()]
    started = [loop.run_until_complete(start_server(service, sandbox)) for service in services]
    yield [(service, address) for service, (_, address) in zip(services, started)]
    for server, _ in started:
        loop.run_until_complete(server.stop(None))


def _client(*addresses: str, **settings) -> GrpcExecutorClient:
    return GrpcExecutorClient(ClientSettings(target=",".join(addresses), **{"deadline_s": 5.0, **settings}))


def test_client_implements_the_port():
    assert isinstance(_client("127.0.0.1:1"), CodeExecutor)


def test_round_robin_uses_every_replica(loop, replicas):
    (a, address_a), (b, address_b) = replicas
    before = handled(a, "Run"), handled(b, "Run")

    async def go():
        async with _client(address_a, address_b) as client:
            version = await client.refresh_model_version()
            results = [await client.run(f"print({i})") for i in range(20)]
            return version, results, client.model_version

    version, results, last_version = loop.run_until_complete(go())
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(20)]
    served = handled(a, "Run") - before[0], handled(b, "Run") - before[1]
    assert sum(served) == 20 and min(served) >= 5, served
    assert version == last_version == a.model_version


def test_not_serving_replica_gets_no_calls(loop, sandbox):
    async def go():
        services = [ExecutorService(), ExecutorService()]
        started = [await start_server(service, sandbox) for service in services]
        try:
            async with _client(*(address for _, address in started)) as client:
                await client.run("print(0)")
                await services[1].drain()
                # Health-checked round robin learns of the drain through the Watch stream.
                await asyncio.sleep(0.2)
                before = [_all_codes(service) for service in services]
                for i in range(10):
                    await client.run(f"print({i})")
                return tuple(_all_codes(service) - b for service, b in zip(services, before))
        finally:
            for server, _ in started:
                await server.stop(None)

    # Not even refused calls: the draining replica was taken out of the rotation.
    assert loop.run_until_complete(go()) == (10, 0)


def _all_codes(service: ExecutorService) -> float:
    return sum(handled(service, "Run", code) for code in ("OK", "UNAVAILABLE", "RESOURCE_EXHAUSTED"))


def test_retries_until_a_late_server_is_up(loop, sandbox, caplog):
    caplog.set_level(logging.DEBUG, logger="rstar_rpc.clients")
    port = free_port()
    service = ExecutorService()

    async def go():
        async def start_late():
            await asyncio.sleep(1.0)
            return await start_server(service, sandbox, port=port)

        late = asyncio.ensure_future(start_late())
        start = time.perf_counter()
        async with _client(f"127.0.0.1:{port}", deadline_s=6.0, max_backoff_s=0.2) as client:
            result = await client.run("print('late')")
        elapsed = time.perf_counter() - start
        server, _ = await late
        await server.stop(None)
        return result, elapsed

    result, elapsed = loop.run_until_complete(go())
    assert result.stdout == "late\n"
    # The first attempts found nobody listening and were retried until the server was up.
    assert 1.0 <= elapsed < 3.0
    assert handled(service, "Run") == 1
    assert any("UNAVAILABLE" in r.getMessage() and "retrying" in r.getMessage() for r in caplog.records)


def test_deadline_is_honoured(loop, replicas):
    (_, address), _ = replicas

    async def go():
        async with _client(address, deadline_s=0.5) as client:
            start = time.perf_counter()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.run("import time; time.sleep(3)")
            return info.value, time.perf_counter() - start

    error, elapsed = loop.run_until_complete(go())
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.5 <= elapsed < 1.0


def test_attempt_timeout_retries_within_the_deadline(loop, replicas):
    (a, address), _ = replicas
    before = handled(a, "Run", "DEADLINE_EXCEEDED") + handled(a, "Run", "CANCELLED")

    async def go():
        async with _client(address, deadline_s=1.0, attempt_timeout_s=0.3) as client:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.run("import time; time.sleep(3)")
            return info.value

    assert loop.run_until_complete(go()).code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Timed-out attempts are recorded once the server notices the cancellation.
    loop.run_until_complete(asyncio.sleep(0.1))
    assert handled(a, "Run", "DEADLINE_EXCEEDED") + handled(a, "Run", "CANCELLED") - before >= 2


def test_invalid_argument_is_not_retried(loop, replicas):
    (a, address), _ = replicas
    before = handled(a, "Run", "INVALID_ARGUMENT")

    async def go():
        async with _client(address) as client:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.run("print(1)", timeout_s=-1)
            return info.value

    error = loop.run_until_complete(go())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "timeout_s" in error.details()
    assert handled(a, "Run", "INVALID_ARGUMENT") == before + 1


def test_results_round_trip(loop, replicas):
    (_, address), _ = replicas

    async def go():
        async with _client(address) as client:
            batch = await client.run_batch(["print(1)", "raise SystemExit(4)", "while True: pass"], timeout_s=0.3)
            return batch, await client.run_batch([])

    batch, empty = loop.run_until_complete(go())
    assert [r.status for r in batch] == [ExecutionStatus.OK, ExecutionStatus.ERROR, ExecutionStatus.TIMEOUT]
    assert batch[0].stdout == "1\n" and batch[1].exit_code == 4 and batch[2].exit_code is not None
    assert empty == []


def test_client_follows_the_event_loop():
    # The server runs in a thread of its own, since each asyncio.run below owns the
    # main thread only while it runs.
    started, stop = threading.Event(), None
    address = ""

    def serve_in_thread():
        nonlocal stop, address
        loop = asyncio.new_event_loop()
        sandbox = SandboxExecutor(SandboxSettings(pool_size=1, preload_modules=()))
        server, address = loop.run_until_complete(start_server(ExecutorService(), sandbox))
        stop = loop.create_future()
        started.set()
        loop.run_until_complete(stop)
        loop.run_until_complete(server.stop(None))
        loop.run_until_complete(sandbox.close())
        loop.close()

    thread = threading.Thread(target=serve_in_thread)
    thread.start()
    try:
        assert started.wait(30)
        client = _client(address)

        async def once(i):
            return (await client.run(f"print({i})")).stdout

        # Sequential asyncio.run calls (a Celery task each): a fresh channel per loop.
        assert [asyncio.run(once(i)) for i in range(2)] == ["0\n", "1\n"]
    finally:
        if stop is not None:
            stop.get_loop().call_soon_threadsafe(stop.set_result, None)
        thread.join(30)


def test_channel_targets():
    assert channel_target("dns:///executor:50053") == "dns:///executor:50053"
    assert channel_target("localhost:50053") == "localhost:50053"
    assert channel_target("127.0.0.1:1, 127.0.0.2:2") == "ipv4:127.0.0.1:1,127.0.0.2:2"
    assert channel_target("localhost:1,127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert channel_target("[::1]:1,[::1]:2") == "ipv6:[::1]:1,[::1]:2"
    with pytest.raises(ValueError, match="mixes"):
        channel_target("127.0.0.1:1,[::1]:2")
    with pytest.raises(ValueError, match="host:port"):
        channel_target("127.0.0.1,127.0.0.1:2")
