"""Training sets on disk: Hugging Face `datasets` directories with a manifest beside them.

* SFT set: one row per example with chat `messages` (user question, assistant solution)
  and the same example as `prompt` / `completion` strings rendered with the policy's step
  format (`rstar_core.steps`, prompt format "sft"): that is the text the SFT trainer
  reads, so the fine-tuned policy trains on exactly the prompt the search will give it.
* PPM set: splits `train` and `heldout` (by problem, never by pair) with `prompt` /
  `chosen` / `rejected`, where `prompt + chosen` and `prompt + rejected` are exactly what
  `rstar_reward.render_prefix` produces for the two prefixes: the string the reward
  service scores at serve time.

Each directory holds `datasets.save_to_disk` output plus `rstar_dataset.json` (kind, round,
source runs, counts, content hash), is written into a temporary sibling and renamed into
place (a crash never leaves half a dataset), and loads with `datasets.load_from_disk`.
`load_training_set` checks what a trainer is about to read and says what is wrong.

Not here: which examples are chosen (`rstar_core.curation`), training.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from rstar_core.curation import PPMExample, SFTExample
from rstar_core.steps import get_format

__all__ = [
    "DatasetInfo",
    "MANIFEST",
    "load_training_set",
    "ppm_text_rows",
    "sft_text_row",
    "write_ppm_dataset",
    "write_sft_dataset",
]

MANIFEST = "rstar_dataset.json"
PROMPT_FORMAT = "sft"
KINDS = ("sft", "ppm")


@dataclass(frozen=True)
class DatasetInfo:
    path: str
    kind: str
    manifest: dict[str, Any]

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]


def sft_text_row(example: SFTExample) -> dict[str, Any]:
    fmt = get_format(PROMPT_FORMAT)
    solution = "\n".join(example.steps)
    return {
        "problem_id": example.problem_id,
        "source": example.source,
        "round": example.round,
        "messages": [{"role": "user", "content": example.question},
                     {"role": "assistant", "content": _assistant_intro(fmt) + solution}],
        "prompt": fmt.render_prompt(example.question),
        "completion": solution + fmt.end_of_turn,
    }


def ppm_text_rows(example: PPMExample) -> dict[str, Any]:
    from rstar_reward.ppm import render_prefix

    prompt = render_prefix(example.question, example.prefix, PROMPT_FORMAT)
    if example.prefix:
        prompt += "\n"
    chosen = "\n".join(example.chosen)
    rejected = "\n".join(example.rejected)
    # The contract with serving, checked on every row rather than assumed.
    for side in (example.chosen, example.rejected):
        full = render_prefix(example.question, (*example.prefix, *side), PROMPT_FORMAT)
        if full != prompt + "\n".join(side):
            raise AssertionError("PPM pair text differs from the reward model's rendering")
    return {
        "problem_id": example.problem_id,
        "round": example.round,
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "q_chosen": example.q_chosen,
        "q_rejected": example.q_rejected,
        "whole_solution": example.whole_solution,
    }


def write_sft_dataset(examples: Sequence[SFTExample], out_dir: str | Path, *, round: int,
                      sources: dict[str, Any], counts: dict[str, Any] | None = None) -> DatasetInfo:
    from datasets import Dataset

    if not examples:
        raise ValueError("no SFT examples to write: the search found no correct trajectory")
    rows = [sft_text_row(e) for e in examples]
    by_source: dict[str, int] = {}
    for e in examples:
        by_source[e.source] = by_source.get(e.source, 0) + 1
    manifest = {"kind": "sft", "round": round, "prompt_format": PROMPT_FORMAT, "sources": sources,
                "counts": {"examples": len(rows), "problems": len({e.problem_id for e in examples}),
                           "by_source": by_source, **(counts or {})},
                "content_hash": _hash_rows(rows)}
    return _save(out_dir, "sft", manifest, lambda d: Dataset.from_list(rows).save_to_disk(d))


def write_ppm_dataset(examples: Sequence[PPMExample], heldout_problems: set[str], out_dir: str | Path, *,
                      round: int, sources: dict[str, Any], counts: dict[str, Any] | None = None) -> DatasetInfo:
    from datasets import Dataset, DatasetDict

    if not examples:
        raise ValueError("no PPM pairs to write: no tree had both a correct and a wrong answer")
    rows = [ppm_text_rows(e) for e in examples]
    train = [r for r in rows if r["problem_id"] not in heldout_problems]
    heldout = [r for r in rows if r["problem_id"] in heldout_problems]
    if not train:
        raise ValueError("every PPM pair fell into the held-out split: too few problems for a split")
    manifest = {"kind": "ppm", "round": round, "prompt_format": PROMPT_FORMAT, "sources": sources,
                "counts": {"pairs": len(rows), "train_pairs": len(train), "heldout_pairs": len(heldout),
                           "problems": len({r["problem_id"] for r in rows}),
                           "heldout_problems": len({r["problem_id"] for r in heldout}), **(counts or {})},
                "content_hash": _hash_rows(rows)}
    splits = {"train": Dataset.from_list(train)}
    if heldout:
        splits["heldout"] = Dataset.from_list(heldout)
    return _save(out_dir, "ppm", manifest, lambda d: DatasetDict(splits).save_to_disk(d))


def load_training_set(path: str | Path, kind: str):
    """The dataset a trainer reads, validated: a clear `ValueError` for anything unusable."""
    from datasets import load_from_disk

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise ValueError(f"dataset {str(path)!r} does not exist")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"dataset {str(path)!r} has no readable {MANIFEST}: {exc}") from None
    if manifest.get("kind") != kind:
        raise ValueError(f"dataset {str(path)!r} is a {manifest.get('kind')!r} set, not {kind!r}")
    try:
        data = load_from_disk(str(path))
    except Exception as exc:  # datasets raises several types for a damaged directory
        raise ValueError(f"dataset {str(path)!r} is unreadable: {type(exc).__name__}: {exc}") from None
    train = data["train"] if kind == "ppm" else data
    needed = ("prompt", "chosen", "rejected") if kind == "ppm" else ("prompt", "completion")
    missing = [c for c in needed if c not in train.column_names]
    if missing:
        raise ValueError(f"dataset {str(path)!r} lacks column(s) {', '.join(missing)}")
    if len(train) == 0:
        raise ValueError(f"dataset {str(path)!r} is empty")
    return data, DatasetInfo(str(path), kind, manifest)


def _assistant_intro(fmt) -> str:
    # The assistant prefix after the chat header ("Let's think step by step ...\n").
    return fmt.assistant_prefix.split("\n", 1)[1]


def _hash_rows(rows: Iterable[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return "sha256:" + digest.hexdigest()


def _save(out_dir: str | Path, kind: str, manifest: dict[str, Any], write) -> DatasetInfo:
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(str(staging))
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return DatasetInfo(str(out), kind, manifest)
