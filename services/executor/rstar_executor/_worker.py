"""Sandbox worker: a warm interpreter that forks one jailed child per code execution.

`rstar_executor.sandbox` starts this file as ``python -s -P _worker.py CONFIG_JSON`` with a
scrubbed environment and one end of a socketpair. It is exec'd, never forked from the caller,
so nothing of the caller's process (torch, vLLM, CUDA state, open files, secrets in memory)
is inherited. It imports only the standard library plus the configured preload modules and
nothing from this package.

Once per worker (the expensive part, paid at startup): become a child subreaper, enter a new
empty network namespace (children inherit it), look up nobody's uid/gid, compile the seccomp
filter, import the preload modules, gc.freeze() so children do not copy-on-write the heap.

Once per execution: create a fresh temp dir and fork. The child calls setsid, redirects
stdin/stdout/stderr, closes every other inherited fd, chdirs into the temp dir, sets rlimits,
drops to nobody, arms PDEATHSIG, sets no_new_privs, loads the seccomp filter and exec()s the
code in a fresh ``__main__``. The worker enforces the wall deadline and the output cap, kills
the child's whole process group, reaps it (and any orphans), removes the temp dir and reports.

Protocol on the socket: length-prefixed (4-byte big-endian) UTF-8 JSON frames.
  worker -> {"event": "ready", ...isolation facts...}                  once, at startup
  parent -> {"code": str, "wall_s": float}                             one request at a time
  worker -> {"event": "started", "pid": int}                           the child's pid = pgid
  worker -> {"event": "done", "stdout", "stderr", "exit_code", "signal", "timed_out",
             "overflow", "report", "cpu_s", "duration_s"}
The worker exits when the socket reaches EOF.

Non-goals: classifying results (the parent maps the raw facts to ExecutionStatus) and any
isolation beyond what the module docstring of `rstar_executor.sandbox` lists.
"""

from __future__ import annotations

import builtins
import ctypes
import errno
import fcntl
import gc
import importlib
import io
import json
import linecache
import os
import pwd
import resource
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
import traceback
import types

_HEADER = struct.Struct("!I")
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

_PR_SET_PDEATHSIG = 1
_PR_SET_SECCOMP = 22
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_MODE_FILTER = 2
_CLONE_NEWNET = 0x40000000

# Before exiting, the child writes its final record "<status> <kind> <cpu_s>\n<message>"
# (kind: ok, error, memory, exit, setup) to fd 3. The code under test can write there too,
# but can only misreport its own result.
_REPORT_FD = 3
# The child reads its code from fd 4 until EOF.
_CODE_FD = 4
_SETUP_FAILED_EXIT = 125
_MAX_MESSAGE_CHARS = 1000
_MAX_RECORD_BYTES = 4 * _MAX_MESSAGE_CHARS + 64
# After the child exits, how long grandchildren still holding its pipes may take to die.
_DRAIN_S = 0.5
_REAP_S = 1.0

# Syscalls the jailed code never needs and that widen the attack surface (kernel bugs,
# escaping the process group or namespaces, talking to sockets on the filesystem, such as
# a database's unix socket, which a network namespace does not cover). Denied with EPERM.
_DENIED_SYSCALLS = (
    "socket", "ptrace", "process_vm_readv", "process_vm_writev", "setsid", "setpgid",
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount", "fsopen",
    "fsmount", "fspick", "open_tree", "mount_setattr", "bpf", "perf_event_open", "keyctl",
    "add_key", "request_key", "userfaultfd", "kexec_load", "kexec_file_load", "init_module",
    "finit_module", "delete_module", "reboot", "swapon", "swapoff", "acct", "quotactl",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "open_by_handle_at",
    "name_to_handle_at", "fanotify_init", "lookup_dcookie",
)
# clone() flags that create namespaces (a user namespace hands the code capabilities).
_CLONE_NS_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
                   0x40000000)
_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_CMP_MASKED_EQ = 7


def _scmp_errno(err: int) -> int:
    return 0x00050000 | (err & 0xFFFF)


