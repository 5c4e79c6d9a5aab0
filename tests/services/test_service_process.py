"""`python -m rstar_executor.service` as a process: env wiring, metrics endpoint, SIGTERM drain."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_helpers import free_port

from rstar_rpc import ClientSettings, GrpcExecutorClient


def test_executor_process_serves_and_drains_on_sigterm():
    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "RSTAR_GRPC_HOST": "127.0.0.1", "RSTAR_EXECUTOR_PORT": str(port),
           "RSTAR_EXECUTOR_METRICS_PORT": str(metrics_port), "RSTAR_EXECUTOR_POOL_SIZE": "1",
           "RSTAR_SHUTDOWN_GRACE_S": "5"}
    proc = subprocess.Popen([sys.executable, "-m", "rstar_executor.service"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    address = f"127.0.0.1:{port}"

    async def go():
        async with GrpcExecutorClient(ClientSettings(target=address, deadline_s=30)) as client:
            version = await client.refresh_model_version()  # retried until SERVING
            metrics = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode())
            async with grpc.aio.insecure_channel(address) as channel:
                # A watcher (like clients' health-checked balancing) sees the drain; new
                # connections are refused once the server stops listening.
                watch = health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest(service="rstar.v1.ExecutorService"), timeout=10)
                statuses = [(await watch.read()).status]
                slow = asyncio.ensure_future(client.run("import time; time.sleep(0.5); print('finished')"))
                await asyncio.sleep(0.2)  # the call is in flight
                proc.send_signal(signal.SIGTERM)
                statuses.append((await watch.read()).status)
                names = [health_pb2.HealthCheckResponse.ServingStatus.Name(s) for s in statuses]
                return version, metrics, await slow, names

    try:
        version, metrics, result, status = asyncio.run(go())
        code = proc.wait(timeout=15)
    finally:
        proc.kill()
        output = proc.stdout.read()
    assert version.startswith("sandbox-py"), output
    assert 'grpc_server_handled_total{grpc_code="OK",grpc_method="RunBatch"' in metrics
    assert "rstar_ready 1.0" in metrics
    assert result.stdout == "finished\n", output  # the call in flight was allowed to finish
    assert status == ["SERVING", "NOT_SERVING"]
    assert code == 0, output
