"""`python -m rstar_rpc.healthcheck`, the containers' healthcheck, against a real health server."""

import subprocess
import sys
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from rstar_rpc.healthcheck import check, main


@pytest.fixture
def health_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


def test_serving_exits_zero(health_server):
    servicer, target = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert check(target) == "SERVING"
    assert main([target]) == 0


def test_not_serving_exits_one(health_server, capsys):
    servicer, target = health_server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert main([target]) == 1
    assert "NOT_SERVING" in capsys.readouterr().out


def test_named_service(health_server):
    servicer, target = health_server
    servicer.set("rstar.v1.PolicyService", health_pb2.HealthCheckResponse.SERVING)
    assert main([target, "--service", "rstar.v1.PolicyService"]) == 0
    # A service the server does not know is NOT_FOUND, i.e. unhealthy.
    assert main([target, "--service", "rstar.v1.Nope"]) == 1


def test_unreachable_exits_one_within_deadline():
    # Nothing listens on port 1; the call fails fast or at the deadline, never hangs.
    assert main(["127.0.0.1:1", "--timeout", "1"]) == 1


def test_module_entry_point(health_server):
    servicer, target = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    result = subprocess.run([sys.executable, "-m", "rstar_rpc.healthcheck", target],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SERVING" in result.stdout


def test_rejects_empty_target():
    with pytest.raises(ValueError, match="target"):
        check(" ")