class _ScmpArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _compile_seccomp() -> tuple[ctypes.Array, _SockFprog]:
    """Build the filter with libseccomp once; children only need one prctl to load it.

    Raises OSError when libseccomp is missing or a rule is rejected.
    """
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ScmpArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]

    ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError("seccomp_init failed")
    try:
        def rule(action: int, name: str, *cmps: _ScmpArgCmp) -> None:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:  # not a syscall on this architecture
                return
            array = (_ScmpArgCmp * len(cmps))(*cmps) if cmps else None
            rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), array)
            if rc < 0:
                raise OSError(-rc, f"seccomp rule for {name}: {os.strerror(-rc)}")

        for name in _DENIED_SYSCALLS:
            rule(_scmp_errno(errno.EPERM), name)
        # clone3 passes its flags in memory a filter cannot inspect; ENOSYS makes glibc fall
        # back to clone(), whose flags can be checked.
        rule(_scmp_errno(errno.ENOSYS), "clone3")
        for flag in _CLONE_NS_FLAGS:
            rule(_scmp_errno(errno.EPERM), "clone", _ScmpArgCmp(0, _SCMP_CMP_MASKED_EQ, flag, flag))
        # kill(-1, sig) would hit every process of uid nobody, i.e. concurrent executions.
        rule(_scmp_errno(errno.EPERM), "kill",
             _ScmpArgCmp(0, _SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, 0xFFFFFFFF))

        read_fd, write_fd = os.pipe()
        try:
            rc = lib.seccomp_export_bpf(ctx, write_fd)
            os.close(write_fd)
            write_fd = -1
            if rc < 0:
                raise OSError(-rc, f"seccomp_export_bpf: {os.strerror(-rc)}")
            bpf = b""
            while chunk := os.read(read_fd, 65536):
                bpf += chunk
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)
    finally:
        lib.seccomp_release(ctx)
    buffer = ctypes.create_string_buffer(bpf, len(bpf))
    return buffer, _SockFprog(len(bpf) // 8, ctypes.addressof(buffer))


class Worker:
    def __init__(self, config: dict) -> None:
        self.sock = socket.socket(fileno=config["fd"])
        self.sock.setblocking(True)
        self.base_dir = config["base_dir"]
        self.cpu_s = config["cpu_s"]
        self.max_output = config["max_output_bytes"]
        self.rlimits = (
            (resource.RLIMIT_AS, config["memory_bytes"], config["memory_bytes"]),
            # Soft limit delivers SIGXCPU; the hard one SIGKILLs code that handles SIGXCPU.
            (resource.RLIMIT_CPU, self.cpu_s, self.cpu_s + 1),
            (resource.RLIMIT_NPROC, config["max_processes"], config["max_processes"]),
            (resource.RLIMIT_FSIZE, config["max_file_bytes"], config["max_file_bytes"]),
            (resource.RLIMIT_NOFILE, config["max_open_files"], config["max_open_files"]),
            (resource.RLIMIT_CORE, 0, 0),
        )
        self.warnings: list[str] = []
        self.devnull = os.open(os.devnull, os.O_RDWR)
        self.pid = os.getpid()

        # Orphaned grandchildren are re-parented to us instead of init, so we can reap them
        # (the container's init may not reap zombies).
        _LIBC.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

        self.network_isolated = False
        if config["isolate_network"]:
            if _LIBC.unshare(_CLONE_NEWNET) == 0:
                self.network_isolated = True
            else:
                err = ctypes.get_errno()
                self.warnings.append(
                    f"unshare(CLONE_NEWNET) failed ({os.strerror(err)}): code has network access")

        self.ids: tuple[int, int] | None = None
        if config["drop_privileges"]:
            if os.geteuid() == 0:
                try:
                    entry = pwd.getpwnam("nobody")
                    self.ids = (entry.pw_uid, entry.pw_gid)
                except KeyError:
                    self.ids = (65534, 65534)
            else:
                self.warnings.append(
                    f"not running as root: code runs as uid {os.geteuid()}, the caller's user")

        self.seccomp: tuple[ctypes.Array, _SockFprog] | None = None
        if config["seccomp"]:
            try:
                self.seccomp = _compile_seccomp()
            except OSError as exc:
                self.warnings.append(f"seccomp unavailable ({exc}): syscall filter off")

        self.preloaded: list[str] = []
        for name in config["preload_modules"]:
            try:
                importlib.import_module(name)
                self.preloaded.append(name)
            except ImportError:
                pass  # optional: the code imports it itself if it can
        # Everything allocated so far lives in the permanent generation: the children's
        # collections then do not touch (and copy) these pages.
        gc.freeze()

    # -- protocol -----------------------------------------------------------------------

    def send(self, message: dict) -> None:
        data = json.dumps(message, ensure_ascii=False).encode()
        self.sock.sendall(_HEADER.pack(len(data)) + data)

    def recv(self) -> dict | None:
        header = self._recv_exact(_HEADER.size)
        if header is None:
            return None
        body = self._recv_exact(_HEADER.unpack(header)[0])
        return None if body is None else json.loads(body)

    def _recv_exact(self, n: int) -> bytes | None:
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return bytes(data)

    def serve(self) -> None:
        child = self._prepare()
        self.send({"event": "ready", "pid": self.pid, "network_isolated": self.network_isolated,
                   "privileges_dropped": self.ids is not None,
                   "seccomp": self.seccomp is not None, "preloaded": self.preloaded,
                   "warnings": self.warnings})
        while (request := self.recv()) is not None:
            result, child = self._execute(child, request["code"], float(request["wall_s"]))
            self.send(result)
            # Off the critical path: finish off the last child and jail the next one while
            # the caller is busy elsewhere.
            child.reap()
            child = self._prepare()

    # -- one execution --------------------------------------------------------------------

    def _prepare(self) -> _Child:
        """Fork a child that jails itself and then blocks reading its code."""
        workdir = tempfile.mkdtemp(dir=self.base_dir)
        if self.ids is not None:
            os.chown(workdir, *self.ids)
        code_r, code_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        rep_r, rep_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            self._jail_and_run(workdir, code_r, out_w, err_w, rep_w)  # never returns
        for fd in (code_r, out_w, err_w, rep_w):
            os.close(fd)
        return _Child(pid, workdir, code_w, out_r, err_r, rep_r)

    def _execute(self, child: _Child, code: str, wall_s: float) -> tuple[dict, _Child]:
        """Hand the code to the prepared child and supervise it; returns the report and
        the child (a new one if the prepared one had died while idle)."""
        data = code.encode("utf-8", "surrogatepass")
        try:
            child.hand_over(data)
        except BrokenPipeError:
            # Killed while idle (by another execution running as nobody): use a fresh one.
            child.reap()
            child = self._prepare()
            child.hand_over(data)
        self.send({"event": "started", "pid": child.pid})
        return child.supervise(wall_s, self.max_output), child

    def _jail_and_run(self, workdir: str, code_r: int, out_w: int, err_w: int,
                      rep_w: int) -> None:
        """Runs in the forked child: jail itself, wait for code, run it, _exit. Never returns."""
        try:
            os.setsid()
            # Lift the sources above the targets first, so no dup2 clobbers a source.
            sources = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _CODE_FD + 1)
                       for fd in (self.devnull, out_w, err_w, rep_w, code_r)]
            for target, fd in enumerate(sources):  # stdin, stdout, stderr, report, code
                os.dup2(fd, target, inheritable=target <= 2)
            # Above all the socket to the parent: code writing to it could forge results.
            os.closerange(_CODE_FD + 1, os.sysconf("SC_OPEN_MAX"))
        except BaseException:
            os._exit(_SETUP_FAILED_EXIT)  # no record: fd 3 may not be the report pipe yet
        try:
            os.chdir(workdir)
            for limit, soft, hard in self.rlimits:
                resource.setrlimit(limit, (soft, hard))
            if self.ids is not None:
                uid, gid = self.ids
                os.setgroups([])
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
            # Set after the uid change, which clears it. Dies with the worker, so a killed
            # worker leaves no code running.
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != self.pid:
                raise RuntimeError("the worker died before PDEATHSIG was armed")
            if _LIBC.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
            if self.seccomp is not None:
                prog = self.seccomp[1]
                if _LIBC.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0):
                    raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
            os.environ["HOME"] = os.environ["TMPDIR"] = workdir
            tempfile.tempdir = workdir
            sys.argv = ["<step>"]
            for fd, name in ((1, "stdout"), (2, "stderr")):
                stream = io.open(fd, "w", encoding="utf-8", errors="backslashreplace",
                                 closefd=False)
                setattr(sys, name, stream)
                setattr(sys, f"__{name}__", stream)
            main = types.ModuleType("__main__")
            main.__builtins__ = builtins
            sys.modules["__main__"] = main

            chunks = []
            while chunk := os.read(_CODE_FD, 1 << 16):
                chunks.append(chunk)
            os.close(_CODE_FD)
            code = b"".join(chunks).decode("utf-8", "surrogatepass")
            # Tracebacks then show the offending source line of the step.
            linecache.cache["<step>"] = (len(code), None, code.splitlines(True), "<step>")
        except BaseException as exc:
            _finish(_SETUP_FAILED_EXIT, "setup", f"{type(exc).__name__}: {exc}")
        _finish(*_run_code(code, main.__dict__))


