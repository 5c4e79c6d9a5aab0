"""The model registry on a real filesystem and a SQLite store: atomic moves, manifests, idempotency, crashes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from rstar_models import registry as registry_module
from rstar_models.registry import INCOMING_PREFIX, ModelRegistry
from rstar_models.store import MANIFEST, model_version
from rstar_store import Store, migrate

DATASETS = {"sft": {"path": "/data/evo/r1/sft.jsonl", "content_hash": "sha256:ab12", "examples": 40}}


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path / 'rstar.db'}"
    migrate(url)
    store = Store.from_url(url)
    store.get_or_create_run("evo")
    yield store
    store.close()


@pytest.fixture
def registry(tmp_path, db) -> ModelRegistry:
    return ModelRegistry(tmp_path / "store", db)


def checkpoint(path: Path, weights: bytes = b"weights-1", extra: dict | None = None) -> Path:
    """A trainer's output directory: two weight shards, a config and a tokenizer file."""
    path.mkdir(parents=True)
    (path / "model-00001-of-00002.safetensors").write_bytes(weights)
    (path / "model-00002-of-00002.safetensors").write_bytes(b"shard-2")
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "dtype": "bfloat16"}))
    (path / "tokenizer.json").write_text("{}")
    for name, content in (extra or {}).items():
        (path / name).write_text(content)
    return path


def digest(weights: bytes = b"weights-1") -> str:
    return hashlib.sha256(weights + b"shard-2").hexdigest()[:10]


def leftovers(registry: ModelRegistry) -> list[str]:
    return sorted(p.name for p in registry.root.glob(INCOMING_PREFIX + "*"))


def test_register_moves_the_checkpoint_into_the_store_and_records_it(tmp_path, registry):
    src = checkpoint(tmp_path / "out" / "sft-r1")

    info = registry.register(src, kind="policy", round=1, run="evo", base="SmolLM2-135M-Instruct@abc",
                             datasets=DATASETS, train_config={"lr": 1e-5}, metrics={"loss": 0.3})

    version = f"evo-r1-policy-{digest()}"
    target = registry.root / version
    assert info.version == version and info.path == str(target) and info.status == "candidate"
    assert (info.kind, info.round, info.run, info.base, info.datasets, info.train_config, info.metrics) == (
        "policy", 1, "evo", "SmolLM2-135M-Instruct@abc", DATASETS, {"lr": 1e-5}, {"loss": 0.3})
    assert not src.exists()
    assert sorted(p.name for p in target.iterdir()) == sorted(
        ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "config.json", "tokenizer.json",
         MANIFEST])
    manifest = json.loads((target / MANIFEST).read_text())
    assert manifest == {"name": "evo-r1-policy", "version": version, "kind": "policy", "round": 1, "run": "evo",
                        "parent": None, "base": "SmolLM2-135M-Instruct@abc", "source": str(src), "dtype": "bfloat16"}
    assert model_version(target) == version
    assert registry.list() == [info] and registry.get(version) == info
    assert leftovers(registry) == []


def test_register_updates_a_manifest_copied_from_the_base(tmp_path, registry, db):
    base_manifest = {"name": "SmolLM2-135M-Instruct", "version": "SmolLM2-135M-Instruct@abc", "source": "pypi:x",
                     "dtype": "float32", "note": "kept"}
    registry.register(checkpoint(tmp_path / "base"), kind="policy", round=0, run="evo", name_hint="seed")
    src = checkpoint(tmp_path / "ppm", b"ppm-weights", extra={MANIFEST: json.dumps(base_manifest)})

    info = registry.register(src, kind="ppm", round=2, run="evo", parent=f"seed-{digest()}")

    manifest = json.loads((Path(info.path) / MANIFEST).read_text())
    assert info.version == f"evo-r2-ppm-{digest(b'ppm-weights')}" and info.parent == f"seed-{digest()}"
    assert (manifest["version"], manifest["kind"], manifest["parent"], manifest["dtype"], manifest["note"]) == (
        info.version, "ppm", f"seed-{digest()}", "float32", "kept")


def test_register_from_another_filesystem_copies_through_an_incoming_directory(tmp_path, registry, monkeypatch):
    src = checkpoint(tmp_path / "elsewhere" / "ckpt")
    monkeypatch.setattr(registry_module, "_same_filesystem", lambda a, b: False)
    seen = []
    real_copytree = shutil.copytree

    def copytree(source, destination, **kwargs):
        # While the copy runs, the version is not there under its final name.
        seen.append((Path(destination).name, sorted(p.name for p in registry.root.iterdir())))
        return real_copytree(source, destination, **kwargs)

    monkeypatch.setattr(shutil, "copytree", copytree)

    info = registry.register(src, kind="policy", round=1, run="evo")

    ((incoming, visible),) = seen
    assert incoming.startswith(INCOMING_PREFIX) and visible == [incoming]
    assert model_version(info.path) == info.version
    assert not src.exists() and leftovers(registry) == []


