"""The process sandbox's filesystem: private temp dirs per execution, the rest read-only.

One property per test, real processes. The properties need a private mount namespace
(root here); where the machine does not allow one the tests skip with the reason, after
checking that `isolation` says so.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sys
import tempfile
import uuid
import venv

import pytest

from rstar_core.ports import ExecutionStatus
from rstar_executor import SandboxExecutor, SandboxSettings

LIGHT = {"preload_modules": ("math",)}
TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


@pytest.fixture(scope="module")
def executor():
    # One worker: every execution of a test is forked from the same worker, so what one
    # execution leaves behind would be there for the next.
    ex = SandboxExecutor(SandboxSettings(pool_size=1, **LIGHT))
    asyncio.run(ex.start())
    if not ex.isolation["private_tmp"]:
        asyncio.run(ex.close())
        pytest.skip("no private mount namespace here (isolation reports private_tmp False)")
    yield ex
    asyncio.run(ex.close())


def run(ex: SandboxExecutor, code: str, **kwargs):
    return asyncio.run(ex.run(code, **kwargs))


def unique(directory: str) -> str:
    return os.path.join(directory, f"rstar-leak-{uuid.uuid4().hex}")


# Three ways model code writes a file: directly, through a shell, from a pickle payload.
WRITERS = {
    "open": "open({path!r}, 'w').write('y')",
    "shell": "import subprocess\nsubprocess.run('touch {path}', shell=True, check=True)",
    "pickle": ("import os, pickle\n"
               "class Payload:\n"
               "    def __reduce__(self):\n"
               "        return os.system, ('touch {path}',)\n"
               "assert pickle.loads(pickle.dumps(Payload())) == 0\n"),
}


@pytest.mark.parametrize("how", sorted(WRITERS))
def test_file_written_to_tmp_is_gone_for_the_host_and_the_next_execution(executor, how):
    path = unique("/tmp")
    code = WRITERS[how].format(path=path) + f"\nimport os\nprint(os.path.exists({path!r}))"
    written = run(executor, code)
    assert written.stdout == "True\n", written  # the code saw its own file
    assert not os.path.exists(path)
    later = run(executor, f"import os\nprint(os.path.exists({path!r}))")
    assert later.stdout == "False\n", later


@pytest.mark.parametrize("directory", ["/dev/shm", "/var/tmp"])
def test_file_written_to_dev_shm_or_var_tmp_is_gone_for_the_host_and_the_next_execution(
        executor, directory):
    if not os.path.isdir(directory):
        pytest.skip(f"{directory} does not exist here")
    path = unique(directory)
    written = run(executor, f"open({path!r}, 'w').write('y')\nimport os\n"
                            f"print(os.path.exists({path!r}))")
    assert written.stdout == "True\n", written
    assert not os.path.exists(path)
    later = run(executor, f"import os\nprint(os.listdir({directory!r}))")
    assert later.stdout == "[]\n", later


def test_concurrent_executions_do_not_see_each_others_tmp():
    path = unique("/tmp")
    writer = (f"import time\nopen({path!r}, 'w').write('y')\nprint('written', flush=True)\n"
              "time.sleep(2.5)")
    # Polls for the writer's file for 2 s, while the writer is still running.
    reader = ("import os, time\n"
              "deadline = time.monotonic() + 2\n"
              f"while not os.path.exists({path!r}) and time.monotonic() < deadline:\n"
              "    time.sleep(0.02)\n"
              f"print(os.path.exists({path!r}))")

    async def main():
        async with SandboxExecutor(SandboxSettings(pool_size=2, **LIGHT)) as ex:
            if not ex.isolation["private_tmp"]:
                pytest.skip("no private mount namespace here")
            return await asyncio.gather(ex.run(writer), ex.run(reader))

    written, read = asyncio.run(main())
    assert written.stdout == "written\n", written
    assert read.stdout == "False\n", read


def test_write_outside_the_temp_dirs_fails_read_only(executor):
    # A directory anyone may write to, outside the private temp dirs: only a read-only
    # mount stops the code (as nobody) from writing there.
    parent = next((d for d in ("/var/lib", "/srv", "/opt", "/mnt", os.getcwd())
                   if os.access(d, os.W_OK)
                   and not any(os.path.realpath(d).startswith(t) for t in TEMP_DIRS)), None)
    if parent is None:
        pytest.skip("no writable directory outside the temp dirs")
    directory = tempfile.mkdtemp(dir=parent, prefix="rstar-ro-")
    os.chmod(directory, 0o777)
    path = os.path.join(directory, "written")
    try:
        result = run(executor, f"open({path!r}, 'w').write('y')")
        assert not os.path.exists(path)
    finally:
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(directory)
    assert result.status is ExecutionStatus.ERROR
    assert result.error == f"OSError: [Errno {errno.EROFS}] Read-only file system: {path!r}"
    assert result.extra["read_only_fs"] is True


def test_tmpfs_size_limit_holds_for_all_temp_dirs_together():
    # Half a MiB to /tmp, then /dev/shm until the 1 MiB tmpfs is full.
    code = ("import errno\n"
            "written = 0\n"
            "try:\n"
            "    with open('/tmp/a', 'wb') as f:\n"
            "        f.write(bytes(512 * 1024))\n"
            "    written += 512 * 1024\n"
            "    with open('/dev/shm/b', 'wb', buffering=0) as f:\n"
            "        for _ in range(64):\n"
            "            written += f.write(bytes(64 * 1024))\n"
            "except OSError as exc:\n"
            "    print(errno.errorcode[exc.errno], written)\n")

    async def main():
        async with SandboxExecutor(SandboxSettings(pool_size=1, tmpfs_mb=1, **LIGHT)) as ex:
            if not ex.isolation["private_tmp"]:
                pytest.skip("no private mount namespace here")
            return await ex.run(code)

    result = asyncio.run(main())
    assert result.ok, result
    name, written = result.stdout.split()
    assert name == "ENOSPC"
    assert 512 * 1024 < int(written) <= 1024 * 1024


def test_isolation_says_when_the_filesystem_is_not_isolated():
    async def main():
        async with SandboxExecutor(SandboxSettings(pool_size=1, isolate_filesystem=False,
                                                   **LIGHT)) as ex:
            return ex.isolation, await ex.run("import os\nprint(os.getcwd())")

    isolation, result = asyncio.run(main())
    assert (isolation["private_tmp"], isolation["read_only_fs"]) == (False, False)
    assert (result.extra["private_tmp"], result.extra["read_only_fs"]) == (False, False)
    assert result.stdout.strip() != "/tmp"  # a temp dir of its own instead


def test_import_paths_under_tmp_stay_importable_and_read_only(tmp_path, monkeypatch):
    # A checkout or virtualenv under /tmp (a clean clone there): the private tmpfs covers
    # /tmp, yet the code must still import from it, lazily, and must not write there.
    venv.create(tmp_path / "venv", with_pip=False, symlinks=True)
    site = next((tmp_path / "venv" / "lib").glob("python*/site-packages"))
    (site / "probe_pkg").mkdir()
    (site / "probe_pkg" / "__init__.py").write_text("")
    (site / "probe_pkg" / "lazy.py").write_text("VALUE = 42\n")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python"))
    code = ("import probe_pkg.lazy\n"
            "print(probe_pkg.lazy.VALUE)\n"
            "try:\n"
            "    open(probe_pkg.lazy.__file__ + '.new', 'w')\n"
            "except OSError as exc:\n"
            "    print(type(exc).__name__)\n")

    async def main():
        async with SandboxExecutor(SandboxSettings(pool_size=1, preload_modules=())) as ex:
            if not ex.isolation["private_tmp"]:
                pytest.skip("no private mount namespace here")
            return await ex.run(code)

    result = asyncio.run(main())
    assert result.ok, result
    value, refused = result.stdout.split()
    assert value == "42"
    assert refused in ("PermissionError", "OSError")  # EACCES (root's dirs) or EROFS
    assert not os.path.exists(str(site / "probe_pkg" / "lazy.py.new"))
