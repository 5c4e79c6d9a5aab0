"""`rstar models list | show | promote | rollback` against a SQLite store and a model store in tmp_path.

The commands are added to a parser built here, as `build_parser` adds them under
`rstar models`; errors are reported the way `rstar_cli.main.main` reports them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rstar_cli.launcher import STATE_FILE, roll_service
from rstar_cli.main import UsageError
from rstar_cli.models_cmd import add_models_subcommands
from rstar_models.registry import ModelRegistry
from rstar_store import Store, migrate


@pytest.fixture
def env(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'rstar.db'}"
    migrate(url)
    monkeypatch.setenv("RSTAR_DATABASE_URL", url)
    monkeypatch.setenv("RSTAR_MODEL_STORE", str(tmp_path / "store"))
    store = Store.from_url(url)
    store.get_or_create_run("evo")
    registry = ModelRegistry(tmp_path / "store", store)
    yield registry
    store.close()


def register(registry: ModelRegistry, tmp_path: Path, weights: bytes, kind: str = "policy", round: int = 1,
             **kwargs):
    src = tmp_path / "out" / weights.decode()
    src.mkdir(parents=True)
    (src / "model.safetensors").write_bytes(weights)
    return registry.register(src, kind=kind, round=round, run="evo", **kwargs)


def rstar_models(capsys, *argv: str) -> tuple[int, list[str], list[str]]:
    parser = argparse.ArgumentParser(prog="rstar")
    sub = parser.add_subparsers()
    add_models_subcommands(sub.add_parser("models").add_subparsers())
    args = parser.parse_args(["models", *argv])
    try:
        code = args.func(args)
    except UsageError as exc:
        print(f"rstar: error: {exc}", file=sys.stderr)
        code = 2
    out = capsys.readouterr()
    return code, out.out.splitlines(), out.err.splitlines()


def test_list_prints_a_table_newest_first(env, tmp_path, capsys):
    p1 = register(env, tmp_path, b"one", metrics={"loss": 0.123456, "steps": 10, "gsm8k_acc": 0.5, "epochs": 2})
    m1 = register(env, tmp_path, b"two", kind="ppm", round=2, parent=p1.version, metrics={"pair_acc": 0.75})

    code, out, _ = rstar_models(capsys, "list")

    assert code == 0
    assert out[0].split() == ["VERSION", "KIND", "ROUND", "STATUS", "RUN", "PARENT", "METRICS", "CREATED"]
    assert out[1].split()[:6] == [m1.version, "ppm", "2", "candidate", "evo", p1.version]
    assert "pair_acc=0.75" in out[1]
    assert out[2].split()[:5] == [p1.version, "policy", "1", "candidate", "evo"]
    assert "loss=0.1235 steps=10 gsm8k_acc=0.5 ..." in out[2]

    assert [line.split()[0] for line in rstar_models(capsys, "list", "--kind", "ppm")[1][1:]] == [m1.version]
    assert rstar_models(capsys, "list", "--kind", "orm")[1] == ["no model versions"]


def test_show_prints_the_record_and_the_manifest(env, tmp_path, capsys):
    info = register(env, tmp_path, b"one", train_config={"lr": 1e-5})

    code, out, _ = rstar_models(capsys, "show", info.version)

    shown = json.loads("\n".join(out))
    assert code == 0 and shown["version"] == info.version and shown["train_config"] == {"lr": 1e-5}
    assert shown["manifest"]["version"] == info.version and shown["manifest"]["kind"] == "policy"


def test_promote_without_a_local_stack_prints_the_compose_and_kubernetes_commands(env, tmp_path, capsys):
    info = register(env, tmp_path, b"one", kind="ppm")

    code, out, _ = rstar_models(capsys, "promote", info.version, "--run-dir", str(tmp_path / "no-stack"))

    assert code == 0
    assert out[0] == f"promoted ppm {info.version}"
    assert f"no local stack runs a reward service in {tmp_path / 'no-stack'}: nothing restarted" in out
    assert f"compose:    RSTAR_REWARD_MODEL={info.version} docker compose up -d --no-deps reward" in out
    assert f"kubernetes: kubectl -n rstar set env deployment/reward RSTAR_REWARD_MODEL={info.version}" in out
    assert env.get(info.version).status == "promoted"


def test_promote_and_rollback_change_the_promoted_version(env, tmp_path, capsys):
    p1 = register(env, tmp_path, b"one")
    p2 = register(env, tmp_path, b"two", round=2)
    rstar_models(capsys, "promote", p1.version, "--no-rollout")

    code, out, _ = rstar_models(capsys, "promote", p2.version, "--no-rollout")
    assert code == 0 and out[0] == f"promoted policy {p2.version}"
    assert f"compose:    RSTAR_MODEL={p2.version} docker compose up -d --no-deps policy" in out
    assert f"kubernetes: kubectl -n rstar set env deployment/policy RSTAR_MODEL={p2.version}" in out

    code, out, _ = rstar_models(capsys, "rollback", "policy", "--no-rollout")
    assert code == 0 and out[0].startswith(f"rolled policy back to {p1.version}")
    assert (env.get(p1.version).status, env.get(p2.version).status) == ("promoted", "rejected")


def test_kinds_no_service_serves_are_promoted_without_a_rollout(env, tmp_path, capsys):
    info = register(env, tmp_path, b"orm", kind="orm")

    code, out, _ = rstar_models(capsys, "promote", info.version)

    assert code == 0 and out == [f"promoted orm {info.version}", "no service serves orm models: nothing to roll out"]


@pytest.mark.parametrize("argv, message", [
    (["show", "nope"], "no model version 'nope'"),
    (["promote", "nope"], "no model version 'nope'"),
    (["rollback", "value"], "kind must be one of policy, ppm, orm, pqm, got 'value'"),
    (["rollback", "ppm"], "no ppm version is promoted: nothing to roll back"),
    (["list", "--kind", "value"], "kind must be one of"),
    (["list", "--run", "nope"], "no run named 'nope'"),
])
def test_bad_input_is_one_line_and_exit_code_2(env, capsys, argv, message):
    code, out, err = rstar_models(capsys, *argv)

    assert code == 2 and len(err) == 1
    assert err[0].startswith("rstar: error: ") and message in err[0]


def test_a_version_whose_files_are_gone_is_not_promoted(env, tmp_path, capsys):
    import shutil

    info = register(env, tmp_path, b"one")
    shutil.rmtree(info.path)

    code, _, err = rstar_models(capsys, "promote", info.version)

    assert code == 2 and "has no directory" in err[0]
    assert env.get(info.version).status == "candidate"


# --- roll_service without a model ------------------------------------------------------


def free_base_port(offsets: list[int]) -> int:
    """A base port whose replica ports (base + offset) and metrics ports (+10000) are free now."""
    import random
    import socket

    for _ in range(100):
        base = random.randrange(20000, 45000)
        try:
            for port in [base + o for o in offsets] + [base + o + 10000 for o in offsets]:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free ports")


def test_roll_service_is_a_no_op_without_a_running_stack(tmp_path):
    assert roll_service(tmp_path / "none", "policy", {"RSTAR_MODEL": "x"}) is False

    dead = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    dead.wait()
    state = {"pids": {"policy-0": dead.pid}, "env": {"A": "1"}, "ports": {"policy": [1], "reward": [2]}}
    (tmp_path / STATE_FILE).write_text(json.dumps(state))

    assert roll_service(tmp_path, "policy", {"RSTAR_MODEL": "x"}) is False  # its processes are gone
    assert roll_service(tmp_path, "reward", {"RSTAR_REWARD_MODEL": "x"}) is False  # not in the stack
    assert json.loads((tmp_path / STATE_FILE).read_text()) == state  # nothing changed


def test_roll_service_restarts_each_replica_with_the_new_environment(tmp_path):
    """A stack of two executor replicas (no model: quick) is rolled onto a new environment."""
    from rstar_cli.launcher import StackSpec, spawn_service, stack_env, wait_healthy

    spec = StackSpec(run_dir=tmp_path, executors=2, base_port=free_base_port([2, 12]),
                     env={"RSTAR_EXECUTOR_POOL_SIZE": "1", "RSTAR_ROLL_MARK": "old"})
    ports = [spec.base_port + 2, spec.base_port + 12]
    (tmp_path / STATE_FILE).write_text(json.dumps({"pids": {}, "env": stack_env(spec), "ports": {"executor": ports}}))
    old = [spawn_service(spec, "executor", i) for i in range(2)]
    try:
        wait_healthy(spec, timeout_s=120)

        assert roll_service(tmp_path, "executor", {"RSTAR_ROLL_MARK": "new"}, grace_s=10, timeout_s=120) is True

        state = json.loads((tmp_path / STATE_FILE).read_text())
        new_pids = [state["pids"][f"executor-{i}"] for i in range(2)]
        assert all(proc.poll() is not None for proc in old)  # the old replicas are gone
        assert set(new_pids).isdisjoint(proc.pid for proc in old)
        for pid in new_pids:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert b"RSTAR_ROLL_MARK=new" in environ
        assert state["env"]["RSTAR_ROLL_MARK"] == "new"  # kept for later restarts
        assert "export RSTAR_ROLL_MARK=new" in (tmp_path / "env").read_text()
        wait_healthy(spec, timeout_s=10)  # every replica SERVING on its old port
    finally:
        state = json.loads((tmp_path / STATE_FILE).read_text())
        for pid in state["pids"].values():
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in old:
            proc.wait(timeout=10)
        time.sleep(0.2)
