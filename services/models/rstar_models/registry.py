"""The model store of trained versions: one directory per version on disk, one row per version in the store.

`ModelRegistry.register()` turns a checkpoint directory written by a trainer into version
``{run}-r{round}-{kind}-{digest}`` (digest: the first 10 hex digits of the SHA-256 of its
``*.safetensors`` files), records the version in the checkpoint's ``rstar_model.json``
(so `rstar_models.store.model_version()` and the services report it), moves it to
``<store>/<version>/`` and inserts its `model_versions` row (lineage, dataset manifests,
training config, metrics; status `candidate`). Promotion, rollback and rejection change
the row's status through the `Store`, which keeps at most one promoted version per kind.

Atomicity: a version directory appears under its final name complete or not at all. On
the store's filesystem the checkpoint is renamed into place; from another filesystem it
is copied into ``<store>/.incoming-<random>/`` first, then renamed. Files are flushed to
disk before the rename. A crash leaves at worst an ``.incoming-*`` directory, which no
version name can match, `list` never shows (it reads the rows) and `clean_incoming()`
removes; or a complete version directory without its row, which registering the same
checkpoint again (or the stored directory itself) completes. When the row cannot be
written, the move is undone, so the caller can simply retry.

The store directory is ``RSTAR_MODEL_STORE``, by default ``~/.cache/rstar/store`` (beside
the prepared-model cache ``~/.cache/rstar/models``); compose and Kubernetes mount one
volume at ``/models`` for both.

Not here: rolling services onto a promoted version (`rstar_cli.launcher.roll_service`, or
the compose / Kubernetes commands in the README), training, loading models.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from rstar_store import ModelVersionInfo, Store
from rstar_store.models import MODEL_KINDS

from .store import MANIFEST, _weights_digest

__all__ = ["INCOMING_PREFIX", "ModelRegistry", "default_store_dir"]

log = logging.getLogger(__name__)

INCOMING_PREFIX = ".incoming-"
DIGEST_CHARS = 10
# The versions' primary key is String(200).
_MAX_VERSION_CHARS = 200
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def default_store_dir(env: Mapping[str, str] | None = None) -> Path:
    """`RSTAR_MODEL_STORE`, else `~/.cache/rstar/store`."""
    env = os.environ if env is None else env
    return Path(env.get("RSTAR_MODEL_STORE") or Path.home() / ".cache" / "rstar" / "store")


class ModelRegistry:
    """Versions in the model store directory `store_dir`, recorded in the store `db`."""

    def __init__(self, store_dir: str | Path, db: Store) -> None:
        # Absolute: the rows record where every service finds the version.
        self.root = Path(store_dir).expanduser().absolute()
        self.db = db

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ModelRegistry:
        """The registry of `RSTAR_MODEL_STORE` (default `~/.cache/rstar/store`) on `RSTAR_DATABASE_URL`."""
        env = os.environ if env is None else env
        return cls(default_store_dir(env), Store.from_url(env.get("RSTAR_DATABASE_URL") or None))

    def close(self) -> None:
        self.db.close()

    # --- registering --------------------------------------------------------------------

    def register(self, src_dir: str | Path, *, kind: str, round: int, run: str, parent: str | None = None,
                 base: str | None = None, datasets: Mapping[str, Any] | None = None,
                 train_config: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
                 name_hint: str | None = None) -> ModelVersionInfo:
        """Move the checkpoint `src_dir` into the store as a new candidate version and record it.

        `name_hint` replaces the ``{run}-r{round}-{kind}`` part of the version name. The
        same weights registered again give the same version: the stored row is returned
        and the now redundant `src_dir` removed.
        """
        src = Path(src_dir).expanduser().absolute()
        if not src.is_dir():
            raise ValueError(f"src_dir {str(src)!r} is not a directory")
        if kind not in MODEL_KINDS:
            raise ValueError(f"kind must be one of {', '.join(MODEL_KINDS)}, got {kind!r}")
        if not isinstance(round, int) or isinstance(round, bool) or round < 0:
            raise ValueError(f"round must be an integer >= 0, got {round!r}")
        # Checked before any file moves: a bad run or parent must leave src where it is.
        self.db.get_run(run)
        if parent is not None:
            self.db.get_model_version(parent)
        name = _version_name(name_hint, run, round, kind)
        digest = _weights_digest(src)[:DIGEST_CHARS] if any(src.glob("*.safetensors")) else None
        if digest is None:
            raise ValueError(f"src_dir {str(src)!r} has no *.safetensors files: not a checkpoint")
        version = f"{name}-{digest}"
        target = self.root / version
        manifest = _manifest(src, name=name, version=version, kind=kind, round=round, run=run, parent=parent,
                             base=base)
        row = {"kind": kind, "round": round, "parent": parent, "base": base, "run": run, "datasets": datasets,
               "train_config": train_config, "metrics": metrics}
        self.root.mkdir(parents=True, exist_ok=True)

        if src == target:
            # The stored directory itself: a crash came between its rename and its row.
            _write_manifest(target, manifest)
            return self.db.add_model_version(version, path=str(target), **row)
        if target.exists():
            return self._already_stored(src, target, version, row)
        if _same_filesystem(src, self.root):
            _write_manifest(src, manifest)
            _fsync_tree(src)
            try:
                os.rename(src, target)
            except OSError:
                if target.exists():  # another register of the same weights got there first
                    return self._already_stored(src, target, version, row)
                raise
            undo_to: Path | None = src
        else:
            incoming = Path(tempfile.mkdtemp(prefix=INCOMING_PREFIX, dir=self.root))
            try:
                shutil.copytree(src, incoming, symlinks=True, dirs_exist_ok=True)
                _write_manifest(incoming, manifest)
                _fsync_tree(incoming)
                os.rename(incoming, target)
            except OSError:
                shutil.rmtree(incoming, ignore_errors=True)
                if target.exists():
                    return self._already_stored(src, target, version, row)
                raise
            except BaseException:
                shutil.rmtree(incoming, ignore_errors=True)
                raise
            undo_to = None
        _fsync_dir(self.root)
        try:
            info = self.db.add_model_version(version, path=str(target), **row)
        except BaseException:
            self._undo(target, undo_to)
            raise
        if undo_to is None:  # copied from another filesystem
            shutil.rmtree(src)
        log.info("registered %s at %s", version, target)
        return info

    def _already_stored(self, src: Path, target: Path, version: str, row: dict[str, Any]) -> ModelVersionInfo:
        stored = _read_manifest(target).get("version")
        if stored != version:
            raise ValueError(f"{str(target)!r} exists but holds version {stored!r}, not {version!r}")
        info = self.db.add_model_version(version, path=str(target), **row)
        shutil.rmtree(src)
        log.info("%s is already in the store; removed the copy at %s", version, src)
        return info

    def _undo(self, target: Path, original: Path | None) -> None:
        """Take a version whose row could not be written back out of the store."""
        try:
            if original is not None and not original.exists():
                os.rename(target, original)
                return
            # Renamed away first, so the final name never shows a half-deleted directory.
            aside = Path(tempfile.mkdtemp(prefix=INCOMING_PREFIX, dir=self.root))
            os.rename(target, aside / "version")
            shutil.rmtree(aside, ignore_errors=True)
        except OSError as exc:
            log.error("could not take %s back out of the store (register it again to record it): %s",
                      target, exc)

    def clean_incoming(self, older_than_s: float = 3600.0) -> list[Path]:
        """Remove the `.incoming-*` leftovers of crashed registrations older than `older_than_s`."""
        if not self.root.is_dir():
            return []
        cutoff = time.time() - older_than_s
        removed = []
        for path in self.root.glob(INCOMING_PREFIX + "*"):
            if path.is_dir() and path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed

    # --- reading and status -------------------------------------------------------------

    def path(self, version: str) -> Path:
        """The directory of `version` in this store (whether or not it exists)."""
        if not isinstance(version, str) or not _SAFE_NAME.fullmatch(version):
            raise ValueError(f"version {version!r} is not a valid version name")
        return self.root / version

    def resolve(self, spec: str | Path) -> Path:
        """The directory for `spec`: a directory path, or a version in this store."""
        if Path(spec).is_dir():
            return Path(spec).absolute()
        if isinstance(spec, str) and _SAFE_NAME.fullmatch(spec) and (self.root / spec).is_dir():
            return self.root / spec
        raise LookupError(f"model {str(spec)!r} is neither a directory nor a version in the model store {self.root}")

    def list(self, kind: str | None = None, run: str | None = None) -> list[ModelVersionInfo]:
        """Recorded versions, newest first (directories without a row are not versions)."""
        return self.db.list_model_versions(kind=kind, run=run)

    def get(self, version: str) -> ModelVersionInfo:
        return self.db.get_model_version(version)

    def show(self, version: str) -> dict[str, Any]:
        """The version's row and its directory's manifest (None when the directory is gone), JSON-ready."""
        info = self.db.get_model_version(version)
        out = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(info).items()}
        path = Path(info.path)
        out["manifest"] = _read_manifest(path) if (path / MANIFEST).is_file() else None
        return out

    def promote(self, version: str) -> ModelVersionInfo:
        """Make `version` the one its kind's service should serve (its directory must exist)."""
        info = self.db.get_model_version(version)
        if not Path(info.path).is_dir():
            raise ValueError(f"version {version!r} has no directory at {info.path!r}: not promoted")
        return self.db.promote_model(version)

    def rollback(self, kind: str) -> ModelVersionInfo:
        """Reject the promoted version of `kind`; the one promoted before it is promoted again."""
        return self.db.rollback_model(kind)

    def reject(self, version: str) -> ModelVersionInfo:
        return self.db.set_model_status(version, "rejected")


