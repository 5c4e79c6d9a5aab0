"""Fixtures of the gRPC service tests: one event loop per module.

grpc.aio servers and channels belong to the loop that created them, so a module's
servers, clients and backends all live on its `loop` (pytest-asyncio is not used).
Importing `rstar_rpc` builds the stubs when they are missing or stale.
"""

import asyncio

import pytest


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()
