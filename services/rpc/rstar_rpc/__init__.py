"""gRPC plumbing of rstar: generated stubs, server factory, clients of the core ports.

Importing the package makes sure the stubs in `rstar_rpc.gen` exist and match the .proto
files (see `build_protos`), so everything below can import them.
"""

from .build_protos import ensure_stubs

ensure_stubs()

from .clients import GrpcExecutorClient, GrpcPolicyClient, GrpcRewardClient  # noqa: E402
from .server import RpcService, ServiceError, create_server, rpc, serve  # noqa: E402
from .settings import ClientSettings, ModelStoreSettings, ServerSettings  # noqa: E402

__all__ = [
    "ClientSettings",
    "GrpcExecutorClient",
    "GrpcPolicyClient",
    "GrpcRewardClient",
    "ModelStoreSettings",
    "RpcService",
    "ServerSettings",
    "ServiceError",
    "create_server",
    "rpc",
    "serve",
]
