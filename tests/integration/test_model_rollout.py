"""Promoting a PPM version rolls the running reward service onto it (real model, real service process).

A stack of only the reward service, started by the launcher as `make up` starts it, on two
untrained PPMs of the small model (different heads, so different versions) registered in
a model store in tmp_path with a SQLite store. `rstar models promote` and `rollback` must
restart the service on the version they name, and its responses must carry that version.
"""

from __future__ import annotations

import argparse
import json
import random
import socket

import grpc
import pytest

from rstar_cli.launcher import STATE_FILE, StackSpec, spawn_service, stack_env, stop_stack, wait_healthy
from rstar_cli.models_cmd import add_models_subcommands
from rstar_models.registry import ModelRegistry
from rstar_reward import build_ppm_dir
from rstar_rpc.gen.rstar.v1 import reward_pb2, reward_pb2_grpc
from rstar_store import Store, migrate

pytestmark = pytest.mark.slow


def _free_base_port() -> int:
    # The reward replica listens on base + 1 and serves metrics on base + 10001.
    for _ in range(100):
        base = random.randrange(20000, 45000)
        try:
            for port in (base + 1, base + 10001):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free ports")


def _served_version(port: int) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = reward_pb2_grpc.RewardServiceStub(channel).Score(
            reward_pb2.ScoreRequest(items=[reward_pb2.ScoringItem(
                question="What is 2 + 2?", steps=["# Add.\nprint(2 + 2)\nOutput: 4"])]),
            timeout=60)
    assert len(reply.scores) == 1 and -1 <= reply.scores[0] <= 1
    return reply.model_version


def _rstar_models(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="rstar")
    add_models_subcommands(parser.add_subparsers().add_parser("models").add_subparsers())
    args = parser.parse_args(["models", *argv])
    return args.func(args)


def test_promote_and_rollback_roll_the_reward_service(model_dir, tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'rstar.db'}"
    migrate(url)
    monkeypatch.setenv("RSTAR_DATABASE_URL", url)
    monkeypatch.setenv("RSTAR_MODEL_STORE", str(tmp_path / "store"))
    store = Store.from_url(url)
    store.get_or_create_run("evo")
    registry = ModelRegistry(tmp_path / "store", store)
    first = registry.register(build_ppm_dir(model_dir, tmp_path / "ppm-a", seed=0), kind="ppm", round=2, run="evo")
    second = registry.register(build_ppm_dir(model_dir, tmp_path / "ppm-b", seed=1), kind="ppm", round=3, run="evo",
                               parent=first.version)
    assert first.version != second.version
    registry.promote(first.version)

    spec = StackSpec(run_dir=tmp_path / "stack", base_port=_free_base_port(), with_reward=True,
                     env={"RSTAR_REWARD_MODEL": first.path, "RSTAR_LOG_LEVEL": "INFO"})
    port = spec.base_port + 1
    spec.run_dir.mkdir()
    # The launcher's state for a stack of just the reward service (start_stack would also
    # start the policy engine and the executor, which this test does not need).
    (spec.run_dir / STATE_FILE).write_text(
        json.dumps({"pids": {}, "env": stack_env(spec), "ports": {"reward": [port]}}))
    spawn_service(spec, "reward")
    try:
        wait_healthy(spec, timeout_s=300)
        assert _served_version(port) == first.version
        capsys.readouterr()

        assert _rstar_models("promote", second.version, "--run-dir", str(spec.run_dir), "--grace", "10") == 0
        assert f"reward now serves {second.version} (RSTAR_REWARD_MODEL={second.path})" in capsys.readouterr().out
        assert _served_version(port) == second.version
        state = json.loads((spec.run_dir / STATE_FILE).read_text())
        assert state["env"]["RSTAR_REWARD_MODEL"] == second.path

        assert _rstar_models("rollback", "ppm", "--run-dir", str(spec.run_dir), "--grace", "10") == 0
        assert f"reward now serves {first.version}" in capsys.readouterr().out
        assert _served_version(port) == first.version
        assert (store.promoted_model("ppm").version, store.get_model_version(second.version).status) == (
            first.version, "rejected")
    finally:
        stop_stack(spec.run_dir, grace_s=10)
        store.close()