class _Child:
    """Worker-side handle of one forked child, from prepared to reaped."""

    def __init__(self, pid: int, workdir: str, code_w: int, out_r: int, err_r: int,
                 rep_r: int) -> None:
        self.pid = pid
        self.workdir = workdir
        self.code_w = code_w
        self.out_r, self.err_r, self.rep_r = out_r, err_r, rep_r
        self.pidfd = os.pidfd_open(pid)
        self.reaped = False
        self.wait_status: int | None = None
        self.cpu_s: float | None = None

    def hand_over(self, data: bytes) -> None:
        # Blocking is fine: the child is (or soon will be) reading until EOF.
        view = memoryview(data)
        while view:
            view = view[os.write(self.code_w, view):]
        os.close(self.code_w)
        self.code_w = -1

    def supervise(self, wall_s: float, max_output: int) -> dict:
        """Collect output until the child is done, enforcing the deadline and output cap.

        Done means either the child's final record arrived and every pipe is closed (the
        fast path: the child is exiting, its teardown is not waited for) or the child exited
        (then the group is killed and reaped here, before reporting).
        """
        start = time.monotonic()
        deadline = start + wall_s
        buffers = {self.out_r: bytearray(), self.err_r: bytearray(), self.rep_r: bytearray()}
        caps = {self.out_r: max_output, self.err_r: max_output, self.rep_r: _MAX_RECORD_BYTES}
        names = {self.out_r: "stdout", self.err_r: "stderr"}
        poller = select.poll()
        for fd in (*buffers, self.pidfd):
            poller.register(fd, select.POLLIN)
        open_fds = set(buffers)
        exited_at: float | None = None
        timed_out = killed = False
        overflow: str | None = None

        while open_fds or exited_at is None:
            now = time.monotonic()
            if exited_at is None:
                if not open_fds and _parse_record(buffers[self.rep_r]) is not None:
                    break
                if now >= deadline and not killed:
                    timed_out = killed = True
                    _killpg(self.pid)
                wait_ms = 50 if killed else max(0.0, deadline - now) * 1000
            elif now - exited_at >= _DRAIN_S:
                break  # an escaped process keeps a pipe open; stop listening to it
            else:
                wait_ms = (_DRAIN_S - (now - exited_at)) * 1000
            for fd, _event in poller.poll(wait_ms):
                if fd == self.pidfd:
                    exited_at = time.monotonic()
                    poller.unregister(fd)
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    poller.unregister(fd)
                    open_fds.discard(fd)
                    continue
                buf = buffers[fd]
                room = caps[fd] + 1 - len(buf)
                if room > 0:
                    buf += chunk[:room]
                if len(buf) > caps[fd] and fd in names and overflow is None:
                    overflow = names[fd]
                    killed = True
                    _killpg(self.pid)
        duration = time.monotonic() - start
        # While unreaped the child holds its pgid, so this cannot hit a stranger: it kills
        # whatever the code left behind (a sleeping grandchild, a fork bomb's remains).
        _killpg(self.pid)
        record = _parse_record(buffers[self.rep_r])
        if exited_at is not None:
            self.reap()
        shutil.rmtree(self.workdir, ignore_errors=True)

        exit_code = signum = None
        if self.wait_status is not None:
            if os.WIFSIGNALED(self.wait_status):
                signum = os.WTERMSIG(self.wait_status)
            else:
                exit_code = os.WEXITSTATUS(self.wait_status)
        elif record is not None:
            exit_code = record[0]
        return {
            "event": "done",
            "stdout": bytes(buffers[self.out_r][:max_output]).decode("utf-8", "replace"),
            "stderr": bytes(buffers[self.err_r][:max_output]).decode("utf-8", "replace"),
            "exit_code": exit_code,
            "signal": signum,
            "timed_out": timed_out,
            "overflow": overflow,
            "kind": record[1] if record else None,
            "message": record[3] if record else "",
            "cpu_s": self.cpu_s if self.cpu_s is not None else (record[2] if record else 0.0),
            "duration_s": duration,
        }

    def reap(self) -> None:
        """Kill and reap the child and everything left in its process group; close fds."""
        if self.reaped:
            return
        self.reaped = True
        _killpg(self.pid)
        _, self.wait_status, usage = os.wait4(self.pid, 0)
        self.cpu_s = usage.ru_utime + usage.ru_stime
        for fd in (self.code_w, self.out_r, self.err_r, self.rep_r, self.pidfd):
            if fd >= 0:
                os.close(fd)
        give_up = time.monotonic() + _REAP_S
        # Orphans of the group are our children now (subreaper): collect them until the
        # group is empty.
        while True:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            while True:
                try:
                    reaped, _ = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if reaped == 0:
                    break
            if time.monotonic() >= give_up:
                break
            time.sleep(0.001)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _run_code(code: str, namespace: dict) -> tuple[int, str, str]:
    """exec() the code like `python` runs a script; returns (exit status, kind, message)."""
    out_of_memory = False
    try:
        exec(compile(code, "<step>", "exec"), namespace)
        result = (0, "ok", "")
    except MemoryError:
        out_of_memory = True  # handled below, once the traceback has let go of its frames
    except SystemExit as exc:
        result = _exit_result(exc)
    except BaseException as exc:
        try:
            tb = exc.__traceback__.tb_next if exc.__traceback__ else None  # drop our frame
            traceback.print_exception(type(exc), exc, tb)
            result = (1, "error", traceback.format_exception_only(type(exc), exc)[-1].strip())
        except BaseException:
            result = (1, "error", type(exc).__name__)
    if out_of_memory:
        namespace.clear()  # free what the code still holds so reporting can allocate
        result = (1, "memory", "MemoryError")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass  # a closed or full pipe: what got through is what we report
    return result


