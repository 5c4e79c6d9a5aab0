"""PolicyService: the vLLM policy engine behind gRPC.

`python -m rstar_policy.service` serves `rstar.v1.PolicyService` over one `VLLMPolicy`.
Every prompt becomes one engine request with n samples (GenerateStream sends each sample
as soon as it is finished); the engine batches concurrent calls (continuous batching) and
shares prompt prefixes between them (prefix cache), so this module only validates, admits
(``RSTAR_POLICY_MAX_IN_FLIGHT`` counts samples) and converts. Request errors the engine
finds (a prompt longer than the context, greedy sampling with n > 1) are
INVALID_ARGUMENT; a dead engine turns the service NOT_SERVING and ends the process so
that it is restarted.

Which model: ``RSTAR_MODEL`` names a version in the model store ``RSTAR_MODEL_STORE``
(``<store>/<version>/``, written by the trainer's registry), a directory, or a Hub id;
empty means the bundled small model, prepared into ``RSTAR_MODEL_CACHE`` on first use.
Every response carries the version from the directory's manifest.

Rolling out a new version (drain-and-restart; a process never swaps weights in place, so
each response's `model_version` is exact):
1. The trainer registers version V in the model store.
2. The orchestrator starts replicas with ``RSTAR_MODEL=V``. They listen at once but stay
   NOT_SERVING until the engine is loaded and a warm-up generation worked; clients'
   health-checked round robin sends them nothing before that.
3. It sends SIGTERM to the old replicas. Each turns NOT_SERVING (clients stop picking it;
   calls that still arrive get UNAVAILABLE and are retried on another replica), lets the
   calls in flight finish within ``RSTAR_SHUTDOWN_GRACE_S``, shuts the engine down and
   exits. (Compose: change ``RSTAR_MODEL`` and ``docker compose up -d policy``; Kubernetes:
   a rolling update with ``maxUnavailable: 0`` and the gRPC readiness probe.)
Searches record the version of the responses they got; run a round's searches against
one version by rolling out between rounds.

Environment (besides the server's, see `rstar_rpc.settings`): ``RSTAR_MAX_MODEL_LEN``
(4096), ``RSTAR_CPU_KVCACHE_GIB`` (4), ``RSTAR_POLICY_SEED`` (engine seed, 0),
``RSTAR_POLICY_MAX_N`` (largest n per prompt, 64), ``RSTAR_POLICY_DTYPE`` (unset: bf16, or
float32 on CPUs without AVX-512; see `rstar_models.hardware`), ``RSTAR_ENFORCE_EAGER`` (default 0: the
model is compiled, about a minute more start-up for faster serving; 1 for a quick start),
``RSTAR_POLICY_REQUEST_LOG``
(a JSONL path: log every request's prompt and sample lengths, for replay benchmarks).

Not here: the engine (`rstar_policy.engine`), preparing models (`rstar_models.store`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from typing import AsyncIterator, Mapping

import grpc
from prometheus_client import Counter
from vllm.exceptions import VLLMClientError
from vllm.v1.engine.exceptions import EngineDeadError

from rstar_core.ports import Completion, GenerationRequest
from rstar_policy.engine import EngineSettings, VLLMPolicy, enforce_eager_from_env
from rstar_models.store import prepare_model
from rstar_policy.recording import RecordingPolicy
from rstar_rpc.converters import completion_to_proto, generation_request_from_proto
from rstar_rpc.gen.rstar.v1 import policy_pb2, policy_pb2_grpc
from rstar_rpc.server import RpcService, ServiceError, configure_logging, invalid_argument, rpc, serve
from rstar_rpc.settings import ModelStoreSettings, ServerSettings

__all__ = ["PolicyService", "PolicyServiceSettings", "main"]

log = logging.getLogger(__name__)

_WARM_UP = GenerationRequest(prompt="6 * 7 =", n=1, temperature=0.0, max_tokens=2)


@dataclass(frozen=True)
class PolicyServiceSettings:
    """The engine knobs of the service (the model itself comes from ModelStoreSettings)."""

    max_model_len: int = 4096
    cpu_kvcache_gib: int = 4
    seed: int = 0
    max_n: int = 64
    enforce_eager: bool = False
    dtype: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PolicyServiceSettings:
        env = os.environ if env is None else env
        return cls(
            max_model_len=int(env.get("RSTAR_MAX_MODEL_LEN", 4096)),
            cpu_kvcache_gib=int(env.get("RSTAR_CPU_KVCACHE_GIB", 4)),
            seed=int(env.get("RSTAR_POLICY_SEED", 0)),
            max_n=int(env.get("RSTAR_POLICY_MAX_N", 64)),
            enforce_eager=enforce_eager_from_env(env, default=False),
            dtype=env.get("RSTAR_POLICY_DTYPE") or None,
        )

    def engine(self, model: str) -> EngineSettings:
        return EngineSettings(model=model, max_model_len=self.max_model_len, seed=self.seed,
                              cpu_kvcache_gib=self.cpu_kvcache_gib, enforce_eager=self.enforce_eager,
                              dtype=self.dtype)


class PolicyService(RpcService[VLLMPolicy], policy_pb2_grpc.PolicyServiceServicer):
    """`rstar.v1.PolicyService` over a `VLLMPolicy`."""

    name = "rstar.v1.PolicyService"

    def __init__(self, *, max_in_flight: int = 256, max_n: int = 64) -> None:
        super().__init__(max_in_flight=max_in_flight)
        self.max_n = max_n
        registry = self.metrics.registry
        self._prompts = Counter("rstar_policy_prompts_total", "Prompts sampled from.", registry=registry)
        self._tokens = Counter("rstar_policy_generated_tokens_total", "Tokens generated.", registry=registry)
        self._completions = Counter("rstar_policy_completions_total", "Completions, by finish reason.",
                                    ["finish_reason"], registry=registry)

    def register(self, server: grpc.aio.Server) -> None:
        policy_pb2_grpc.add_PolicyServiceServicer_to_server(self, server)

    @property
    def model_version(self) -> str:
        return self._backend.model_version if self._backend is not None else ""

    async def warm_up(self, backend: VLLMPolicy) -> None:
        completions = await backend.generate(_WARM_UP)
        if len(completions) != 1 or completions[0].num_tokens < 1:
            raise RuntimeError(f"policy warm-up returned {completions!r}")

    async def close_backend(self, backend: VLLMPolicy) -> None:
        backend.shutdown()

    @rpc
    async def Generate(self, request: policy_pb2.GenerateRequest, context) -> policy_pb2.GenerateResponse:
        with invalid_argument():
            generation = self._parse(request, "")
        with self.admit(generation.n):
            async with self._engine_errors():
                completions = await self.backend.generate(generation)
        self._prompts.inc()
        self._count(completions)
        return policy_pb2.GenerateResponse(completions=[completion_to_proto(c) for c in completions],
                                           model_version=self.model_version)

    @rpc
    async def GenerateStream(self, request: policy_pb2.GenerateStreamRequest,
                             context) -> AsyncIterator[policy_pb2.GenerateStreamResponse]:
        with invalid_argument():
            generation = self._parse(request.request, "request.")
        with self.admit(generation.n):
            self._prompts.inc()
            async with self._engine_errors():
                async for completion in self.backend.generate_stream(generation):
                    self._count([completion])
                    yield policy_pb2.GenerateStreamResponse(completion=completion_to_proto(completion),
                                                            model_version=self.model_version)

    @rpc
    async def GenerateBatch(self, request: policy_pb2.GenerateBatchRequest,
                            context) -> policy_pb2.GenerateBatchResponse:
        with invalid_argument():
            generations = [self._parse(r, f"requests[{i}].") for i, r in enumerate(request.requests)]
        with self.admit(sum(g.n for g in generations)):
            async with self._engine_errors():
                results = await asyncio.gather(*(self.backend.generate(g) for g in generations))
        self._prompts.inc(len(results))
        for completions in results:
            self._count(completions)
        return policy_pb2.GenerateBatchResponse(
            results=[policy_pb2.CompletionList(completions=[completion_to_proto(c) for c in r]) for r in results],
            model_version=self.model_version)

    def _parse(self, message: policy_pb2.GenerateRequest, field: str) -> GenerationRequest:
        generation = generation_request_from_proto(message, field=field)
        if generation.n > self.max_n:
            raise ValueError(f"{field}n must be at most {self.max_n}, got {generation.n}")
        return generation

    @contextlib.asynccontextmanager
    async def _engine_errors(self) -> AsyncIterator[None]:
        try:
            yield
        except VLLMClientError as exc:  # vLLM's own request validation (prompt too long, ...)
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        except EngineDeadError as exc:
            await self.fail(f"the vLLM engine died: {exc}")
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, "the policy engine died") from exc

    def _count(self, completions: list[Completion]) -> None:
        for completion in completions:
            self._tokens.inc(completion.num_tokens)
            self._completions.labels(completion.finish_reason).inc()


def main() -> None:
    server_settings = ServerSettings.from_env("policy")
    configure_logging(server_settings.log_level)
    settings = PolicyServiceSettings.from_env()
    models = ModelStoreSettings.from_env()
    service = PolicyService(max_in_flight=server_settings.max_in_flight, max_n=settings.max_n)

    def load() -> VLLMPolicy:
        if models.policy_model:
            model = models.resolve(models.policy_model, allow_hub_id=True)
        else:
            model = str(prepare_model())
        log.info("loading policy model %s", model)
        # Built off the event loop so health checks are answered during the load; vLLM
        # starts its output handler on the first request, in the serving loop.
        engine = VLLMPolicy(settings.engine(model))
        request_log = os.environ.get("RSTAR_POLICY_REQUEST_LOG")
        return RecordingPolicy(engine, request_log) if request_log else engine

    if not asyncio.run(serve(service, server_settings, lambda: asyncio.to_thread(load))):
        sys.exit(1)


if __name__ == "__main__":
    main()
