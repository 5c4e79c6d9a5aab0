"""A run's current models (`Evolver._promoted`): its own last promotion, whatever other runs in
the same store promote since, and a rollback onto one of its versions (SQLite store, no model)."""

from pathlib import Path

import pytest

from rstar_cli.evolve import EvolveSettings, Evolver
from rstar_cli.evolve_recipe import load_recipe


@pytest.fixture
def store(tmp_path):
    from rstar_store import Store, migrate

    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate(url)
    store = Store.from_url(url)
    yield store
    store.close()


def _evolver(store, tmp_path: Path, run: str) -> Evolver:
    from rstar_models.registry import ModelRegistry

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("search: {1: {rollouts: 2}}\n")
    settings = EvolveSettings(run=run, pool_file=tmp_path / "pool.jsonl", recipe=load_recipe(recipe), rounds=1,
                              work_dir=tmp_path / "runs", data_dir=tmp_path, base_model="/base")
    store.get_or_create_run(run)
    return Evolver(settings, store, ModelRegistry(tmp_path / "models", store), echo=lambda line: None)


def _version(store, tmp_path: Path, name: str, run: str, round: int = 1, kind: str = "policy") -> str:
    path = tmp_path / "models" / name
    path.mkdir(parents=True)
    store.add_model_version(name, kind, str(path), round=round, run=run)
    return name


def test_another_runs_promotion_does_not_change_a_runs_current_model(store, tmp_path):
    a, b = _evolver(store, tmp_path, "a"), _evolver(store, tmp_path, "b")
    assert a._promoted("policy") is None and a._policy_for_search() == ("/base", "base")

    a.registry.promote(_version(store, tmp_path, "a-r1", "a"))
    b.registry.promote(_version(store, tmp_path, "b-r1", "b"))
    # The store's pointer is b's now; a's next round still searches with a's own policy.
    assert store.promoted_model("policy").version == "b-r1"
    assert a._promoted_version("policy") == "a-r1"
    assert a._policy_for_search() == (str(tmp_path / "models" / "a-r1"), "sft")
    assert b._promoted_version("policy") == "b-r1" and a._promoted_version("ppm") is None

    # A later promotion of a's wins over its earlier one; a rejected candidate never counts.
    a.registry.promote(_version(store, tmp_path, "a-r2", "a", round=2))
    a.registry.reject(_version(store, tmp_path, "a-r3", "a", round=3))
    assert a._promoted_version("policy") == "a-r2"


def test_a_rollback_onto_a_runs_earlier_version_makes_it_current_again(store, tmp_path):
    a = _evolver(store, tmp_path, "a")
    a.registry.promote(_version(store, tmp_path, "a-r1", "a"))
    a.registry.promote(_version(store, tmp_path, "a-r2", "a", round=2))
    store.rollback_model("policy")  # a-r2 rejected, a-r1 promoted again
    assert a._promoted_version("policy") == "a-r1"