def test_registering_the_same_weights_again_returns_the_row_and_drops_the_copy(tmp_path, registry):
    first = registry.register(checkpoint(tmp_path / "a"), kind="policy", round=1, run="evo", metrics={"loss": 1.0})
    again_src = checkpoint(tmp_path / "b")

    again = registry.register(again_src, kind="policy", round=1, run="evo", metrics={"loss": 0.5})

    assert again == first
    assert not again_src.exists()
    assert [v.version for v in registry.list()] == [first.version]


def test_a_row_that_cannot_be_written_undoes_the_move(tmp_path, registry, db, monkeypatch):
    src = checkpoint(tmp_path / "out")

    def database_down(*args, **kwargs):
        raise RuntimeError("database down")

    monkeypatch.setattr(db, "add_model_version", database_down)
    with pytest.raises(RuntimeError, match="database down"):
        registry.register(src, kind="policy", round=1, run="evo")
    assert (src / "model-00001-of-00002.safetensors").is_file()
    assert list(registry.root.iterdir()) == []

    # From another filesystem the source was never touched; the copy goes again.
    monkeypatch.setattr(registry_module, "_same_filesystem", lambda a, b: False)
    with pytest.raises(RuntimeError, match="database down"):
        registry.register(src, kind="policy", round=1, run="evo")
    assert (src / "config.json").is_file()
    assert list(registry.root.iterdir()) == []

    monkeypatch.undo()  # the database is back: the same call now succeeds
    assert registry.register(src, kind="policy", round=1, run="evo").version == f"evo-r1-policy-{digest()}"


def test_a_stored_directory_without_its_row_is_completed_by_registering_it(tmp_path, registry):
    # A crash between the rename and the row: the version is complete on disk, unrecorded.
    version = f"evo-r1-policy-{digest()}"
    stored = checkpoint(registry.root / version)
    assert registry.list() == []

    info = registry.register(stored, kind="policy", round=1, run="evo")

    assert info.version == version and info.path == str(stored) and stored.is_dir()
    assert model_version(stored) == version


def test_a_crash_mid_copy_never_shows_a_version(tmp_path, registry, monkeypatch):
    src = checkpoint(tmp_path / "ckpt")
    monkeypatch.setattr(registry_module, "_same_filesystem", lambda a, b: False)
    real_copytree = shutil.copytree
    copied = []

    def copy_until_the_disk_is_full(source, destination):
        if copied:
            raise OSError(28, "No space left on device")
        copied.append(source)
        return shutil.copy2(source, destination)

    monkeypatch.setattr(shutil, "copytree", lambda source, destination, **kwargs: real_copytree(
        source, destination, copy_function=copy_until_the_disk_is_full, **kwargs))
    with pytest.raises(OSError):
        registry.register(src, kind="policy", round=1, run="evo")

    assert len(copied) == 1
    assert [p.name for p in registry.root.iterdir()] == []  # the half copy is gone too
    assert src.is_dir() and registry.list() == []


def test_a_source_removed_mid_way_never_shows_a_version(tmp_path, registry, monkeypatch):
    src = checkpoint(tmp_path / "ckpt")
    monkeypatch.setattr(registry_module, "_same_filesystem", lambda a, b: False)
    real_copytree = shutil.copytree

    def copytree(source, destination, **kwargs):
        shutil.rmtree(source)  # another process cleaned the trainer's output meanwhile
        return real_copytree(source, destination, **kwargs)

    monkeypatch.setattr(shutil, "copytree", copytree)
    with pytest.raises(OSError):
        registry.register(src, kind="policy", round=1, run="evo")

    assert list(registry.root.iterdir()) == [] and registry.list() == []


def test_incoming_leftovers_of_a_killed_registration_are_ignored_and_cleaned(tmp_path, registry):
    registry.register(checkpoint(tmp_path / "ok"), kind="policy", round=1, run="evo")
    # What a process killed mid-copy leaves: a partial directory under a name no version has.
    leftover = registry.root / f"{INCOMING_PREFIX}k3j2h1"
    leftover.mkdir()
    (leftover / "model-00001-of-00002.safetensors").write_bytes(b"weig")

    assert [v.version for v in registry.list()] == [f"evo-r1-policy-{digest()}"]
    with pytest.raises(LookupError):
        registry.resolve(leftover.name)
    assert registry.clean_incoming(older_than_s=3600) == []  # too recent: may still be copying
    assert registry.clean_incoming(older_than_s=0) == [leftover]
    assert not leftover.exists() and (registry.root / f"evo-r1-policy-{digest()}").is_dir()


