"""RewardService: the process preference model (PPM) behind gRPC.

`python -m rstar_reward.service` serves `rstar.v1.RewardService` over one
`PPMRewardModel`, whose batcher already merges concurrent Score calls (from many search
workers) into batched forwards; this module only validates, admits and converts. The PPM
is loaded (in a thread, so health checks are answered meanwhile) from
``RSTAR_REWARD_MODEL``: a version in ``RSTAR_MODEL_STORE`` or a directory. Without one, an
untrained value head is put on the policy model ``RSTAR_MODEL`` (a version or directory),
as embedded mode does, so a fresh stack starts before the first PPM is trained; the log
says so. New PPM versions are
rolled out like policy versions: start replicas on the new version, SIGTERM the old ones
(see `rstar_policy.service`).

Environment (besides the server's, see `rstar_rpc.settings`): ``RSTAR_REWARD_MAX_BATCH``
(items per forward, 16), ``RSTAR_REWARD_BATCH_WINDOW_MS`` (how long the batcher waits for
more calls, 5), ``RSTAR_REWARD_DTYPE`` (unset: bf16, or float32 on a CPU without AVX-512), ``RSTAR_REWARD_THREADS`` (torch
threads; unset: torch's default).

Metrics: items per call (``rstar_reward_request_items``) and, read from the model's own
counters at scrape time, forward batch sizes (``rstar_reward_forward_batch_size``) and
forward time (``rstar_reward_forward_seconds_total``).

Not here: the model and its batching (`rstar_reward.ppm`), training.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import grpc
from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from rstar_core.ports import ScoringItem
from rstar_reward.ppm import PPMRewardModel, build_ppm_dir
from rstar_rpc.converters import scoring_items_from_proto
from rstar_rpc.gen.rstar.v1 import reward_pb2, reward_pb2_grpc
from rstar_rpc.server import RpcService, configure_logging, invalid_argument, rpc, serve
from rstar_rpc.settings import ModelStoreSettings, ServerSettings

__all__ = ["RewardService", "RewardServiceSettings", "main"]

log = logging.getLogger(__name__)

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_WARM_UP_ITEM = ScoringItem("What is 6 * 7?", ("# Multiply.\nprint(6 * 7)\nOutput: 42",))


@dataclass(frozen=True)
class RewardServiceSettings:
    """How the PPM is loaded and batched."""

    max_batch_size: int = 16
    batch_window_s: float = 0.005
    # None: bf16, or float32 on a CPU without AVX-512 (rstar_models.hardware).
    dtype: str | None = None
    num_threads: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RewardServiceSettings:
        env = os.environ if env is None else env
        threads = env.get("RSTAR_REWARD_THREADS")
        return cls(
            max_batch_size=int(env.get("RSTAR_REWARD_MAX_BATCH", 16)),
            batch_window_s=float(env.get("RSTAR_REWARD_BATCH_WINDOW_MS", 5)) / 1000,
            dtype=env.get("RSTAR_REWARD_DTYPE") or None,
            num_threads=int(threads) if threads else None,
        )


class _ForwardStats(Collector):
    """Exports `PPMRewardModel.stats` (counted by the model itself) at scrape time."""

    def __init__(self, model: Callable[[], PPMRewardModel | None]) -> None:
        self._model = model

    def collect(self) -> Iterator:
        model = self._model()
        if model is None:
            return
        stats = model.stats
        buckets = [(str(bound), sum(n for size, n in stats.batch_sizes.items() if size <= bound))
                   for bound in _BATCH_BUCKETS]
        buckets.append(("+Inf", stats.forwards))
        yield HistogramMetricFamily("rstar_reward_forward_batch_size", "Items per PPM forward.",
                                    buckets=buckets, sum_value=stats.items)
        yield CounterMetricFamily("rstar_reward_forward_seconds", "Time spent in PPM forwards.",
                                  value=stats.forward_s)


class RewardService(RpcService[PPMRewardModel], reward_pb2_grpc.RewardServiceServicer):
    """`rstar.v1.RewardService` over a `PPMRewardModel`."""

    name = "rstar.v1.RewardService"

    def __init__(self, *, max_in_flight: int = 256) -> None:
        super().__init__(max_in_flight=max_in_flight)
        self._request_items = Histogram(
            "rstar_reward_request_items", "Items per Score call.", buckets=_BATCH_BUCKETS,
            registry=self.metrics.registry)
        self.metrics.registry.register(_ForwardStats(lambda: self._backend))

    def register(self, server: grpc.aio.Server) -> None:
        reward_pb2_grpc.add_RewardServiceServicer_to_server(self, server)

    @property
    def model_version(self) -> str:
        return self._backend.model_version if self._backend is not None else ""

    async def warm_up(self, backend: PPMRewardModel) -> None:
        (score,) = await backend.score([_WARM_UP_ITEM])
        if not (math.isfinite(score) and -1 <= score <= 1):
            raise RuntimeError(f"PPM warm-up produced {score}")

    async def close_backend(self, backend: PPMRewardModel) -> None:
        await backend.close()

    @rpc
    async def Score(self, request: reward_pb2.ScoreRequest, context) -> reward_pb2.ScoreResponse:
        with invalid_argument():
            items = scoring_items_from_proto(request.items)
        with self.admit(len(items)):
            scores = await self.backend.score(items) if items else []
        if items:
            self._request_items.observe(len(items))
        return reward_pb2.ScoreResponse(scores=scores, model_version=self.model_version)


def _ppm_dir(models: ModelStoreSettings) -> str:
    if models.reward_model:
        return models.resolve(models.reward_model)
    if not models.policy_model:
        raise ValueError("set RSTAR_REWARD_MODEL (a PPM version or directory), or RSTAR_MODEL "
                         "to serve an untrained value head on that policy")
    policy_dir = Path(models.resolve(models.policy_model))
    ppm_dir = policy_dir.with_name(policy_dir.name + "-ppm-untrained")
    log.warning("no RSTAR_REWARD_MODEL: serving an untrained value head on %s", policy_dir)
    if not ppm_dir.exists():
        build_ppm_dir(policy_dir, ppm_dir)
    return str(ppm_dir)


def main() -> None:
    server_settings = ServerSettings.from_env("reward")
    configure_logging(server_settings.log_level)
    settings = RewardServiceSettings.from_env()
    models = ModelStoreSettings.from_env()
    service = RewardService(max_in_flight=server_settings.max_in_flight)

    def load() -> PPMRewardModel:
        return PPMRewardModel.from_dir(
            _ppm_dir(models), dtype=settings.dtype, max_batch_size=settings.max_batch_size,
            batch_window_s=settings.batch_window_s, num_threads=settings.num_threads)

    if not asyncio.run(serve(service, server_settings, lambda: asyncio.to_thread(load))):
        sys.exit(1)


if __name__ == "__main__":
    main()
