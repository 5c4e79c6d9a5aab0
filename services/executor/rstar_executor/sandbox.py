"""Process sandbox for model-generated Python: layer 1 of the executor's two-layer sandbox.

`SandboxExecutor` implements the `CodeExecutor` port. It keeps a pool of warm worker
interpreters (`_worker.py`, started by exec with a scrubbed environment, never forked from
the caller, which may hold torch or vLLM). Each worker forks the child for its next
execution ahead of time; the child jails itself and waits for code. A request then costs a
hand-over and the run itself instead of an interpreter start, and since every execution
gets a fresh child, nothing leaks from one execution to the next. (Preloaded modules start
from the worker's state each time; numpy's global random state is therefore the same in
every execution of a worker, while `random` reseeds itself in each child as Python does.)

Covered here, all on by default (each can degrade, see below; `ExecutionResult.extra` and
`SandboxExecutor.isolation` say what was in force):
- Network: the worker enters a new, empty network namespace (no interfaces up, not even
  loopback), which every child inherits; this also separates abstract unix sockets.
  Needs CAP_SYS_ADMIN; without it a warning is logged and `network_isolated` is False.
- Identity: when the worker is root, the child drops to nobody/nogroup with no
  supplementary groups; no_new_privs is set and the process is not dumpable.
- Resources (rlimits, per process): address space (`memory_mb`, counting the interpreter
  and the preloaded modules, about 140 MiB with numpy and sympy), CPU seconds, processes
  (RLIMIT_NPROC, counted per uid: concurrent executions share nobody's budget), file size,
  open files; no core dumps.
- Time: a wall-clock deadline enforced by the worker; on expiry the child's whole process
  group is SIGKILLed, including grandchildren it spawned, and reaped before the result is
  returned. The parent has a backstop past that deadline: it SIGKILLs the group and the
  worker itself if the worker stops answering, and replaces the worker.
- Output: stdout and stderr are each capped at `max_output_bytes`; over the cap the group is
  killed and the status is OUTPUT_LIMIT.
- Environment: a fixed minimal environment (PATH, locale, PYTHONHASHSEED=0, BLAS/OpenMP
  threads = 1); nothing of the caller's environment is passed on.
- Files: every execution gets its own mount namespace with one fresh tmpfs (`tmpfs_mb`,
  16384 inodes, nosuid/nodev/noexec) bound on /tmp, /var/tmp and /dev/shm; /tmp is the
  cwd, HOME and TMPDIR. What the code (or anything it spawns) writes there is invisible to
  the host and to every other execution, concurrent or next, and is gone when its last
  process is. Every other mount is bind-remounted read-only (keeping nosuid/nodev/noexec),
  so a write anywhere else fails with EROFS, whatever the permissions. Needs CAP_SYS_ADMIN
  (root) and a security policy that permits mount() (AppArmor's docker-default profile
  does not); without them a warning is logged, `private_tmp` and
  `read_only_fs` are False, the temp dirs and everything the uid may write are shared with
  the host, and the cwd is instead a fresh temp dir (mode 0700, owned by nobody) removed
  after the execution. Every inherited fd except stdin/stdout/stderr is closed.
  If the Python installation lies under a directory nobody cannot enter (pyenv in /root,
  a home directory), the worker covers that directory with an empty tmpfs in a private
  mount namespace and binds back only the import paths: imports work, the rest of that
  directory is invisible.
- Syscalls (when libseccomp is installed; the filter is compiled with it via ctypes, so no
  extra Python package is needed): socket(), ptrace, setsid/setpgid (so code cannot leave
  its process group and dodge the kill), namespace creation, mount, bpf, perf_event_open,
  io_uring, keyrings, module loading and kill(-1) fail with EPERM.

Not covered (the hardened container, layer 2, has to):
- Reading the filesystem: the code can read whatever nobody can read (/etc, the Python
  installation, world-readable files of other users). Without a private mount namespace
  (see Files) it can also write to world-writable places (/tmp, /dev/shm), where files
  outlive the execution; the container's read-only root filesystem and tmpfs mounts cover
  that case.
- The tmpfs is memory that `memory_mb` does not count: each execution can hold up to
  `memory_mb` + `tmpfs_mb`.
- Concurrent executions run as the same uid: they share RLIMIT_NPROC and could signal one
  another's processes (without a private /tmp, also open one another's temp dirs if they
  guess the names).
- Kernel exploits through the syscalls still allowed, CPU-cache and other side channels,
  memory bandwidth and disk I/O exhaustion (no cgroups here).
- Without seccomp, code can call setsid() in a grandchild and so escape the group kill, and
  can connect to unix sockets on the filesystem. Without root, code runs as the caller's
  user and could signal the worker. With `drop_privileges=False` and no seccomp, code runs
  as root and could remount its filesystem read-write.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from rstar_core.ports import ExecutionResult, ExecutionStatus

__all__ = ["SandboxExecutor", "SandboxSettings"]

logger = logging.getLogger(__name__)

_WORKER_SCRIPT = Path(__file__).with_name("_worker.py")
_HEADER = struct.Struct("!I")
# Generous: importing sympy on a cold page cache can take seconds.
_WORKER_START_TIMEOUT_S = 60.0
# How long past the wall deadline the parent waits for the worker's report before it
# concludes the worker is stuck and kills it.
_BACKSTOP_GRACE_S = 2.0
# What a worker reports it put in force, as `isolation` and in every result's `extra`.
_ISOLATION_KEYS = ("network_isolated", "privileges_dropped", "seccomp", "private_tmp",
                   "read_only_fs")
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

# The whole environment the code sees (plus HOME and TMPDIR set to its temp dir).
_SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
}


def _default_pool_size() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class SandboxSettings:
    """Limits and switches of the process sandbox; every limit applies per execution."""

    # Address-space limit of the child process, interpreter and preloaded modules included.
    memory_mb: int = 512
    # CPU seconds (RLIMIT_CPU, whole seconds). A backstop for multi-threaded burn; the wall
    # limit normally fires first. Not changed by a per-call timeout.
    cpu_s: int = 10
    # Default wall-clock limit; `run(..., timeout_s=...)` overrides it per call.
    wall_s: float = 5.0
    # Cap on stdout and on stderr, each.
    max_output_bytes: int = 64 * 1024
    # RLIMIT_NPROC: counted over all processes of the sandbox uid, threads included.
    max_processes: int = 64
    max_file_bytes: int = 16 * 1024 * 1024
    max_open_files: int = 64
    # Size of the execution's private tmpfs, shared by /tmp, /var/tmp and /dev/shm. It is
    # memory that `memory_mb` does not count.
    tmpfs_mb: int = 64
    # Worker processes, i.e. executions that can run at once.
    pool_size: int = field(default_factory=_default_pool_size)
    isolate_network: bool = True
    drop_privileges: bool = True
    seccomp: bool = True
    # A private tmpfs for /tmp, /var/tmp and /dev/shm per execution, everything else
    # mounted read-only (needs CAP_SYS_ADMIN, i.e. root).
    isolate_filesystem: bool = True
    # Imported once per worker so that the code's own `import sympy` is free (and works
    # even where nobody cannot read the Python installation). Missing ones are skipped.
    # They cost fork and exit time (about 2 ms per execution for sympy, paid mostly off the
    # critical path) and address space inside `memory_mb`.
    preload_modules: tuple[str, ...] = (
        "math", "cmath", "fractions", "decimal", "itertools", "functools", "collections",
        "statistics", "random", "re", "numpy", "sympy")

    def __post_init__(self) -> None:
        for name in ("memory_mb", "cpu_s", "max_output_bytes", "max_processes",
                     "max_file_bytes", "max_open_files", "tmpfs_mb", "pool_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        _check_seconds("wall_s", self.wall_s)
        for name in ("isolate_network", "drop_privileges", "seccomp", "isolate_filesystem"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.preload_modules, tuple) or not all(
                isinstance(m, str) and _MODULE_NAME.match(m) for m in self.preload_modules):
            raise ValueError(
                f"preload_modules must be a tuple of module names, got {self.preload_modules!r}")


def _check_seconds(name: str, value: object) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value <= 0):
        raise ValueError(f"{name} must be a positive finite number of seconds, got {value!r}")
    return float(value)


class _WorkerLost(Exception):
    """The worker's socket closed. `started`: whether its child had already got the code."""

    def __init__(self, started: bool) -> None:
        super().__init__("sandbox worker died" + (" during execution" if started else ""))
        self.started = started


