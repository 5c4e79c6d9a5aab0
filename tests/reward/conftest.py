import os

import pytest


@pytest.fixture(scope="session")
def model_dir() -> str:
    """A small Hugging Face causal-LM directory (SmolLM2-135M-Instruct)."""
    path = os.environ.get("RSTAR_TEST_MODEL_DIR", "/tmp/scratch/smol")
    if not os.path.isdir(path):
        pytest.skip(f"test model not found at {path} (set RSTAR_TEST_MODEL_DIR)")
    return path
