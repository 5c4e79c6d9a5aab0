"""Async gRPC clients implementing the core ports: the search's view of the services.

`GrpcPolicyClient` (`PolicyModel`), `GrpcRewardClient` (`RewardModel`) and
`GrpcExecutorClient` (`CodeExecutor`) share one behaviour:

* Deadline: every call has one (`ClientSettings.deadline_s`), covering all its attempts.
* Retries: UNAVAILABLE (no replica reachable, loading, draining) and RESOURCE_EXHAUSTED
  (a replica is full) are retried with exponential backoff and jitter until the deadline;
  a stream (`GrpcPolicyClient.generate_stream`) only until its first message.
  DEADLINE_EXCEEDED of one attempt (`attempt_timeout_s`) is retried too, which is only
  right because every rstar.v1 RPC is idempotent; a non-idempotent RPC must not be.
  Other codes (INVALID_ARGUMENT, ...) are raised at once as `grpc.aio.AioRpcError`.
* Load balancing: the channel uses gRPC's ``round_robin`` over every address of the
  target, with health checking (``healthCheckConfig``), so replicas that are loading or
  draining (NOT_SERVING) get no calls. Targets: ``host:port`` and ``dns:///host:port``
  (every address of the name, re-resolved when connections drop) or a comma-separated
  list ``host1:port1,host2:port2`` (resolved once, here, into an ``ipv4:``/``ipv6:``
  target).
* `model_version` is the version of the last response seen; `refresh_model_version()`
  asks a replica (an empty batch) so the version is known before the first real call.
* TLS: with `ClientSettings.tls` (``RSTAR_TLS_*``) the channel verifies the server's
  certificate (against ``RSTAR_TLS_CA``, else the system's roots) and presents the
  client certificate, if one is set, for servers that require mutual TLS. A failed
  handshake is UNAVAILABLE, retried like any unreachable replica until the deadline.

A client belongs to one event loop at a time; used from a new loop (sequential
`asyncio.run` calls) it opens a new channel there.

Not here: authentication beyond the client certificate, client-side batching (the
servers batch concurrent calls).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
import socket
from typing import Any, AsyncIterator, ClassVar, Sequence

import grpc

from rstar_core.ports import Completion, ExecutionResult, GenerationRequest, ScoringItem

from .converters import (
    completion_from_proto,
    execution_result_from_proto,
    generation_request_to_proto,
    run_request_to_proto,
    scoring_items_to_proto,
)
from .gen.rstar.v1 import (
    executor_pb2,
    executor_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
    reward_pb2,
    reward_pb2_grpc,
)
from .server import MAX_MESSAGE_BYTES
from .settings import ClientSettings

__all__ = ["GrpcExecutorClient", "GrpcPolicyClient", "GrpcRewardClient", "channel_target"]

log = logging.getLogger(__name__)

_RETRYABLE = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
})


def channel_target(target: str) -> str:
    """The gRPC target for `target`; a comma-separated list becomes one multi-address target."""
    target = target.strip()
    if "," not in target:
        return target
    addresses = [_resolve(entry.strip()) for entry in target.split(",") if entry.strip()]
    families = {family for family, _ in addresses}
    if len(families) != 1:
        raise ValueError(f"target {target!r} mixes IPv4 and IPv6 addresses")
    family = families.pop()
    return f"{family}:" + ",".join(address for _, entry in addresses for address in entry)


def _resolve(entry: str) -> tuple[str, list[str]]:
    host, sep, port = entry.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"address {entry!r} must be host:port")
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        # Prefer IPv4 (localhost resolves to both), keep every address of that family.
        v4 = [i[4][0] for i in infos if i[0] == socket.AF_INET]
        ips = list(dict.fromkeys(v4 or [i[4][0] for i in infos]))
        return ("ipv4" if v4 else "ipv6"), [_join(ip, port) for ip in ips]
    return ("ipv4" if ip.version == 4 else "ipv6"), [_join(str(ip), port)]


def _join(ip: str, port: str) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class _Retry:
    """Deadline and exponential backoff of one call across its attempts."""

    def __init__(self, settings: ClientSettings, what: str) -> None:
        self._settings = settings
        self._what = what
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + settings.deadline_s
        self._backoff = settings.initial_backoff_s
        self._attempt = 1

    def timeout(self) -> float:
        remaining = self._deadline - self._loop.time()
        limit = self._settings.attempt_timeout_s
        return remaining if limit is None else min(remaining, limit)

    async def pause_or_raise(self, exc: grpc.aio.AioRpcError) -> None:
        """Sleep before the next attempt, or re-raise `exc` when it is final."""
        pause = min(self._backoff, self._settings.max_backoff_s) * random.uniform(0.8, 1.2)
        if exc.code() not in _RETRYABLE or self._loop.time() + pause >= self._deadline:
            raise exc
        log.debug("%s attempt %d: %s (%s); retrying in %.2fs", self._what, self._attempt,
                  exc.code().name, exc.details(), pause)
        await asyncio.sleep(pause)
        self._backoff *= 2
        self._attempt += 1


class _GrpcClient:
    """Channel per event loop, deadline, retries, last seen model version."""

    _service: ClassVar[str]
    _stub_class: ClassVar[type]

    def __init__(self, settings: ClientSettings | str) -> None:
        self.settings = ClientSettings(target=settings) if isinstance(settings, str) else settings
        self._target = channel_target(self.settings.target)
        service_config = {
            "loadBalancingConfig": [{"round_robin": {}}],
            "healthCheckConfig": {"serviceName": self._service},
        }
        self._options = [
            ("grpc.service_config", json.dumps(service_config)),
            ("grpc.initial_reconnect_backoff_ms", int(self.settings.reconnect_backoff_s * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(self.settings.max_reconnect_backoff_s * 1000)),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            *self.settings.tls.channel_options(),
        ]
        # Read once, here: a missing certificate file is an error at construction.
        self._credentials = (self.settings.tls.channel_credentials()
                             if self.settings.tls.enabled else None)
        self._channel: grpc.aio.Channel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stub: Any = None
        self._model_version = ""

    @property
    def model_version(self) -> str:
        """The version in the last response ("" before the first one)."""
        return self._model_version

    def _current_stub(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._channel is None or self._loop is not loop:
            # An aio channel is bound to the loop that created it.
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self._target, options=self._options)
            else:
                self._channel = grpc.aio.secure_channel(self._target, self._credentials,
                                                        options=self._options)
            self._loop = loop
            self._stub = self._stub_class(self._channel)
        return self._stub

    async def _call(self, method: str, request: Any) -> Any:
        retry = _Retry(self.settings, f"{self._service}.{method}")
        while True:
            try:
                response = await getattr(self._current_stub(), method)(request, timeout=retry.timeout())
            except grpc.aio.AioRpcError as exc:
                await retry.pause_or_raise(exc)
                continue
            self._model_version = response.model_version
            return response

    async def _stream(self, method: str, request: Any) -> AsyncIterator[Any]:
        """A server stream; retried like `_call`, but only before its first message
        (the caller has used what came before a failure)."""
        retry = _Retry(self.settings, f"{self._service}.{method}")
        while True:
            call = getattr(self._current_stub(), method)(request, timeout=retry.timeout())
            received = False
            try:
                async for response in call:
                    received = True
                    self._model_version = response.model_version
                    yield response
                return
            except grpc.aio.AioRpcError as exc:
                if received:
                    raise
                await retry.pause_or_raise(exc)
            finally:
                # A consumer that stops early must not leave the server generating.
                call.cancel()

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and self._loop is asyncio.get_running_loop():
            await channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class GrpcPolicyClient(_GrpcClient):
    """`PolicyModel` over PolicyService."""

    _service = "rstar.v1.PolicyService"
    _stub_class = policy_pb2_grpc.PolicyServiceStub

    async def generate(self, request: GenerationRequest) -> list[Completion]:
        response = await self._call("Generate", generation_request_to_proto(request))
        return [completion_from_proto(c) for c in response.completions]

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[Completion]:
        message = policy_pb2.GenerateStreamRequest(request=generation_request_to_proto(request))
        async for response in self._stream("GenerateStream", message):
            yield completion_from_proto(response.completion)

    async def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        if not requests:
            return []
        message = policy_pb2.GenerateBatchRequest(requests=[generation_request_to_proto(r) for r in requests])
        response = await self._call("GenerateBatch", message)
        _check_count("GenerateBatch", len(requests), len(response.results))
        return [[completion_from_proto(c) for c in result.completions] for result in response.results]

    async def refresh_model_version(self) -> str:
        await self._call("GenerateBatch", policy_pb2.GenerateBatchRequest())
        return self._model_version


class GrpcRewardClient(_GrpcClient):
    """`RewardModel` over RewardService."""

    _service = "rstar.v1.RewardService"
    _stub_class = reward_pb2_grpc.RewardServiceStub

    async def score(self, items: Sequence[ScoringItem]) -> list[float]:
        if not items:
            return []
        response = await self._call("Score", reward_pb2.ScoreRequest(items=scoring_items_to_proto(items)))
        _check_count("Score", len(items), len(response.scores))
        return list(response.scores)

    async def refresh_model_version(self) -> str:
        await self._call("Score", reward_pb2.ScoreRequest())
        return self._model_version


class GrpcExecutorClient(_GrpcClient):
    """`CodeExecutor` over ExecutorService.

    Set `deadline_s` above the longest `timeout_s` passed plus queueing time: a call whose
    deadline passes raises DEADLINE_EXCEEDED rather than returning a TIMEOUT result.
    """

    _service = "rstar.v1.ExecutorService"
    _stub_class = executor_pb2_grpc.ExecutorServiceStub

    async def run(self, code: str, *, timeout_s: float | None = None) -> ExecutionResult:
        response = await self._call("Run", run_request_to_proto(code, timeout_s))
        return execution_result_from_proto(response.result)

    async def run_batch(self, codes: Sequence[str], *, timeout_s: float | None = None) -> list[ExecutionResult]:
        if not codes:
            return []
        message = executor_pb2.RunBatchRequest(runs=[run_request_to_proto(c, timeout_s) for c in codes])
        response = await self._call("RunBatch", message)
        _check_count("RunBatch", len(codes), len(response.results))
        return [execution_result_from_proto(r) for r in response.results]

    async def refresh_model_version(self) -> str:
        await self._call("RunBatch", executor_pb2.RunBatchRequest())
        return self._model_version


def _check_count(method: str, sent: int, received: int) -> None:
    if sent != received:
        raise RuntimeError(f"{method}: sent {sent} items, the server answered {received}")
