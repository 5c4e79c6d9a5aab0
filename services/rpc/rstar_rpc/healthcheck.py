"""`python -m rstar_rpc.healthcheck TARGET [--service NAME]`: exit 0 iff the server is SERVING.

The container healthcheck of the policy, reward and executor images (Dockerfile
``HEALTHCHECK`` and compose), so that no `grpc_health_probe` binary has to be shipped.
One ``grpc.health.v1.Health/Check`` call with a 3 s deadline; TARGET is what a gRPC
channel accepts (``localhost:50051``, ``dns:///policy:50051``). NAME defaults to ""
(the whole server, which our servers report SERVING only once the model is loaded and
warmed up). The status, or why there is none, goes to stdout, which Docker keeps with the
health log. With ``RSTAR_TLS_*`` set (see `rstar_rpc.settings`) the check speaks TLS and
presents ``RSTAR_TLS_CERT`` as its client certificate: inside a server's container that is
the server's own certificate, which is why the test CA's server certificates are valid
for client authentication too (``deploy/tls/make-test-ca.sh``).

Exit codes (Docker's convention): 0 SERVING; 1 anything else: NOT_SERVING, an unknown
service name, an unreachable server or a missed deadline.

Not here: Kubernetes probes (they use the kubelet's built-in ``grpc:`` probe), health
serving itself (`rstar_rpc.server`).
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .settings import TlsSettings

__all__ = ["check", "main"]

DEFAULT_TIMEOUT_S = 3.0


def check(target: str, service: str = "", timeout_s: float = DEFAULT_TIMEOUT_S,
          tls: TlsSettings | None = None) -> str:
    """The health status name of `service` at `target` (e.g. "SERVING"), over TLS when
    `tls` is enabled.

    Raises `grpc.RpcError` when the server cannot be reached (a refused TLS handshake
    included), does not know `service` (NOT_FOUND) or does not answer within `timeout_s`,
    and ValueError for bad arguments or unreadable certificate files.
    """
    if not target.strip():
        raise ValueError("target must not be empty")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
    if tls is not None and tls.enabled:
        channel = grpc.secure_channel(target, tls.channel_credentials(), tls.channel_options())
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rstar_rpc.healthcheck",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("target", help="gRPC target, e.g. localhost:50051")
    parser.add_argument("--service", default="", help='service name to check (default "": the server)')
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="deadline in seconds (3)")
    args = parser.parse_args(argv)
    try:
        status = check(args.target, args.service, args.timeout, TlsSettings.from_env())
    except grpc.RpcError as exc:
        print(f"{args.target}: {exc.code().name}: {exc.details()}")
        return 1
    except ValueError as exc:  # bad RSTAR_TLS_* settings
        print(f"{args.target}: {exc}")
        return 1
    print(f"{args.target}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
