"""PolicyService on a real server over the real vLLM engine (small model, one engine start)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_helpers import handled, health, start_server

from rstar_core.ports import GenerationRequest, PolicyModel
from rstar_core.steps import get_format
from rstar_policy.engine import EngineSettings, VLLMPolicy
from rstar_models.store import model_version
from rstar_policy.service import PolicyService
from rstar_rpc import ClientSettings, GrpcPolicyClient
from rstar_rpc.gen.rstar.v1 import policy_pb2, policy_pb2_grpc

pytestmark = pytest.mark.slow

FORMAT = get_format("base")
PROMPT = FORMAT.render_prompt("A box holds 6 eggs. How many eggs are in 4 boxes?")


@pytest.fixture(scope="module")
def served(loop, model_dir):
    """One engine for the module, loaded the way `main` loads it (in a thread)."""
    service = PolicyService(max_n=8)

    async def start():
        server, address = await start_server(service)
        before = await health(address, service.name)
        engine = await asyncio.to_thread(
            VLLMPolicy, EngineSettings(model=model_dir, max_model_len=512, cpu_kvcache_gib=1, enforce_eager=True))
        await service.start(engine)
        return server, address, before

    server, address, before = loop.run_until_complete(start())
    try:
        yield service, address, before
    finally:
        loop.run_until_complete(server.stop(None))
        loop.run_until_complete(service.close())


def _client(address: str) -> GrpcPolicyClient:
    return GrpcPolicyClient(ClientSettings(target=address, deadline_s=120))


def test_serving_only_after_the_engine_warmed_up(loop, served, model_dir):
    service, address, before = served
    assert before == "NOT_SERVING"
    assert loop.run_until_complete(health(address, service.name)) == "SERVING"
    assert service.model_version == model_version(model_dir)


def test_generate_n_with_stop_strings_and_logprobs(loop, served, model_dir):
    service, address, _ = served
    tokens = service.metrics.value("rstar_policy_generated_tokens_total")
    request = GenerationRequest(prompt=PROMPT, n=2, temperature=0.8, max_tokens=48, stop=FORMAT.stops, logprobs=5)

    async def go():
        async with _client(address) as client:
            assert isinstance(client, PolicyModel)
            return await client.generate(request), client.model_version

    completions, version = loop.run_until_complete(go())
    assert len(completions) == 2
    for c in completions:
        assert c.finish_reason in ("stop", "length") and c.num_tokens > 0
        assert not any(stop in c.text for stop in FORMAT.stops)
        assert c.stop_string is None or c.stop_string in FORMAT.stops
        assert c.token_confidence is not None and 0 < c.token_confidence <= 1
    assert version == model_version(model_dir)
    generated = service.metrics.value("rstar_policy_generated_tokens_total") - tokens
    assert generated == sum(c.num_tokens for c in completions)


def test_generate_stream_yields_each_sample(loop, served):
    service, address, _ = served
    streams = handled(service, "GenerateStream")
    request = GenerationRequest(prompt=PROMPT, n=3, temperature=0.8, max_tokens=32, stop=FORMAT.stops)

    async def go():
        async with _client(address) as client:
            return [c async for c in client.generate_stream(request)], client.model_version

    completions, version = loop.run_until_complete(go())
    assert len(completions) == 3 and all(c.num_tokens > 0 for c in completions)
    assert version == service.model_version
    assert handled(service, "GenerateStream") == streams + 1


def test_generate_batch(loop, served):
    _, address, _ = served
    requests = [GenerationRequest(prompt=PROMPT, n=2, temperature=0.7, max_tokens=8),
                GenerationRequest(prompt="1 + 1 =", n=1, temperature=0.0, max_tokens=4)]

    async def go():
        async with _client(address) as client:
            return await client.generate_batch(requests), await client.refresh_model_version()

    results, version = loop.run_until_complete(go())
    assert [len(r) for r in results] == [2, 1]
    assert version


@pytest.mark.parametrize(("changes", "field"), [
    ({"n": 0}, "n must be >= 1"),
    ({"n": 9}, "n must be at most 8"),
    ({"prompt": ""}, "prompt must not be empty"),
    # Found by vLLM's own validation:
    ({"prompt": "word " * 2000}, "maximum context length"),
    ({"n": 2, "temperature": 0.0}, "greedy sampling"),
])
def test_bad_requests_are_invalid_argument(loop, served, changes, field):
    service, address, _ = served
    fields = {"prompt": "2 + 2 =", "n": 1, "temperature": 0.7, "top_p": 1.0, "max_tokens": 4, **changes}
    before = handled(service, "Generate", "INVALID_ARGUMENT")

    async def go():
        async with grpc.aio.insecure_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await policy_pb2_grpc.PolicyServiceStub(channel).Generate(
                    policy_pb2.GenerateRequest(**fields), timeout=60)
            return info.value

    error = loop.run_until_complete(go())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and field in error.details()
    assert handled(service, "Generate", "INVALID_ARGUMENT") == before + 1
