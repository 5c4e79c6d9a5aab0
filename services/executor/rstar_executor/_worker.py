"""Sandbox worker: a warm interpreter that forks one jailed child per code execution.

`rstar_executor.sandbox` starts this file as ``python -s -P _worker.py CONFIG_JSON`` with a
scrubbed environment and one end of a socketpair. It is exec'd, never forked from the caller,
so nothing of the caller's process (torch, vLLM, CUDA state, open files, secrets in memory)
is inherited. It imports only the standard library plus the configured preload modules and
nothing from this package.

Once per worker (the expensive part, paid at startup): become a child subreaper, enter a new
empty network namespace (children inherit it), look up nobody's uid/gid, compile the seccomp
filter, import the preload modules, enter a private mount namespace in which every mount is
remounted read-only (children inherit it), gc.freeze() so children do not copy-on-write the
heap.

Once per execution, ahead of time: fork the next child while the worker is idle. The child
calls setsid, redirects stdin/stdout/stderr, closes every other inherited fd, enters a mount
namespace of its own with one fresh size-limited tmpfs on /tmp, /var/tmp and /dev/shm (import
paths that lie there, a checkout or virtualenv under /tmp, bound back read-only; or,
where mount namespaces are not permitted, gets a fresh temp dir the worker created), chdirs
into its temp dir, sets rlimits, drops to nobody, arms PDEATHSIG, sets no_new_privs, loads
the seccomp filter, and then blocks reading its code from a pipe. So a request only pays
for handing over the code: fork and jailing (1-3 ms with sympy loaded) are off the critical
path. The child exec()s the code in a fresh ``__main__``, writes a final record and exits.
The worker enforces the wall deadline and the output cap, kills the child's whole process
group, removes the temp dir it made (a tmpfs goes away with the child's namespace once its
last process is gone) and reports; a group that was killed or timed out is fully reaped
before the report, a child that finished normally is reaped later.

Protocol on the socket: length-prefixed (4-byte big-endian) UTF-8 JSON frames.
  worker -> {"event": "ready", ...isolation facts...}                  once, at startup
  parent -> {"code": str, "wall_s": float}                             one request at a time
  worker -> {"event": "started", "pid": int}                           the child's pid = pgid
  worker -> {"event": "done", "stdout", "stderr", "exit_code", "signal", "timed_out",
             "overflow", "kind", "message", "cpu_s", "duration_s"}
The worker exits when the socket reaches EOF; its idle child dies with it (PDEATHSIG).

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
import re
import resource
import select
import shutil
import signal
import socket
import stat
import struct
import sys
import tempfile
import time
import traceback
import types

_HEADER = struct.Struct("!I")
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
_LIBC.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_SECCOMP = 22
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_MODE_FILTER = 2
_CLONE_NEWNET = 0x40000000
_CLONE_NEWNS = 0x00020000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT = 1, 2, 4, 8, 32
_MS_BIND, _MS_MOVE, _MS_REC, _MS_PRIVATE = 4096, 8192, 16384, 1 << 18
# Per-mount flags a read-only bind remount must repeat, or it would clear them.
_MOUNT_OPTION_FLAGS = {"nosuid": _MS_NOSUID, "nodev": _MS_NODEV, "noexec": _MS_NOEXEC}
# The world-writable places each execution gets privately, in this order: the first one
# present is also the code's cwd, HOME and TMPDIR.
_PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
# Files (and directories) the private tmpfs may hold: empty files take no space, so without
# this the code could pin kernel memory with millions of inodes under any size limit.
_TMPFS_INODES = 16384

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
# Process groups killed but not waited for (see _Child.supervise) that may be tearing down
# at once; beyond this the worker waits, which bounds memory and nobody's process count.
_MAX_DYING = 4
# While such groups remain, how often the idle worker looks for zombies to reap.
_SETTLE_POLL_MS = 5
# In a child: its own pid, set once jailed (see _finish).
_jailed_pid = 0

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
    """One warm sandbox worker: startup isolation in __init__, then `serve` until EOF."""

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
        # Whether this worker already left the caller's mount namespace.
        self.mount_ns = False
        self.devnull = os.open(os.devnull, os.O_RDWR)
        self.pid = os.getpid()
        # Process groups (= pids of their leaders) killed but not yet seen gone.
        self.dying: set[int] = set()

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
                self._expose_import_paths()
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

        # Last: the imports above may still have wanted to write somewhere.
        self.private_tmp: tuple[str, ...] = ()
        # Import paths the private tmpfs would hide (a checkout or virtualenv under /tmp).
        self.tmp_import_paths: tuple[str, ...] = ()
        self.tmpfs_options = (f"size={config['tmpfs_bytes']},nr_inodes={_TMPFS_INODES},"
                              "mode=0755")
        self.read_only = False
        if config["isolate_filesystem"]:
            self._isolate_filesystem()
        # Everything allocated so far lives in the permanent generation: the children's
        # collections then do not touch (and copy) these pages.
        gc.freeze()

    def _expose_import_paths(self) -> None:
        """Let nobody import from sys.path dirs that lie under a directory it cannot enter.

        A Python installed under /root (pyenv) or a home directory is invisible to nobody,
        so every import not preloaded would fail. In a private mount namespace, such a
        directory is covered with an empty tmpfs and only the import paths are bound back:
        the code can import again and sees nothing else of that directory.
        """
        hidden = [p for p in dict.fromkeys(map(os.path.realpath, sys.path))
                  if os.path.isdir(p) and not _world_readable(p)]
        if not hidden:
            return
        covers: dict[str, list[str]] = {}  # closed ancestor -> import paths under it
        for path in hidden:
            closed = _closed_ancestor(path)
            if closed is not None and closed != path:
                covers.setdefault(closed, []).append(path)
        try:
            if covers:
                self._enter_mount_namespace()
                _cover_with_import_paths(covers, self.base_dir)
        except OSError as exc:
            self.warnings.append(f"could not re-expose import paths ({exc})")
        still = [p for p in hidden if not _world_readable(p)]
        if still:
            self.warnings.append(f"nobody cannot read {', '.join(still)}: code can import "
                                 "only built-in and preloaded modules from there")

    def _enter_mount_namespace(self) -> None:
        """Leave the caller's mount namespace (once); raises OSError where not permitted."""
        if self.mount_ns:
            return
        if _LIBC.unshare(_CLONE_NEWNS) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNS): {os.strerror(err)}")
        # Keep our mounts (and those of the children, which copy ours) out of the caller's
        # namespace.
        _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
        self.mount_ns = True

    def _isolate_filesystem(self) -> None:
        """Make every mount read-only for this worker and its children, and check that a
        child can cover the temp dirs with its own tmpfs; warn about what did not work."""
        try:
            self._enter_mount_namespace()
        except OSError as exc:
            self.warnings.append(
                f"no private mount namespace ({exc}): code shares /tmp, /var/tmp and /dev/shm "
                "with the host and can write wherever its uid may")
            return
        failed = _remount_read_only()
        self.read_only = not failed
        if failed:
            self.warnings.append(f"could not make {', '.join(failed)} read-only: code can "
                                 "write there wherever its uid may")
        targets = tuple(dict.fromkeys(
            os.path.realpath(d) for d in _PRIVATE_TMP_DIRS if os.path.isdir(d)))
        import_paths = _import_paths_under(targets)
        # A throwaway child tries what every child will do, so that a refused mount shows up
        # here once instead of failing every execution.
        pid = os.fork()
        if pid == 0:
            try:
                _mount_private_tmp(self.base_dir, targets, self.tmpfs_options, import_paths)
                os._exit(0)
            except BaseException:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and targets:
            self.private_tmp = targets
            self.tmp_import_paths = import_paths
        else:
            self.warnings.append("could not mount a private tmpfs: code shares /tmp, "
                                 "/var/tmp and /dev/shm with the host")

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
                   "seccomp": self.seccomp is not None, "private_tmp": bool(self.private_tmp),
                   "read_only_fs": self.read_only, "preloaded": self.preloaded,
                   "warnings": self.warnings})
        while True:
            self._settle_until_request()
            if (request := self.recv()) is None:
                return
            result, child = self._execute(child, request["code"], float(request["wall_s"]))
            self.send(result)
            # Off the critical path: jail the next child while the caller is busy elsewhere.
            if not child.reaped:
                self.dying.add(child.pid)
            self._settle()
            while len(self.dying) > _MAX_DYING:
                time.sleep(_SETTLE_POLL_MS / 1000)
                self._settle()
            child = self._prepare()

    def _settle(self) -> None:
        """Reap what has died; forget the killed groups that are now completely gone."""
        _collect_zombies()
        for pgid in list(self.dying):
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                self.dying.discard(pgid)

    def _settle_until_request(self) -> None:
        """Reap killed groups while waiting for the next request, so they do not linger."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        while self.dying and not poller.poll(_SETTLE_POLL_MS):
            self._settle()

    # -- one execution --------------------------------------------------------------------

    def _prepare(self) -> _Child:
        """Fork a child that jails itself and then blocks reading its code."""
        if self.private_tmp:
            # The child's own tmpfs, which goes away with it: nothing to create or remove.
            workdir, scratch = self.private_tmp[0], None
        else:
            workdir = scratch = tempfile.mkdtemp(dir=self.base_dir)
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
        return _Child(pid, scratch, code_w, out_r, err_r, rep_r)

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
            try:
                child.hand_over(data)
            except BrokenPipeError:
                pass  # this one died too (failed to jail itself?): supervise reports how
        self.send({"event": "started", "pid": child.pid})
        return child.supervise(wall_s, self.max_output), child

    def _jail_and_run(self, workdir: str, code_r: int, out_w: int, err_w: int,
                      rep_w: int) -> None:
        """Runs in the forked child: jail itself, wait for code, run it, _exit. Never returns."""
        global _jailed_pid
        _jailed_pid = os.getpid()
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
            if self.private_tmp:
                _mount_private_tmp(self.base_dir, self.private_tmp, self.tmpfs_options,
                                   self.tmp_import_paths)
            os.chdir(workdir)
            for limit, soft, hard in self.rlimits:
                resource.setrlimit(limit, (soft, hard))
            if self.ids is not None:
                uid, gid = self.ids
                os.setgroups([])
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
            # Not dumpable: other processes of nobody (concurrent executions) cannot ptrace
            # this one or read its /proc/<pid>/mem and environ.
            _LIBC.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
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

    def __init__(self, pid: int, scratch: str | None, code_w: int, out_r: int, err_r: int,
                 rep_r: int) -> None:
        self.pid = pid
        # The temp dir to remove once the child is done (None: it lives in the child's tmpfs).
        self.scratch = scratch
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
        fast path: the group is killed but its teardown is not waited for; the zombies are
        collected after the report) or the child exited (then the group is killed and
        reaped here, before reporting).
        """
        out_r, err_r, rep_r = self.out_r, self.err_r, self.rep_r  # closed before we return
        start = time.monotonic()
        deadline = start + wall_s
        buffers = {out_r: bytearray(), err_r: bytearray(), rep_r: bytearray()}
        caps = {out_r: max_output, err_r: max_output, rep_r: _MAX_RECORD_BYTES}
        names = {out_r: "stdout", err_r: "stderr"}
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
                if not open_fds and _parse_record(buffers[rep_r]) is not None:
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
        record = _parse_record(buffers[rep_r])
        if exited_at is not None:
            self.reap()
        else:
            self._close_fds()
            self._remove_scratch()

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
            "stdout": bytes(buffers[out_r][:max_output]).decode("utf-8", "replace"),
            "stderr": bytes(buffers[err_r][:max_output]).decode("utf-8", "replace"),
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
        try:
            _, self.wait_status, usage = os.wait4(self.pid, 0)
            self.cpu_s = usage.ru_utime + usage.ru_stime
        except ChildProcessError:
            pass  # died while idle and already collected with the zombies
        self._close_fds()
        give_up = time.monotonic() + _REAP_S
        # Orphans of the group are our children now (subreaper): collect them until the
        # group is empty.
        while True:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            _collect_zombies()
            if time.monotonic() >= give_up:
                break
            time.sleep(0.001)
        self._remove_scratch()

    def _remove_scratch(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def _close_fds(self) -> None:
        for name in ("code_w", "out_r", "err_r", "rep_r", "pidfd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


def _collect_zombies() -> None:
    """Reap every exited child without blocking (earlier children, adopted orphans)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


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
    waiting for this process's teardown) and exit.

    A process the code forked that runs off the end of the code exits here too, like a
    forked child of a script would, but only the jailed child itself writes a record.
    """
    if os.getpid() != _jailed_pid:
        os._exit(status)
    try:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        record = f"{status} {kind} {usage.ru_utime + usage.ru_stime:.6f}\n"
        os.write(_REPORT_FD, (record + message[:_MAX_MESSAGE_CHARS]).encode("utf-8", "replace"))
    except BaseException:
        pass  # no record: the worker falls back to the exit status
    # The worker reports as soon as the pipes close, without waiting for this process's
    # teardown (unmapping a heap the size of sympy's takes milliseconds). At lowest priority
    # that teardown yields the CPU to the worker and its caller on a busy machine.
    os.setpriority(os.PRIO_PROCESS, 0, 19)
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


def _closed_ancestor(path: str) -> str | None:
    """The outermost directory on the way to `path` (itself included) that others cannot
    traverse, or None."""
    parts = path.split(os.sep)
    for depth in range(2, len(parts) + 1):
        prefix = os.sep.join(parts[:depth])
        if not os.stat(prefix).st_mode & stat.S_IXOTH:
            return prefix
    return None


def _cover_with_import_paths(covers: dict[str, list[str]], staging_root: str) -> None:
    """Cover each closed directory with a tmpfs and move its import paths back on top
    (in the worker's private mount namespace)."""
    for closed, paths in covers.items():
        # Outermost paths only: a bind brings its subdirectories along.
        paths = [p for p in paths if not any(p.startswith(q + os.sep) for q in paths)]
        staged = []
        for path in paths:
            stage = tempfile.mkdtemp(dir=staging_root)
            _mount(path, stage, None, _MS_BIND | _MS_REC)
            staged.append((stage, path))
        _mount("tmpfs", closed, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=64k")
        for stage, path in staged:
            os.makedirs(path, exist_ok=True)
            _mount(stage, path, None, _MS_MOVE)
            os.rmdir(stage)


def _remount_read_only() -> list[str]:
    """Bind-remount every mount point of this (private) namespace read-only, keeping its
    nosuid/nodev/noexec; returns the mount points that refused."""
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        lines = mountinfo.read().splitlines()
    # Mount point -> per-mount options of the last mount there, the one paths resolve to.
    tops: dict[str, list[str]] = {}
    for line in lines:
        fields = line.split(" ")
        # Spaces and the like in a mount point are octal escapes (\040).
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        tops[point] = fields[5].split(",")
    failed = []
    for point, options in tops.items():
        if "ro" in options:
            continue
        flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY
        for option in options:
            flags |= _MOUNT_OPTION_FLAGS.get(option, 0)
        try:
            _mount(None, point, None, flags)
        except OSError as exc:
            # EINVAL, ENOENT: covered by a later mount (which gets its own turn), unreachable.
            if exc.errno not in (errno.EINVAL, errno.ENOENT):
                failed.append(point)
    return failed


def _import_paths_under(targets: tuple[str, ...]) -> tuple[str, ...]:
    """The outermost sys.path directories that lie under one of `targets` (a checkout or a
    virtualenv in /tmp): the private tmpfs would hide them, so they are bound back on top."""
    paths = [p for p in dict.fromkeys(map(os.path.realpath, sys.path))
             if os.path.isdir(p) and any(p.startswith(t + os.sep) for t in targets)]
    return tuple(p for p in paths if not any(p.startswith(q + os.sep) for q in paths))


def _mount_private_tmp(staging: str, targets: tuple[str, ...], options: str,
                       import_paths: tuple[str, ...] = ()) -> None:
    """In a new mount namespace of the calling child: one fresh tmpfs with a subdirectory
    (mode 1777) bound on each target. One tmpfs, so `options`' size bounds them together.
    Each of `import_paths` (under a target) is bound back at its place, read-only as the
    worker's remount left it, inside root-owned directories the code cannot change."""
    if _LIBC.unshare(_CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNS): {os.strerror(err)}")
    _mount("tmpfs", staging, "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, options)
    # Relative sources resolve from the cwd, which stays in the new tmpfs even once a
    # target that contains `staging` (/tmp, usually) is covered.
    os.chdir(staging)
    # Staged before the targets are covered, while their sources are still visible.
    staged = []
    for index, path in enumerate(import_paths):
        stage = f"import{index}"
        os.mkdir(stage)
        _mount(path, stage, None, _MS_BIND | _MS_REC)
        staged.append((stage, path))
    for index, target in enumerate(targets):
        name = str(index)
        os.mkdir(name)
        os.chmod(name, 0o1777)
        _mount(name, target, None, _MS_BIND)
    for stage, path in staged:
        os.makedirs(path, mode=0o755, exist_ok=True)
        _mount(stage, path, None, _MS_MOVE)


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    args = [None if arg is None else arg.encode() for arg in (source, target, fstype)]
    if _LIBC.mount(*args, flags, None if data is None else data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def _world_readable(path: str) -> bool:
    """Whether any user can list `path` and traverse every directory leading to it."""
    path = os.path.realpath(path)
    if not os.stat(path).st_mode & stat.S_IROTH:
        return False
    while path != os.path.dirname(path):
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        path = os.path.dirname(path)
    return True


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main() -> None:
    Worker(json.loads(sys.argv[1])).serve()


if __name__ == "__main__":
    main()
