"""Proto <-> core conversions, request validation and the RSTAR_* settings (no server)."""

from __future__ import annotations

import pytest

from rstar_core.ports import Completion, ExecutionResult, ExecutionStatus, GenerationRequest, ScoringItem
from rstar_rpc import ClientSettings, ModelStoreSettings, ServerSettings
from rstar_rpc.converters import (
    completion_from_proto,
    completion_to_proto,
    execution_result_from_proto,
    execution_result_to_proto,
    generation_request_from_proto,
    generation_request_to_proto,
    scoring_items_from_proto,
    scoring_items_to_proto,
)
from rstar_rpc.gen.rstar.v1 import executor_pb2, policy_pb2


@pytest.mark.parametrize("request_", [
    GenerationRequest(prompt="p", n=3, temperature=0.0, top_p=0.9, max_tokens=7, stop=("\n#", "Output:"),
                      seed=11, logprobs=5),
    GenerationRequest(prompt="q"),
])
def test_generation_request_round_trip(request_):
    assert generation_request_from_proto(generation_request_to_proto(request_)) == request_


@pytest.mark.parametrize("completion", [
    Completion("x = 1", "stop", stop_string="\n#", num_tokens=4, token_confidence=0.75),
    Completion("", "length", num_tokens=0),
])
def test_completion_round_trip(completion):
    assert completion_from_proto(completion_to_proto(completion)) == completion


def test_execution_result_round_trip():
    for status in ExecutionStatus:
        result = ExecutionResult(status=status, stdout="o", stderr="e", exit_code=-9, duration_s=0.5, error="why")
        assert execution_result_from_proto(execution_result_to_proto(result)) == result
    assert execution_result_from_proto(executor_pb2.ExecutionResult()).exit_code is None


def test_scoring_items_round_trip():
    items = [ScoringItem("q", ()), ScoringItem("q", ("a", "b"))]
    assert scoring_items_from_proto(scoring_items_to_proto(items)) == items
    with pytest.raises(ValueError, match=r"items\[1\]\.question must not be empty"):
        scoring_items_from_proto(scoring_items_to_proto([ScoringItem("q", ()), ScoringItem("", ())]))


@pytest.mark.parametrize(("changes", "message"), [
    ({"prompt": ""}, "prompt must not be empty"),
    ({"n": 0}, "n must be >= 1"),
    ({"max_tokens": 0}, "max_tokens must be >= 1"),
    ({"temperature": -1.0}, "temperature must be >= 0"),
    ({"temperature": float("inf")}, "temperature must be finite"),
    ({"top_p": 0.0}, "top_p must be in"),
    ({"logprobs": -1}, "logprobs must be >= 0"),
    ({"stop": ["ok", ""]}, r"stop\[1\] must not be empty"),
])
def test_generate_request_validation_names_the_field(changes, message):
    fields = {"prompt": "p", "n": 1, "temperature": 0.7, "top_p": 1.0, "max_tokens": 8, **changes}
    with pytest.raises(ValueError, match=r"^requests\[2\]\." + message):
        generation_request_from_proto(policy_pb2.GenerateRequest(**fields), field="requests[2].")


def test_server_settings_from_env():
    settings = ServerSettings.from_env("reward", {
        "RSTAR_REWARD_PORT": "6000", "RSTAR_REWARD_METRICS_PORT": "0", "RSTAR_GRPC_HOST": "127.0.0.1",
        "RSTAR_REWARD_MAX_IN_FLIGHT": "8", "RSTAR_SHUTDOWN_GRACE_S": "2.5"})
    assert settings == ServerSettings(service="reward", host="127.0.0.1", port=6000, metrics_port=None,
                                      max_in_flight=8, grace_s=2.5)
    defaults = ServerSettings.from_env("policy", {})
    assert (defaults.port, defaults.metrics_port, defaults.host) == (50051, 9101, "[::]")
    with pytest.raises(ValueError, match="service must be one of"):
        ServerSettings.from_env("trainer", {})
    with pytest.raises(ValueError, match="port must be"):
        ServerSettings(service="policy", port=70000)


def test_client_settings_from_env():
    settings = ClientSettings.from_env("executor", {
        "RSTAR_EXECUTOR_ADDR": "dns:///executor:50053", "RSTAR_EXECUTOR_DEADLINE_S": "12",
        "RSTAR_RPC_ATTEMPT_TIMEOUT_S": "4"})
    assert (settings.target, settings.deadline_s, settings.attempt_timeout_s) == ("dns:///executor:50053", 12.0, 4.0)
    assert ClientSettings.from_env("policy", {}).target == "localhost:50051"
    with pytest.raises(ValueError, match="deadline_s must be a positive"):
        ClientSettings(target="x:1", deadline_s=0)


def test_model_store_resolution(tmp_path):
    (tmp_path / "store" / "policy@abc").mkdir(parents=True)
    models = ModelStoreSettings.from_env({"RSTAR_MODEL_STORE": str(tmp_path / "store"), "RSTAR_MODEL": "policy@abc"})
    assert models.resolve(models.policy_model) == str(tmp_path / "store" / "policy@abc")
    assert models.resolve(str(tmp_path / "store")) == str(tmp_path / "store")
    assert models.resolve("Qwen/Qwen2.5-Math-1.5B", allow_hub_id=True) == "Qwen/Qwen2.5-Math-1.5B"
    with pytest.raises(ValueError, match="neither a directory nor a version"):
        models.resolve("policy@missing")
    with pytest.raises(ValueError, match="neither a directory nor a version"):
        models.resolve("Qwen/Qwen2.5-Math-1.5B")
