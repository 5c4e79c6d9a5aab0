"""`rstar web` as a process: it serves the console over a store, and refuses an open address without a token;
`rstar up` starts it (`spawn_web`), waits until it answers /healthz and stops it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from rstar_store import migrate


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_rstar_web_serves_the_console(tmp_path):
    from rstar_cli.eval_report import write_reports

    url = f"sqlite:///{tmp_path / 'web.db'}"
    migrate(url)
    # A report folder (no rows yet: `rstar eval` writes its reports after the first run) under --eval-dir.
    folder = tmp_path / "evals" / "gsm8k-maj"
    folder.mkdir(parents=True)
    (folder / "items.jsonl").touch()
    write_reports(folder)
    port = _free_port()
    env = {**os.environ, "RSTAR_DATABASE_URL": url}
    env.pop("RSTAR_WEB_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "rstar_cli.main", "web", "--port", str(port), "--eval-dir",
                             str(tmp_path / "evals")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "rstar web did not answer within 60 s"
                time.sleep(0.3)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/runs", timeout=5) as response:
            assert response.read() == b"[]"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/evaluations", timeout=5) as response:
            assert [r["id"] for r in json.loads(response.read())] == ["eval/gsm8k-maj"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_rstar_web_on_an_open_address_needs_a_token(tmp_path):
    env = {**os.environ, "RSTAR_DATABASE_URL": f"sqlite:///{tmp_path / 'web.db'}"}
    env.pop("RSTAR_WEB_TOKEN", None)
    done = subprocess.run([sys.executable, "-m", "rstar_cli.main", "web", "--host", "0.0.0.0"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("rstar: error: binding the web console to 0.0.0.0 needs RSTAR_WEB_TOKEN")


def test_rstar_up_waits_for_the_console_and_stops_it(tmp_path):
    """`spawn_web` as `rstar up` runs it: a real process on a free port; `wait_healthy` returns only once
    it answers /healthz; `stop_stack` stops it with SIGTERM (exit 0, port free again)."""
    from rstar_cli.launcher import (STATE_FILE, StackSpec, _alive, spawn_web, stack_env, start_stack, stop_stack,
                                    wait_healthy)

    url = f"sqlite:///{tmp_path / 'web.db'}"
    migrate(url)
    spec = StackSpec(run_dir=tmp_path / "stack", database_url=url, web_port=_free_port())
    spec.run_dir.mkdir()
    # The state `start_stack` writes, without its gRPC services and workers.
    (spec.run_dir / STATE_FILE).write_text(json.dumps({"pids": {}, "env": stack_env(spec), "ports": {}}))
    proc = spawn_web(spec)
    try:
        started = time.monotonic()
        wait_healthy(spec, timeout_s=60)
        log = (spec.run_dir / "web.log").read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{spec.web_port}/healthz", timeout=5) as response:
            assert response.status == 200, log
        assert json.loads((spec.run_dir / STATE_FILE).read_text())["pids"] == {"web": proc.pid}
        print(f"console answered /healthz {time.monotonic() - started:.1f} s after spawn_web")
        # Another stack cannot start a console on the same port: refused before anything starts.
        with pytest.raises(RuntimeError, match=f"127.0.0.1:{spec.web_port} is in use"):
            start_stack(StackSpec(run_dir=tmp_path / "other", database_url=url, web_port=spec.web_port))
        assert not (tmp_path / "other" / STATE_FILE).exists()
    finally:
        stopping = time.monotonic()
        stopped = stop_stack(spec.run_dir, grace_s=20)
    # Stopped by its SIGTERM (uvicorn shuts down, then re-raises the signal), well before the SIGKILL.
    assert stopped == ["web"] and proc.wait(timeout=5) == -signal.SIGTERM and not _alive(proc.pid)
    assert time.monotonic() - stopping < 15
    assert (spec.run_dir / "web.log").read_text().rstrip().endswith(f"Finished server process [{proc.pid}]")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", spec.web_port))


def test_rstar_up_does_not_count_a_console_that_cannot_read_its_store(tmp_path):
    """Up but answering 503 on /healthz (its store is unreachable) is not ready: the wait times out, naming why."""
    from rstar_cli.launcher import STATE_FILE, StackSpec, spawn_web, stack_env, stop_stack, wait_healthy

    spec = StackSpec(run_dir=tmp_path, database_url="postgresql+psycopg://nobody@127.0.0.1:1/none",
                     web_port=_free_port())
    (tmp_path / STATE_FILE).write_text(json.dumps({"pids": {}, "env": stack_env(spec), "ports": {}}))
    spawn_web(spec)
    try:
        with pytest.raises(TimeoutError, match=r"did not answer /healthz .* within 10 s \(HTTP Error 503"):
            wait_healthy(spec, timeout_s=10)
    finally:
        stop_stack(tmp_path, grace_s=10)
