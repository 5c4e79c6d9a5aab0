"""The process sandbox against hostile code: one property per test, real processes, no mocks.

Tests that need root (dropping to nobody) or a permitted unshare/seccomp skip with the
reason when the machine does not allow them; everything else runs anywhere on Linux.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import pwd
import signal
import socket
import tempfile
import time

import pytest

from rstar_core.ports import CodeExecutor, ExecutionStatus
from rstar_executor import SandboxExecutor, SandboxSettings

# No numpy/sympy preloading for the throwaway executors: they start in ~0.1 s.
LIGHT = {"preload_modules": ("math",)}


@pytest.fixture(scope="module")
def executor():
    # Fewer workers than the concurrency test's tasks, so that runs queue for a worker.
    ex = SandboxExecutor(SandboxSettings(pool_size=3))
    asyncio.run(ex.start())
    yield ex
    asyncio.run(ex.close())


def run(ex: SandboxExecutor, code: str, **kwargs):
    return asyncio.run(ex.run(code, **kwargs))


def run_once(settings: SandboxSettings, *codes: str):
    """Results of running `codes` one after the other on a fresh executor."""

    async def main():
        async with SandboxExecutor(settings) as ex:
            return [await ex.run(code) for code in codes]

    return asyncio.run(main())


def gone(pid: int, group: bool = False) -> bool:
    try:
        (os.killpg if group else os.kill)(pid, 0)
    except ProcessLookupError:
        return True
    return False


def gone_soon(pid: int, group: bool = False, within_s: float = 2.0) -> bool:
    deadline = time.monotonic() + within_s
    while not gone(pid, group):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_implements_the_port(executor):
    assert isinstance(executor, CodeExecutor)


def test_stdout_is_captured(executor):
    result = run(executor, "print(1 + 1)\nprint('héllo')")
    assert result.status is ExecutionStatus.OK
    assert result.stdout == "2\nhéllo\n"
    assert (result.stderr, result.exit_code, result.error) == ("", 0, "")


def test_preloaded_sympy_is_usable(executor):
    result = run(executor, "import sympy\nprint(sympy.factor(sympy.Symbol('x')**2 - 1))")
    assert result.stdout == "(x - 1)*(x + 1)\n", result


def test_exception_is_error_with_last_traceback_line(executor):
    result = run(executor, "y = 1\nx + y")
    assert result.status is ExecutionStatus.ERROR
    assert result.error == "NameError: name 'x' is not defined"
    assert 'File "<step>", line 2' in result.stderr
    assert result.exit_code == 1


def test_syntax_error_is_error(executor):
    result = run(executor, "def f(:\n    pass")
    assert result.status is ExecutionStatus.ERROR
    assert result.error.startswith("SyntaxError")


def test_infinite_loop_times_out_and_its_process_group_is_killed(executor):
    code = (
        "import os, subprocess\n"
        "sleeper = subprocess.Popen(['sleep', '60'])\n"
        "print(os.getpgrp(), sleeper.pid, flush=True)\n"
        "while True:\n"
        "    pass\n"
    )
    result = run(executor, code, timeout_s=0.5)
    assert result.status is ExecutionStatus.TIMEOUT, result
    assert 0.5 <= result.duration_s < 2.0
    pgid, sleeper = map(int, result.stdout.split())
    assert gone(pgid, group=True)
    assert gone(sleeper)


def test_cpu_limit_is_timeout():
    [result] = run_once(SandboxSettings(cpu_s=1, wall_s=10, pool_size=1, **LIGHT),
                        "while True:\n    pass")
    assert result.status is ExecutionStatus.TIMEOUT, result
    assert "CPU" in result.error


def test_memory_bomb_is_memory(executor):
    # 1 GiB would be granted without the 512 MiB address-space limit.
    result = run(executor, "block = bytearray(1 << 30)\nprint('allocated')")
    assert result.status is ExecutionStatus.MEMORY, result
    assert result.stdout == ""


def test_huge_print_is_output_limit(executor):
    result = run(executor, "while True:\n    print('x' * 1000)")
    assert result.status is ExecutionStatus.OUTPUT_LIMIT, result
    assert len(result.stdout) == executor.settings.max_output_bytes
    assert result.duration_s < 2.0  # killed at the cap, not at the deadline


def test_fork_bomb_is_contained(executor):
    code = (
        "import os\n"
        "print(os.getpgrp(), flush=True)\n"
        "while True:\n"
        "    os.fork()\n"
    )
    result = run(executor, code, timeout_s=3)
    assert result.status in (ExecutionStatus.ERROR, ExecutionStatus.KILLED,
                             ExecutionStatus.TIMEOUT), result
    # The code ended by itself, so its group was SIGKILLed but is reaped after the report.
    assert gone_soon(int(result.stdout.split()[0]), group=True)
    assert run(executor, "print('still fine')").stdout == "still fine\n"


def test_tcp_to_localhost_is_unreachable():
    # Without seccomp, so that what stops the connection is the network namespace.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    socket.create_connection(("127.0.0.1", port), timeout=1).close()  # reachable from here
    try:
        [result] = run_once(SandboxSettings(seccomp=False, pool_size=1, **LIGHT),
                            f"import socket\nsocket.socket().connect(('127.0.0.1', {port}))")
    finally:
        listener.close()
    if not result.extra["network_isolated"]:
        pytest.skip("unshare(CLONE_NEWNET) not permitted here")
    assert result.status is ExecutionStatus.ERROR
    assert "Network is unreachable" in result.error


def test_seccomp_blocks_unix_sockets_on_the_filesystem(executor):
    # A network namespace does not cover these (think of a database's socket).
    directory = tempfile.mkdtemp()
    os.chmod(directory, 0o755)
    path = os.path.join(directory, "open.sock")
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(path)
        os.chmod(path, 0o777)
        listener.listen()
        code = f"import socket\nsocket.socket(socket.AF_UNIX).connect({path!r})"
        result = run(executor, code)
    finally:
        listener.close()
        os.unlink(path)
        os.rmdir(directory)
    if not result.extra["seccomp"]:
        pytest.skip("seccomp filter not available here")
    assert result.status is ExecutionStatus.ERROR
    assert result.error == "PermissionError: [Errno 1] Operation not permitted"


def test_code_cannot_leave_its_process_group(executor):
    result = run(executor, "import os\nos.setsid()")
    if not result.extra["seccomp"]:
        pytest.skip("seccomp filter not available here")
    assert result.error.startswith("PermissionError"), result


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_runs_as_nobody(executor):
    result = run(executor, "import os\nprint(os.getuid(), os.getgid(), os.getgroups())")
    nobody = pwd.getpwnam("nobody")
    assert result.stdout == f"{nobody.pw_uid} {nobody.pw_gid} []\n"


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("RSTAR_TEST_SECRET", "hunter2")
    [result] = run_once(SandboxSettings(pool_size=1, **LIGHT),
                        "import json, os\nprint(json.dumps(dict(os.environ)))")
    env = json.loads(result.stdout)
    assert "RSTAR_TEST_SECRET" not in env
    assert "hunter2" not in result.stdout
    assert env["PYTHONHASHSEED"] == "0"


def test_cwd_is_a_private_temp_dir_whose_files_are_gone_afterwards(executor):
    # The cwd is the execution's private /tmp or, without one, a temp dir removed afterwards.
    result = run(executor, "import os\nopen('scratch.txt', 'w').write('x')\n"
                           "print(os.path.abspath('scratch.txt'))")
    scratch = result.stdout.strip()
    assert result.ok and os.path.dirname(scratch) != os.getcwd()
    assert not os.path.exists(scratch)


def test_big_file_hits_the_file_size_limit(executor):
    size = executor.settings.max_file_bytes + (1 << 20)
    result = run(executor, f"open('big.bin', 'wb').write(bytes({size}))")
    assert result.status is ExecutionStatus.ERROR
    assert "File too large" in result.error


def test_no_state_leaks_between_executions():
    first, second = run_once(
        SandboxSettings(pool_size=1, **LIGHT),  # one worker: both runs fork from it
        "import math\nleak = 42\nmath.leak = 1",
        "import math\nprint('leak' in globals(), hasattr(math, 'leak'))",
    )
    assert first.ok
    assert second.stdout == "False False\n"


def test_twenty_concurrent_runs_succeed(executor):
    async def main():
        return await asyncio.gather(*(executor.run(f"print({i} ** 2)") for i in range(20)))

    results = asyncio.run(main())
    assert [r.status for r in results] == [ExecutionStatus.OK] * 20
    assert [r.stdout for r in results] == [f"{i ** 2}\n" for i in range(20)]


def test_killed_worker_is_replaced():
    ex = SandboxExecutor(SandboxSettings(pool_size=1, **LIGHT))
    try:
        assert ex.run_sync("print(1)").ok
        [victim] = ex.worker_pids
        os.kill(victim, signal.SIGKILL)
        result = ex.run_sync("print(2)")
        assert result.stdout == "2\n", result
        assert ex.worker_pids != (victim,)
    finally:
        asyncio.run(ex.close())


def test_other_signal_is_killed(executor):
    result = run(executor, "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
    assert result.status is ExecutionStatus.KILLED
    assert result.error == "killed by SIGSEGV"


@pytest.mark.parametrize(("field", "value"), [
    ("memory_mb", 0), ("cpu_s", 1.5), ("wall_s", 0), ("wall_s", math.inf),
    ("max_output_bytes", -1), ("max_processes", True), ("pool_size", 0),
    ("isolate_network", "yes"), ("preload_modules", ["sympy"]), ("preload_modules", ("a b",)),
    ("tmpfs_mb", 0), ("isolate_filesystem", 1),
])
def test_bad_settings_raise_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SandboxSettings(**{field: value})


@pytest.mark.parametrize("timeout_s", [0, -1.0, math.nan, "5"])
def test_bad_timeout_raises_value_error(executor, timeout_s):
    with pytest.raises(ValueError, match="timeout_s"):
        run(executor, "print(1)", timeout_s=timeout_s)