def _version_name(name_hint: str | None, run: str, round: int, kind: str) -> str:
    if name_hint is not None:
        if not isinstance(name_hint, str) or not _SAFE_NAME.fullmatch(name_hint):
            raise ValueError(f"name_hint must be letters, digits, '.', '_' or '-' (not first), got {name_hint!r}")
        name = name_hint
    else:
        # Run names may hold any character; a directory name may not.
        safe_run = re.sub(r"[^A-Za-z0-9._-]+", "-", run).lstrip(".-") or "run"
        name = f"{safe_run}-r{round}-{kind}"
    return name[:_MAX_VERSION_CHARS - DIGEST_CHARS - 1]


def _manifest(src: Path, **fields: Any) -> dict[str, Any]:
    # Keys of a manifest the checkpoint already has (e.g. copied from its base) survive
    # unless this version sets them.
    manifest = _read_manifest(src) if (src / MANIFEST).is_file() else {}
    manifest.update(fields, source=str(src))
    dtype = manifest.get("dtype") or _config_dtype(src)
    if dtype:
        manifest["dtype"] = dtype
    return manifest


def _config_dtype(model_dir: Path) -> str | None:
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    dtype = config.get("dtype") or config.get("torch_dtype")
    return dtype if isinstance(dtype, str) else None


def _read_manifest(model_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((model_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def _write_manifest(model_dir: Path, manifest: dict[str, Any]) -> None:
    staging = model_dir / f".{MANIFEST}.tmp"
    staging.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(staging, model_dir / MANIFEST)


def _same_filesystem(src: Path, root: Path) -> bool:
    return src.stat().st_dev == root.stat().st_dev


def _fsync_tree(path: Path) -> None:
    """Flush every file and directory under `path` to disk, so a renamed version survives a power loss."""
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            file = Path(dirpath) / name
            if file.is_symlink():
                continue
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