def _exit_result(exc: SystemExit) -> tuple[int, str, str]:
    if exc.code is None:
        return 0, "ok", ""
    if isinstance(exc.code, int):
        status = exc.code & 0xFF
        return (0, "ok", "") if status == 0 else (status, "exit", f"exited with code {status}")
    try:
        print(exc.code, file=sys.stderr)
    except BaseException:
        pass
    return 1, "exit", str(exc.code)[:_MAX_MESSAGE_CHARS]


def _finish(status: int, kind: str, message: str) -> None:
    """Write the final record, close the pipes (which lets the worker report without
    waiting for this process's teardown) and exit."""
    try:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        record = f"{status} {kind} {usage.ru_utime + usage.ru_stime:.6f}\n"
        os.write(_REPORT_FD, (record + message[:_MAX_MESSAGE_CHARS]).encode("utf-8", "replace"))
    except BaseException:
        pass  # no record: the worker falls back to the exit status
    os.closerange(0, _CODE_FD + 1)
    os._exit(status)


def _parse_record(data: bytearray) -> tuple[int, str, float, str] | None:
    """(status, kind, cpu_s, message) from a child's final record, None if incomplete."""
    head, sep, message = bytes(data).decode("utf-8", "replace").partition("\n")
    fields = head.split(" ")
    if not sep or len(fields) != 3:
        return None
    try:
        return int(fields[0]), fields[1], float(fields[2]), message
    except ValueError:
        return None


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main() -> None:
    Worker(json.loads(sys.argv[1])).serve()


if __name__ == "__main__":
    main()
