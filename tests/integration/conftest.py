"""Fixtures of the integration tests that run `rstar evolve` in this process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest


@dataclass
class EvolveRun:
    """One in-process `rstar evolve` run on a fresh SQLite store, with its echo lines."""

    store: Any
    registry: Any
    settings: Any
    lines: list[str] = field(default_factory=list)

    def run(self) -> list[str]:
        """Run (or resume) the run; the lines it echoed this time."""
        from rstar_cli.evolve import Evolver

        self.lines = []
        Evolver(self.settings, self.store, self.registry, echo=self.lines.append).run()
        return self.lines

    def steps(self) -> dict[tuple[int, str], Any]:
        """Every recorded step by (round, step), each of them done."""
        steps = {(s.round, s.step): s for s in self.store.list_evolve_steps(self.settings.run)}
        assert all(s.state == "done" for s in steps.values()), {k: (s.state, s.error) for k, s in steps.items()}
        return steps


@pytest.fixture
def evolve_run(tmp_path, model_dir, data_dir, monkeypatch):
    """`evolve_run(recipe_text, run, pool_file)`: one round of that recipe from the small model, run."""
    from rstar_cli.evolve import EvolveSettings
    from rstar_cli.evolve_recipe import load_recipe
    from rstar_models.registry import ModelRegistry
    from rstar_store import Store, migrate

    monkeypatch.setenv("RSTAR_CPU_KVCACHE_GIB", "2")
    url = f"sqlite:///{tmp_path / 'rstar.db'}"
    migrate(url)
    store = Store.from_url(url)

    def start(recipe_text: str, run: str, pool_file) -> EvolveRun:
        recipe = tmp_path / f"{run}.yaml"
        recipe.write_text(recipe_text)
        settings = EvolveSettings(run=run, pool_file=pool_file, recipe=load_recipe(recipe), rounds=1,
                                  work_dir=tmp_path / "work", data_dir=data_dir, base_model=model_dir)
        evolve = EvolveRun(store, ModelRegistry(tmp_path / "store", store), settings)
        evolve.run()
        return evolve

    try:
        yield start
    finally:
        store.close()