@pytest.mark.parametrize("kwargs, error, match", [
    ({"run": "nope"}, LookupError, "no run named 'nope'"),
    ({"parent": "nope"}, LookupError, "no model version 'nope'"),
    ({"kind": "value"}, ValueError, "kind must be one of"),
    ({"round": -1}, ValueError, "round must be"),
    ({"name_hint": "../escape"}, ValueError, "name_hint must be"),
])
def test_bad_arguments_leave_the_checkpoint_where_it_is(tmp_path, registry, kwargs, error, match):
    src = checkpoint(tmp_path / "ckpt")

    with pytest.raises(error, match=match):
        registry.register(src, **{"kind": "policy", "round": 1, "run": "evo", **kwargs})

    assert (src / "config.json").is_file() and not (src / MANIFEST).exists()
    assert not registry.root.exists() or list(registry.root.iterdir()) == []


def test_a_directory_without_weights_is_not_a_checkpoint(tmp_path, registry):
    src = tmp_path / "empty"
    src.mkdir()
    with pytest.raises(ValueError, match="no \\*.safetensors files"):
        registry.register(src, kind="policy", round=1, run="evo")
    with pytest.raises(ValueError, match="not a directory"):
        registry.register(tmp_path / "missing", kind="policy", round=1, run="evo")


def test_run_names_become_safe_directory_names(tmp_path, registry, db):
    db.get_or_create_run("gsm8k / round 2")

    info = registry.register(checkpoint(tmp_path / "c"), kind="ppm", round=2, run="gsm8k / round 2")

    assert info.version == f"gsm8k-round-2-r2-ppm-{digest()}" and info.run == "gsm8k / round 2"
    assert Path(info.path).parent == registry.root


def test_promote_rollback_and_reject(tmp_path, registry):
    p1 = registry.register(checkpoint(tmp_path / "1", b"one"), kind="policy", round=1, run="evo")
    p2 = registry.register(checkpoint(tmp_path / "2", b"two"), kind="policy", round=2, run="evo")
    p3 = registry.register(checkpoint(tmp_path / "3", b"three"), kind="policy", round=3, run="evo")

    assert registry.promote(p1.version).status == "promoted"
    assert registry.promote(p2.version).status == "promoted"
    assert registry.get(p1.version).status == "candidate"
    assert registry.reject(p3.version).status == "rejected"
    back = registry.rollback("policy")
    assert back.version == p1.version and back.status == "promoted"
    assert registry.get(p2.version).status == "rejected"
    with pytest.raises(ValueError, match="no earlier policy version"):
        registry.rollback("policy")

    # A version whose files are gone is not promoted.
    shutil.rmtree(p3.path)
    with pytest.raises(ValueError, match="has no directory"):
        registry.promote(p3.version)
    with pytest.raises(LookupError, match="no model version"):
        registry.promote("evo-r9-policy-0000000000")


def test_path_resolve_and_show(tmp_path, registry):
    info = registry.register(checkpoint(tmp_path / "c"), kind="policy", round=1, run="evo", datasets=DATASETS)

    assert registry.path(info.version) == Path(info.path)
    assert registry.resolve(info.version) == Path(info.path)
    assert registry.resolve(info.path) == Path(info.path)
    with pytest.raises(ValueError, match="not a valid version name"):
        registry.path("../etc")
    with pytest.raises(LookupError, match="neither a directory nor a version"):
        registry.resolve("evo-r7-policy-0000000000")

    shown = registry.show(info.version)
    assert shown["version"] == info.version and shown["datasets"] == DATASETS and shown["status"] == "candidate"
    assert shown["manifest"]["version"] == info.version
    json.dumps(shown)  # JSON-ready (timestamps as ISO strings)
    shutil.rmtree(info.path)
    assert registry.show(info.version)["manifest"] is None


def test_from_env(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'env.db'}"
    migrate(url)
    registry = ModelRegistry.from_env({"RSTAR_MODEL_STORE": str(tmp_path / "s"), "RSTAR_DATABASE_URL": url})
    try:
        assert registry.root == tmp_path / "s" and registry.list() == []
    finally:
        registry.close()
    monkeypatch.delenv("RSTAR_MODEL_STORE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    registry = ModelRegistry.from_env({"RSTAR_DATABASE_URL": url})
    try:
        assert registry.root == tmp_path / "home" / ".cache" / "rstar" / "store"
    finally:
        registry.close()


@pytest.mark.slow
def test_a_registered_ppm_is_served_under_its_version(tmp_path, registry, model_dir):
    from rstar_reward import PPMRewardModel, build_ppm_dir

    unregistered = build_ppm_dir(model_dir, tmp_path / "ppm-untrained", seed=0)
    # A policy's manifest copied along with the backbone does not name the PPM.
    shutil.copy(Path(model_dir) / MANIFEST, unregistered / MANIFEST)
    assert PPMRewardModel.from_dir(unregistered).model_version.startswith("ppm:ppm-untrained:")

    info = registry.register(unregistered, kind="ppm", round=2, run="evo")

    assert PPMRewardModel.from_dir(info.path).model_version == info.version
    assert os.path.basename(info.path) == info.version
