"""Embedded mode: the three ports as in-process implementations, for `rstar solve` and tests.

Builds the vLLM policy engine, the process sandbox and (only when the config needs one)
the PPM in this process. This is the one place outside the services that imports them
all; the distributed mode replaces each with a gRPC client implementing the same port.
"""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

from rstar_core.config import SearchConfig
from rstar_core.mcts import MCTS
from rstar_core.ports import CodeExecutor, PolicyModel, RewardModel

__all__ = ["EmbeddedSettings", "NoPolicyEngine", "embedded_runtime"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedSettings:
    """Wiring for embedded mode, read once from `RSTAR_*` environment variables."""

    # A model directory or Hub id; empty = the default small model, prepared on first use.
    model: str = ""
    # A PPM directory (value head + backbone); empty = an untrained head on the policy.
    reward_model: str = ""
    model_cache: str = ""
    max_model_len: int = 4096
    cpu_kvcache_gib: int = 4
    # Embedded runs are often one-off questions: skip compilation unless asked
    # (RSTAR_ENFORCE_EAGER=0 compiles: about a minute more start-up, faster steps).
    enforce_eager: bool = True
    # Policy compute type; None = bf16, or float32 on CPUs without AVX-512 (rstar_models.hardware).
    policy_dtype: str | None = None

    @classmethod
    def from_env(cls) -> "EmbeddedSettings":
        from rstar_policy.engine import enforce_eager_from_env

        env = os.environ
        return cls(
            model=env.get("RSTAR_MODEL", ""),
            reward_model=env.get("RSTAR_REWARD_MODEL", ""),
            model_cache=env.get("RSTAR_MODEL_CACHE", ""),
            max_model_len=int(env.get("RSTAR_MAX_MODEL_LEN", "4096")),
            cpu_kvcache_gib=int(env.get("RSTAR_CPU_KVCACHE_GIB", "4")),
            enforce_eager=enforce_eager_from_env(env, default=True),
            policy_dtype=env.get("RSTAR_POLICY_DTYPE") or None,
        )


@dataclass
class Runtime:
    policy: PolicyModel
    executor: CodeExecutor
    reward: RewardModel | None

    def mcts(self, config: SearchConfig) -> MCTS:
        return MCTS(self.policy, self.executor, config, reward=self.reward)


class NoPolicyEngine:
    """The policy of a runtime that generates nothing (every sample it needs is drawn already):
    it knows its version, and any request for a new step is an error, not a silent start."""

    _REFUSAL = "this runtime started no policy engine (every sample was drawn already), yet a search asked it for steps"

    def __init__(self, model: str) -> None:
        from rstar_policy.engine import served_version

        self._version = served_version(model)

    @property
    def model_version(self) -> str:
        return self._version

    async def generate(self, request):
        raise RuntimeError(self._REFUSAL)

    def generate_stream(self, request):
        raise RuntimeError(self._REFUSAL)

    def shutdown(self) -> None:
        pass


@asynccontextmanager
async def embedded_runtime(config: SearchConfig, settings: EmbeddedSettings | None = None, *,
                           policy_engine: bool = True) -> AsyncIterator[Runtime]:
    """The policy engine, the sandbox and (when `config` needs one) the reward model, in this
    process. `policy_engine=False`: no vLLM engine (a caller that only scores samples drawn
    before saves its start-up); the runtime's policy then only reports its version."""
    from rstar_executor import SandboxExecutor
    from rstar_policy.engine import EngineSettings, VLLMPolicy
    from rstar_models.store import prepare_model

    settings = settings or EmbeddedSettings.from_env()
    model_dir = settings.model if settings.model else str(prepare_model(cache_dir=settings.model_cache or None))
    executor = SandboxExecutor()
    if policy_engine:
        policy = VLLMPolicy(EngineSettings(model=model_dir, seed=config.seed, max_model_len=settings.max_model_len,
                                           cpu_kvcache_gib=settings.cpu_kvcache_gib,
                                           enforce_eager=settings.enforce_eager, dtype=settings.policy_dtype))
    else:
        policy = NoPolicyEngine(model_dir)
    reward = None
    try:
        if config.needs_reward_model:
            reward = _load_reward(settings, model_dir)
        yield Runtime(policy, executor, reward)
    finally:
        if reward is not None:
            await reward.close()
        policy.shutdown()
        await executor.close()


def _load_reward(settings: EmbeddedSettings, policy_dir: str):
    from rstar_reward import PPMRewardModel, build_ppm_dir

    ppm_dir = settings.reward_model
    if not ppm_dir:
        ppm_dir = str(Path(policy_dir).with_name(Path(policy_dir).name + "-ppm-untrained"))
        if not Path(ppm_dir).exists():
            log.warning("no RSTAR_REWARD_MODEL set: using an untrained value head on the policy")
            build_ppm_dir(policy_dir, ppm_dir)
    return PPMRewardModel.from_dir(ppm_dir)
