"""Module-scoped fixtures shared by the integration tests that drive the real vLLM engine and
sandbox in-process: one event loop, one engine on the small model, one sandbox.

A test module imports them by name (`from engine_fixtures import loop, policy, executor`).
"""

import asyncio

import pytest

from rstar_executor import SandboxExecutor
from rstar_policy.engine import EngineSettings, VLLMPolicy


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    # The engine's output handler task lives in this loop: cancel it before closing.
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.close()


@pytest.fixture(scope="module")
def policy(model_dir, loop):
    async def start():
        return VLLMPolicy(EngineSettings(model=model_dir, seed=0, max_model_len=2048, cpu_kvcache_gib=2,
                                         enforce_eager=True))

    engine = loop.run_until_complete(start())
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def executor(loop):
    sandbox = SandboxExecutor()
    yield sandbox
    loop.run_until_complete(sandbox.close())
