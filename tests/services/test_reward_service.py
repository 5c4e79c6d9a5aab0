"""RewardService on a real server over the real PPM (an untrained head on the small model)."""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest
from grpc_helpers import handled, health, start_server
from tools import scratch_dir

from rstar_core.ports import RewardModel, ScoringItem
from rstar_reward import PPMRewardModel, build_ppm_dir
from rstar_reward.service import RewardService
from rstar_rpc import ClientSettings, GrpcRewardClient
from rstar_rpc.gen.rstar.v1 import reward_pb2, reward_pb2_grpc

pytestmark = pytest.mark.slow

QUESTION = "Tom has 3 boxes with 4 pens in each box. He gives away 5 pens. How many pens are left?"
ITEMS = [
    ScoringItem(QUESTION, ()),
    ScoringItem(QUESTION, ("# There are 3 boxes with 4 pens each.\npens = 3 * 4",)),
    ScoringItem(QUESTION, ("# There are 3 boxes with 4 pens each.\npens = 3 * 4",
                           "# He gives away 5 pens.\nprint(pens - 5)\nOutput: 7", "The answer is \\boxed{7}.")),
]


@pytest.fixture(scope="module")
def ppm(model_dir, tmp_path_factory):
    with scratch_dir(tmp_path_factory, "ppm") as root:
        ppm_dir = build_ppm_dir(model_dir, root / "ppm", seed=0)
        # float32 so that scores do not depend on how the batcher grouped the items.
        yield PPMRewardModel.from_dir(ppm_dir, dtype="float32", max_batch_size=8, batch_window_s=0.02)


@pytest.fixture(scope="module")
def served(loop, ppm):
    service = RewardService()
    server, address = loop.run_until_complete(start_server(service, ppm))
    yield service, address
    loop.run_until_complete(server.stop(None))
    loop.run_until_complete(service.close())


def test_serving_after_warm_up(loop, served):
    service, address = served
    assert loop.run_until_complete(health(address, service.name)) == "SERVING"


def test_client_scores_match_the_in_process_model(loop, served, ppm):
    service, address = served

    async def go():
        local = await ppm.score(ITEMS)
        async with GrpcRewardClient(ClientSettings(target=address, deadline_s=60)) as client:
            assert isinstance(client, RewardModel)
            remote = await client.score(ITEMS)
            # Concurrent calls are merged into batched forwards by the server's model.
            forwards = ppm.stats.forwards
            concurrent = await asyncio.gather(*(client.score([item]) for item in ITEMS))
            return local, remote, concurrent, ppm.stats.forwards - forwards, client.model_version

    local, remote, concurrent, forwards, version = loop.run_until_complete(go())
    assert remote == pytest.approx(local, abs=1e-5)
    assert all(-1 <= s <= 1 and math.isfinite(s) for s in remote)
    assert [s for (s,) in concurrent] == pytest.approx(local, abs=1e-5)
    assert forwards < len(ITEMS)
    assert version == ppm.model_version == service.model_version
    assert service.metrics.value("rstar_reward_forward_batch_size_count") == ppm.stats.forwards
    assert service.metrics.value("rstar_reward_request_items_sum") >= len(ITEMS) * 2
    assert handled(service, "Score") >= 1 + len(ITEMS)


def test_empty_request_returns_the_version_and_bad_items_are_invalid(loop, served):
    service, address = served

    async def go():
        async with grpc.aio.insecure_channel(address) as channel:
            stub = reward_pb2_grpc.RewardServiceStub(channel)
            empty = await stub.Score(reward_pb2.ScoreRequest(), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Score(reward_pb2.ScoreRequest(items=[
                    reward_pb2.ScoringItem(question="q"), reward_pb2.ScoringItem(question="", steps=["x"])]),
                    timeout=10)
            return empty, info.value

    empty, error = loop.run_until_complete(go())
    assert list(empty.scores) == [] and empty.model_version == service.model_version
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "items[1].question" in error.details()