class _Worker:
    """Parent-side handle of one worker process.

    The socket is non-blocking and driven through the running loop's sock_* calls, so a
    worker is not tied to one event loop (sequential `asyncio.run` calls can share a pool).
    """

    def __init__(self, proc: subprocess.Popen, sock: socket.socket, workdir: str) -> None:
        self.proc = proc
        self.sock = sock
        self.workdir = workdir
        self.info: dict = {}
        # The running child's pid (= its process group id), for the backstop kill.
        self.child_pid: int | None = None
        self._buf = bytearray()

    @classmethod
    async def spawn(cls, config: dict, workdir: str) -> _Worker:
        parent_sock, child_sock = socket.socketpair()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-s", "-P", str(_WORKER_SCRIPT),
                 json.dumps({**config, "fd": child_sock.fileno(), "base_dir": workdir})],
                env=_SANDBOX_ENV, cwd=workdir, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, pass_fds=(child_sock.fileno(),),
                # Out of the caller's process group: a Ctrl-C aimed at the caller does not
                # hit the workers; they exit on their own when the socket closes.
                start_new_session=True)
        except BaseException:
            parent_sock.close()
            raise
        finally:
            child_sock.close()
        parent_sock.setblocking(False)
        worker = cls(proc, parent_sock, workdir)
        try:
            async with asyncio.timeout(_WORKER_START_TIMEOUT_S):
                worker.info = await worker._recv()
        except BaseException as exc:
            worker.kill()
            if isinstance(exc, (_WorkerLost, TimeoutError)):
                raise RuntimeError(
                    f"sandbox worker failed to start (exit status {proc.returncode})") from exc
            raise
        return worker

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    async def execute(self, code: str, wall_s: float) -> dict:
        self.child_pid = None
        await self._send({"code": code, "wall_s": wall_s})
        started = await self._recv()
        self.child_pid = started["pid"]
        done = await self._recv()
        self.child_pid = None
        return done

    def kill(self) -> None:
        """Stop everything of this worker now: its running child's group, itself, its dir."""
        if self.child_pid is not None:
            try:
                os.killpg(self.child_pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.child_pid = None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    async def _send(self, message: dict) -> None:
        data = json.dumps(message, ensure_ascii=False).encode()
        try:
            await asyncio.get_running_loop().sock_sendall(
                self.sock, _HEADER.pack(len(data)) + data)
        except OSError as exc:
            raise _WorkerLost(started=False) from exc

    async def _recv(self) -> dict:
        loop = asyncio.get_running_loop()
        while True:
            if len(self._buf) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(self._buf)
                end = _HEADER.size + size
                if len(self._buf) >= end:
                    body = bytes(self._buf[_HEADER.size:end])
                    del self._buf[:end]
                    return json.loads(body)
            try:
                chunk = await loop.sock_recv(self.sock, 1 << 18)
            except OSError as exc:
                raise _WorkerLost(started=self.child_pid is not None) from exc
            if not chunk:
                raise _WorkerLost(started=self.child_pid is not None)
            self._buf += chunk


def _kill_all(workers: set[_Worker], root: str) -> None:
    for worker in list(workers):
        worker.kill()
    workers.clear()
    shutil.rmtree(root, ignore_errors=True)


class SandboxExecutor:
    """`CodeExecutor` over a pool of warm sandbox workers.

    Safe for many concurrent `run` calls from asyncio tasks of one event loop at a time
    (not from several threads at once); sequential loops (`asyncio.run`, `run_sync`) can
    share one executor. Workers start lazily on first use, or eagerly with `start()`; a dead
    worker is replaced on demand. `close()` (or `async with`) stops all workers and removes
    their directories; a forgotten executor is cleaned up when garbage-collected or at exit.
    """

    def __init__(self, settings: SandboxSettings | None = None) -> None:
        self.settings = settings if settings is not None else SandboxSettings()
        # Parent of every worker's directory; traversable (not listable) so that nobody
        # can reach its own temp dir inside.
        self._root = tempfile.mkdtemp(prefix="rstar-sandbox-")
        os.chmod(self._root, 0o711)
        self._workers: set[_Worker] = set()
        # FIFO: back-to-back runs rotate through the pool, so each worker gets the time
        # between its turns to reap its last child and fork the next one.
        self._idle: collections.deque[_Worker] = collections.deque()
        self._starting = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._closed = False
        self._spawned = 0
        self._isolation: dict | None = None
        self._logged: set[str] = set()
        self._finalizer = weakref.finalize(self, _kill_all, self._workers, self._root)

    # -- public API -----------------------------------------------------------------------

    @property
    def isolation(self) -> dict | None:
        """What the latest worker actually put in force (None until a worker started)."""
        return self._isolation

    @property
    def worker_pids(self) -> tuple[int, ...]:
        return tuple(sorted(w.pid for w in self._workers))

    async def start(self) -> None:
        """Start the workers missing from a full pool now instead of on first use."""
        self._check_open()
        missing = self.settings.pool_size - len(self._workers) - self._starting
        results = await asyncio.gather(*(self._spawn() for _ in range(missing)),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, _Worker):
                self._release(result)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def run(self, code: str, *, timeout_s: float | None = None) -> ExecutionResult:
        """Run `code` in a fresh jailed child; `timeout_s` overrides `settings.wall_s`.

        Whatever the code does comes back as an ExecutionResult. Raises ValueError for bad
        arguments and RuntimeError when the executor is closed or a worker cannot start.
        Cancelling the call kills the execution (and its worker, which is replaced).
        """
        if not isinstance(code, str):
            raise ValueError(f"code must be a str, got {type(code).__name__}")
        wall_s = (self.settings.wall_s if timeout_s is None
                  else _check_seconds("timeout_s", timeout_s))
        retried = False
        while True:
            worker = await self._acquire()
            began = time.perf_counter()
            try:
                async with asyncio.timeout(wall_s + _BACKSTOP_GRACE_S):
                    raw = await worker.execute(code, wall_s)
            except _WorkerLost as lost:
                self._discard(worker)
                if not lost.started and not retried:
                    # It died while idle (killed from outside): the code never ran.
                    logger.warning("sandbox worker %d was dead; retrying on a new one", worker.pid)
                    retried = True
                    continue
                return self._failure(ExecutionStatus.KILLED, str(lost), began)
            except TimeoutError:
                self._discard(worker)
                logger.error("sandbox worker %d did not report %.1fs after the deadline; killed",
                             worker.pid, _BACKSTOP_GRACE_S)
                return self._failure(ExecutionStatus.TIMEOUT,
                                     f"wall time limit of {wall_s:g}s exceeded", began)
            except BaseException:
                # Cancelled (or worse) mid-execution: the worker's state is unknown.
                self._discard(worker)
                raise
            self._release(worker)
            return self._result(raw, wall_s, worker.info)

    def run_sync(self, code: str, timeout_s: float | None = None) -> ExecutionResult:
        """`run` for callers without an event loop (not from inside a running loop)."""
        return asyncio.run(self.run(code, timeout_s=timeout_s))

    async def close(self) -> None:
        """Kill all workers (and any execution in flight) and remove their directories."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # wakes up to find the executor closed
        self._idle.clear()
        self._finalizer()

    async def __aenter__(self) -> SandboxExecutor:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- pool -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("SandboxExecutor is closed")

    async def _acquire(self) -> _Worker:
        while True:
            self._check_open()
            while self._idle:
                worker = self._idle.popleft()
                if worker.alive():
                    return worker
                logger.warning("sandbox worker %d died while idle; replacing it", worker.pid)
                self._discard(worker)
            if len(self._workers) + self._starting < self.settings.pool_size:
                return await self._spawn()
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # we were handed a turn we cannot take: pass it on
                else:
                    self._waiters.remove(waiter)
                raise

    async def _spawn(self) -> _Worker:
        self._starting += 1
        self._spawned += 1
        workdir = os.path.join(self._root, f"w{self._spawned}")
        try:
            os.mkdir(workdir)
            os.chmod(workdir, 0o711)
            worker = await _Worker.spawn(self._worker_config(), workdir)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            self._wake_one()  # the slot we reserved is free again
            raise
        finally:
            self._starting -= 1
        if self._closed:
            worker.kill()
            self._check_open()
        self._workers.add(worker)
        self._note_isolation(worker.info)
        return worker

    def _release(self, worker: _Worker) -> None:
        if self._closed:
            self._discard(worker)
            return
        self._idle.append(worker)
        self._wake_one()

    def _discard(self, worker: _Worker) -> None:
        self._workers.discard(worker)
        worker.kill()
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _worker_config(self) -> dict:
        s = self.settings
        return {
            "memory_bytes": s.memory_mb * 1024 * 1024, "cpu_s": s.cpu_s,
            "max_output_bytes": s.max_output_bytes, "max_processes": s.max_processes,
            "max_file_bytes": s.max_file_bytes, "max_open_files": s.max_open_files,
            "tmpfs_bytes": s.tmpfs_mb * 1024 * 1024,
            "isolate_network": s.isolate_network, "drop_privileges": s.drop_privileges,
            "seccomp": s.seccomp, "isolate_filesystem": s.isolate_filesystem,
            "preload_modules": list(s.preload_modules),
        }

    def _note_isolation(self, info: dict) -> None:
        self._isolation = {key: info[key] for key in _ISOLATION_KEYS + ("preloaded",)}
        for warning in info["warnings"]:
            if warning not in self._logged:  # once per executor, not once per worker
                self._logged.add(warning)
                logger.warning("sandbox: %s", warning)

    # -- results --------------------------------------------------------------------------

    def _failure(self, status: ExecutionStatus, error: str, began: float) -> ExecutionResult:
        return ExecutionResult(status=status, error=error,
                               duration_s=time.perf_counter() - began)

    def _result(self, raw: dict, wall_s: float, info: dict) -> ExecutionResult:
        signum = raw["signal"]
        exit_code = -signum if signum is not None else raw["exit_code"]
        kind, message = raw["kind"], raw["message"]
        cpu_s = self.settings.cpu_s
        if raw["timed_out"]:
            status, error = ExecutionStatus.TIMEOUT, f"wall time limit of {wall_s:g}s exceeded"
        elif raw["overflow"]:
            status = ExecutionStatus.OUTPUT_LIMIT
            error = f"{raw['overflow']} exceeded {self.settings.max_output_bytes} bytes"
        elif signum == signal.SIGXCPU or (signum == signal.SIGKILL and raw["cpu_s"] >= cpu_s):
            status, error = ExecutionStatus.TIMEOUT, f"CPU time limit of {cpu_s}s exceeded"
        elif signum is not None:
            status, error = ExecutionStatus.KILLED, f"killed by {_signal_name(signum)}"
        elif kind == "memory":
            status, error = ExecutionStatus.MEMORY, message
        elif kind == "setup":
            status, error = ExecutionStatus.ERROR, f"sandbox setup failed: {message or 'unknown'}"
            logger.error("sandbox: %s", error)
        elif exit_code == 0:
            status, error = ExecutionStatus.OK, ""
        else:
            status = ExecutionStatus.ERROR
            error = message or f"exited with code {exit_code}"
        return ExecutionResult(
            status=status, stdout=raw["stdout"], stderr=raw["stderr"], exit_code=exit_code,
            duration_s=raw["duration_s"], error=error,
            extra={"cpu_s": raw["cpu_s"], **{key: info[key] for key in _ISOLATION_KEYS}})


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
