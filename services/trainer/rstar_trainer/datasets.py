"""Training sets on disk: Hugging Face `datasets` directories with a manifest beside them.

* SFT set: one row per example with chat `messages` (user question, assistant solution)
  and the same example as `prompt` / `completion` strings rendered with the policy's step
  format (`rstar_core.steps`, prompt format "sft"): that is the text the SFT trainer
  reads, so the fine-tuned policy trains on exactly the prompt the search will give it.
* PPM set: splits `train` and `heldout` (by problem, never by pair) with `prompt` /
  `chosen` / `rejected`, where `prompt + chosen` and `prompt + rejected` are exactly what
  `rstar_reward.render_prefix` produces for the two prefixes: the string the reward
  service scores at serve time.
* ORM set (the outcome-reward baseline): the same splits, one row per graded full solution,
  `text` (the reward model's rendering of the whole solution) and `label` (1 if its final
  answer is correct, else 0).
* PQM set (the pointwise Q-value baseline): the same splits, one row per step, `text` (the
  rendering of the steps up to and including it, exactly what the PPM scores for that step)
  and `q` (its Q value in [-1, 1]).
* Process-supervision set (`rstar_core.process_supervision`, no split: the method is judged on
  the held-out benchmarks): one row per scored step, `prompt` (the policy's prompt after the
  partial solution, as the search renders it), `completion` (the step, closed by a newline,
  or by the end of turn for the answer step, as in the SFT set) and `score` (its relative
  correctness, the weight of its likelihood).
* GRPO set (MCTS++'s RL stage, no split): one row per problem the round's curriculum drew, in
  the curriculum's order (easy to hard: `rstar_core.rl.curriculum`; the trainer reads it in
  order), `prompt` (the policy's prompt, as in the SFT set), `answer` (the gold answer as JSON),
  `problem_id` and `bucket` (its difficulty).
* Step-DPO set (MCTS++'s optional pass, no split): one row per PPM pair of the round (both of
  the PPM set's splits), `prompt` (the policy's prompt after the shared prefix: the PPM
  prompt, which is the same string), `chosen` / `rejected` (the two continuations, each
  closed like the SFT and process sets: by a newline, or by the end of turn when it ends
  with the answer step).

Each directory holds `datasets.save_to_disk` output plus `rstar_dataset.json` (kind, round,
source runs, counts, content hash), is written into a temporary sibling and renamed into
place (a crash never leaves half a dataset), and loads with `datasets.load_from_disk`.
`load_training_set` checks what a trainer is about to read and says what is wrong.

Not here: which examples are chosen (`rstar_core.curation`), training.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from rstar_core.curation import ORMExample, PPMExample, PQMExample, SFTExample
from rstar_core.process_supervision import ProcessExample
from rstar_core.steps import get_format

__all__ = [
    "DatasetInfo",
    "MANIFEST",
    "load_training_set",
    "orm_text_row",
    "ppm_text_rows",
    "pqm_text_row",
    "process_text_row",
    "sft_text_row",
    "write_orm_dataset",
    "write_ppm_dataset",
    "write_pqm_dataset",
    "write_grpo_dataset",
    "write_process_dataset",
    "write_sft_dataset",
    "write_step_dpo_dataset",
]

MANIFEST = "rstar_dataset.json"
PROMPT_FORMAT = "sft"
KINDS = ("sft", "ppm", "orm", "pqm", "process", "grpo", "dpo")
# Kinds stored as one set; the others keep a `train` (and `heldout`) split.
_UNSPLIT = ("sft", "process", "grpo", "dpo")
# The columns a trainer reads, by kind (the reward-model kinds keep them in a `train` split).
_COLUMNS = {"sft": ("prompt", "completion"), "ppm": ("prompt", "chosen", "rejected"), "orm": ("text", "label"),
            "pqm": ("text", "q"), "process": ("prompt", "completion", "score"),
            "grpo": ("prompt", "answer"), "dpo": ("prompt", "chosen", "rejected")}


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


def orm_text_row(example: ORMExample) -> dict[str, Any]:
    from rstar_reward.ppm import render_prefix

    return {"problem_id": example.problem_id, "round": example.round,
            "text": render_prefix(example.question, example.steps, PROMPT_FORMAT), "label": int(example.correct)}


def pqm_text_row(example: PQMExample) -> dict[str, Any]:
    from rstar_reward.ppm import render_prefix

    if not -1.0 <= example.q <= 1.0:
        raise ValueError(f"Q value {example.q!r} of problem {example.problem_id} is outside [-1, 1]")
    return {"problem_id": example.problem_id, "round": example.round,
            "text": render_prefix(example.question, example.steps, PROMPT_FORMAT), "q": float(example.q),
            "depth": len(example.steps)}


def process_text_row(example: ProcessExample) -> dict[str, Any]:
    fmt = get_format(PROMPT_FORMAT)
    if not math.isfinite(example.score):
        raise ValueError(f"score {example.score!r} of problem {example.problem_id} is not a finite number")
    return {
        "problem_id": example.problem_id,
        "round": example.round,
        "prompt": fmt.render_prompt(example.question, example.prefix),
        "completion": example.step + (fmt.end_of_turn if example.final else "\n"),
        "score": float(example.score),
        "final": example.final,
        "depth": len(example.prefix),
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


def write_process_dataset(examples: Sequence[ProcessExample], out_dir: str | Path, *, round: int,
                          sources: dict[str, Any], counts: dict[str, Any] | None = None) -> DatasetInfo:
    from datasets import Dataset

    if not examples:
        raise ValueError("no process-supervision steps to write: no search gave a step a non-zero score")
    rows = [process_text_row(e) for e in examples]
    manifest = {"kind": "process", "round": round, "prompt_format": PROMPT_FORMAT, "sources": sources,
                "counts": {"examples": len(rows), "problems": len({e.problem_id for e in examples}),
                           "positive": sum(e.score > 0 for e in examples),
                           "negative": sum(e.score < 0 for e in examples), **(counts or {})},
                "content_hash": _hash_rows(rows)}
    return _save(out_dir, "process", manifest, lambda d: Dataset.from_list(rows).save_to_disk(d))


def write_grpo_dataset(items: Sequence[Any], out_dir: str | Path, *, round: int, sources: dict[str, Any],
                       counts: dict[str, Any] | None = None) -> DatasetInfo:
    """`items`: `rstar_core.rl.CurriculumItem`s in the order the trainer is to read them."""
    from datasets import Dataset

    if not items:
        raise ValueError("no problems to write: the curriculum is empty")
    fmt = get_format(PROMPT_FORMAT)
    rows = []
    for item in items:
        if item.problem.answer is None:
            raise ValueError(f"problem {item.problem.id} has no gold answer: GRPO rewards need one")
        rows.append({"problem_id": str(item.problem.id), "bucket": item.bucket, "question": item.problem.question,
                     "prompt": fmt.render_prompt(item.problem.question),
                     "answer": json.dumps(item.problem.answer, ensure_ascii=False)})
    by_bucket: dict[str, int] = {}
    for row in rows:
        by_bucket[row["bucket"]] = by_bucket.get(row["bucket"], 0) + 1
    manifest = {"kind": "grpo", "round": round, "prompt_format": PROMPT_FORMAT, "sources": sources,
                "counts": {"prompts": len(rows), "problems": len({r["problem_id"] for r in rows}),
                           "by_bucket": by_bucket, **(counts or {})},
                "content_hash": _hash_rows(rows)}
    return _save(out_dir, "grpo", manifest, lambda d: Dataset.from_list(rows).save_to_disk(d))


def write_step_dpo_dataset(ppm_set: str | Path, out_dir: str | Path, *, round: int,
                           sources: dict[str, Any]) -> DatasetInfo:
    """The step-DPO set of a round from its PPM set: the same pairs as policy completions."""
    from datasets import Dataset

    from rstar_core.grading import extract_boxed

    data, info = load_training_set(ppm_set, "ppm")
    end = get_format(PROMPT_FORMAT).end_of_turn

    def closed(text: str) -> str:
        # Only the answer step writes \boxed{...} (the step format's answer marker).
        return text + (end if extract_boxed(text) is not None else "\n")

    rows = [{"problem_id": r["problem_id"], "round": r["round"], "prompt": r["prompt"],
             "chosen": closed(r["chosen"]), "rejected": closed(r["rejected"])}
            for split in data.values() for r in split]
    manifest = {"kind": "dpo", "round": round, "prompt_format": PROMPT_FORMAT,
                "sources": {**sources, "ppm_set": info.path, "ppm_content_hash": info.content_hash},
                "counts": {"pairs": len(rows), "problems": len({r["problem_id"] for r in rows}),
                           "chosen_final": sum(r["chosen"].endswith(end) for r in rows)},
                "content_hash": _hash_rows(rows)}
    return _save(out_dir, "dpo", manifest, lambda d: Dataset.from_list(rows).save_to_disk(d))


def write_ppm_dataset(examples: Sequence[PPMExample], heldout_problems: set[str], out_dir: str | Path, *,
                      round: int, sources: dict[str, Any], counts: dict[str, Any] | None = None) -> DatasetInfo:
    if not examples:
        raise ValueError("no PPM pairs to write: no tree had both a correct and a wrong answer")
    return _write_split_set("ppm", "pairs", [ppm_text_rows(e) for e in examples], heldout_problems, out_dir,
                            round=round, sources=sources, counts=counts)


def write_orm_dataset(examples: Sequence[ORMExample], heldout_problems: set[str], out_dir: str | Path, *,
                      round: int, sources: dict[str, Any], counts: dict[str, Any] | None = None) -> DatasetInfo:
    if not examples:
        raise ValueError("no ORM examples to write: no tree had both a correct and a wrong answer")
    rows = [orm_text_row(e) for e in examples]
    return _write_split_set("orm", "examples", rows, heldout_problems, out_dir, round=round, sources=sources,
                            counts={"correct": sum(r["label"] for r in rows), **(counts or {})})


def write_pqm_dataset(examples: Sequence[PQMExample], heldout_problems: set[str], out_dir: str | Path, *,
                      round: int, sources: dict[str, Any], counts: dict[str, Any] | None = None) -> DatasetInfo:
    if not examples:
        raise ValueError("no PQM steps to write: no tree had both a correct and a wrong answer")
    return _write_split_set("pqm", "examples", [pqm_text_row(e) for e in examples], heldout_problems, out_dir,
                            round=round, sources=sources, counts=counts)


def _write_split_set(kind: str, unit: str, rows: list[dict[str, Any]], heldout_problems: set[str],
                     out_dir: str | Path, *, round: int, sources: dict[str, Any],
                     counts: dict[str, Any] | None) -> DatasetInfo:
    """A `train` / `heldout` set split by problem, with the manifest every reward-model set carries."""
    from datasets import Dataset, DatasetDict

    train = [r for r in rows if r["problem_id"] not in heldout_problems]
    heldout = [r for r in rows if r["problem_id"] in heldout_problems]
    if not train:
        raise ValueError(f"every {kind.upper()} row fell into the held-out split: too few problems for a split")
    manifest = {"kind": kind, "round": round, "prompt_format": PROMPT_FORMAT, "sources": sources,
                "counts": {unit: len(rows), f"train_{unit}": len(train), f"heldout_{unit}": len(heldout),
                           "problems": len({r["problem_id"] for r in rows}),
                           "heldout_problems": len({r["problem_id"] for r in heldout}), **(counts or {})},
                "content_hash": _hash_rows(rows)}
    splits = {"train": Dataset.from_list(train)}
    if heldout:
        splits["heldout"] = Dataset.from_list(heldout)
    return _save(out_dir, kind, manifest, lambda d: DatasetDict(splits).save_to_disk(d))


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
    train = data if kind in _UNSPLIT else data["train"]
    missing = [c for c in _COLUMNS[kind] if c not in train.column_names]
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
