"""Generate the Python stubs of `protos/rstar/v1` into `rstar_rpc/gen/` (gitignored).

`python -m rstar_rpc.build_protos` (what `make protos` and the Dockerfiles run) invokes
grpc_tools' bundled protoc with ``--python_out``, ``--grpc_python_out`` and ``--pyi_out``
and rewrites the generated ``from rstar.v1 import ...`` lines so the stubs import as
``rstar_rpc.gen.rstar.v1.<name>_pb2``. The descriptors keep their proto paths
(``rstar/v1/policy.proto``), which is what server reflection reports.

`ensure_stubs()` is called when `rstar_rpc` is imported. In a source checkout it rebuilds
the stubs when they are missing or stale (a stamp records a digest of the .proto files and
the grpcio-tools version), so tests, services started from the checkout and other
packages' tests never run against missing or outdated stubs. The build happens under a
file lock into a temporary directory that then replaces `gen/`, so concurrent processes
never import half a build. Where the .proto files are not shipped (an installed wheel) it
uses whatever `gen/` holds and fails with a clear message when there is nothing.

Not here: any stub other than ours (health and reflection come with their packages).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import logging
import re
import shutil
import tempfile
from importlib import resources
from pathlib import Path

__all__ = ["GEN_DIR", "PROTO_ROOT", "build", "ensure_stubs"]

log = logging.getLogger(__name__)

PROTO_ROOT = Path(__file__).resolve().parents[3] / "protos"
GEN_DIR = Path(__file__).resolve().with_name("gen")
_STAMP = "BUILD_STAMP"
# protoc writes imports by proto package; the stubs live below rstar_rpc.gen instead.
_IMPORT = re.compile(r"^from rstar\.v1 import ", re.MULTILINE)
_PACKAGE_IMPORT = "from rstar_rpc.gen.rstar.v1 import "


def _proto_files(proto_root: Path) -> list[Path]:
    return sorted(proto_root.glob("rstar/v*/*.proto"))


def _digest(proto_root: Path) -> str:
    from grpc_tools import grpc_version

    digest = hashlib.sha256(f"grpcio-tools {grpc_version.VERSION}\n".encode())
    for path in _proto_files(proto_root):
        digest.update(path.relative_to(proto_root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _is_current(out_dir: Path, digest: str) -> bool:
    stamp = out_dir / _STAMP
    return stamp.is_file() and stamp.read_text().strip() == digest


def build(proto_root: Path = PROTO_ROOT, out_dir: Path = GEN_DIR) -> Path:
    """Generate the stubs into `out_dir`, replacing what is there. Returns `out_dir`."""
    from grpc_tools import protoc

    files = _proto_files(proto_root)
    if not files:
        raise FileNotFoundError(f"no .proto files under {proto_root}/rstar/")
    digest = _digest(proto_root)
    staging = Path(tempfile.mkdtemp(prefix=".gen-", dir=out_dir.parent))
    try:
        well_known = resources.files("grpc_tools") / "_proto"
        args = [
            "grpc_tools.protoc",
            f"--proto_path={proto_root}",
            f"--proto_path={well_known}",
            f"--python_out={staging}",
            f"--grpc_python_out={staging}",
            f"--pyi_out={staging}",
            *(path.relative_to(proto_root).as_posix() for path in files),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto_root} (its errors are on stderr above)")
        for generated in staging.rglob("*.py*"):
            generated.write_text(_IMPORT.sub(_PACKAGE_IMPORT, generated.read_text()))
        for package in {staging, *(p.parent for p in staging.rglob("*_pb2.py"))}:
            while package != staging.parent:
                (package / "__init__.py").touch()
                package = package.parent
        (staging / _STAMP).write_text(digest + "\n")
        _replace_dir(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("generated stubs for %d proto files into %s", len(files), out_dir)
    return out_dir


def _replace_dir(new: Path, target: Path) -> None:
    # Two renames: a directory cannot atomically replace a non-empty one. Readers that find
    # `target` missing in between go through ensure_stubs, which waits on the lock.
    old = target.with_name(f".{target.name}-old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def ensure_stubs(proto_root: Path = PROTO_ROOT, out_dir: Path = GEN_DIR) -> None:
    """Build the stubs when missing or stale; a no-op when they are current."""
    if not _proto_files(proto_root):
        if not (out_dir / _STAMP).is_file():
            raise ImportError(
                f"rstar_rpc stubs are missing from {out_dir} and no .proto files were found at "
                f"{proto_root}: run `make protos` (python -m rstar_rpc.build_protos) in a checkout"
            )
        return
    digest = _digest(proto_root)
    if _is_current(out_dir, digest):
        return
    lock_path = Path(tempfile.gettempdir()) / (
        "rstar_rpc-gen-" + hashlib.sha256(str(out_dir).encode()).hexdigest()[:16] + ".lock"
    )
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_current(out_dir, digest):  # another process may have built meanwhile
            build(proto_root, out_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protos", type=Path, default=PROTO_ROOT,
                        help=f"proto root directory (default: {PROTO_ROOT})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build(args.protos.resolve())


if __name__ == "__main__":
    main()
