"""Shared fixtures: the real small model, prepared once into the model cache."""

import os
import sys
from pathlib import Path

import pytest

# tests/fakes.py is imported as `fakes` by the core tests.
sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RSTAR_MODEL_CACHE", str(REPO / ".cache" / "models"))
os.environ.setdefault("RSTAR_DATA_DIR", str(REPO.parent / "shared" / "data"))
# Services the tests start skip model compilation (their default): quick start-up.
os.environ.setdefault("RSTAR_ENFORCE_EAGER", "1")


@pytest.fixture(scope="session")
def model_dir() -> str:
    """SmolLM2-135M-Instruct as a bf16 safetensors directory (converted from the bundled GGUF)."""
    override = os.environ.get("RSTAR_TEST_MODEL_DIR")
    if override:
        return override
    from rstar_models.store import prepare_model

    return str(prepare_model())


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ["RSTAR_DATA_DIR"])
    if not (path / "eval").is_dir():
        pytest.skip(f"benchmark data not found at {path} (set RSTAR_DATA_DIR)")
    return path
