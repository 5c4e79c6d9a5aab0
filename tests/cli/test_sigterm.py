"""SIGTERM always ends an `rstar` command: it unwinds like Ctrl-C, and where something swallows
the interrupt (vLLM's engine start-up does), the command kills its children and exits after
RSTAR_TERM_GRACE_S. Real processes and signals; no model."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

# A command whose work swallows KeyboardInterrupt, with a child process of its own.
SWALLOWING = textwrap.dedent("""
    import signal, subprocess, sys, time
    from rstar_cli import main as cli
    signal.signal(signal.SIGTERM, cli._interrupt)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(child.pid, flush=True)
    while True:
        try:
            time.sleep(0.05)
        except KeyboardInterrupt:
            pass
""")


def test_a_swallowed_sigterm_still_ends_the_command_and_its_children():
    env = dict(os.environ, RSTAR_TERM_GRACE_S="2")
    proc = subprocess.Popen([sys.executable, "-c", SWALLOWING], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    child = psutil.Process(int(proc.stdout.readline()))
    proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "still running 2 s after signal 15: killing its child processes" in stderr
    assert time.monotonic() - start < 20
    _, alive = psutil.wait_procs([child], timeout=10)
    assert not alive


def test_the_watchdog_bounds_a_slow_unwind_and_leaves_a_quick_one_alone():
    # A command that unwinds (KeyboardInterrupt caught at the top, as `rstar`'s main does) and
    # exits 130 in time keeps its exit code; one still unwinding after the grace is ended (143).
    # The real command mid-search: tests/integration/test_cli_solve.py.
    env = dict(os.environ, RSTAR_TERM_GRACE_S="1")
    script = ("import signal, sys\nfrom rstar_cli import main as cli\n"
              "signal.signal(signal.SIGTERM, cli._interrupt)\n"
              "try:\n    signal.raise_signal(signal.SIGTERM)\nexcept KeyboardInterrupt:\n    print('unwound')\n"
              "import time; time.sleep(2)\nsys.exit(130)\n")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert "unwound" in done.stdout and done.returncode == 143
    quick = subprocess.run([sys.executable, "-c", script.replace("time.sleep(2)", "time.sleep(0)")], env=env,
                           capture_output=True, text=True, timeout=30)
    assert quick.returncode == 130 and "still running" not in quick.stderr
