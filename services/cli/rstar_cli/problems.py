"""Reading problem files: JSONL (one object per line) or a `.json` array, validated up front.

Every record needs a non-empty string `question`; `answer` (string, number or list) and
`id` are optional. The whole file is checked before any work starts, and the first bad
record is reported by line (JSONL) or index (JSON array) and field. A UTF-8 byte-order mark
at the start of the file is accepted and dropped.

Not here: merging records with the same id (the store does that when a batch is added).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rstar_core.types import Problem

__all__ = ["load_problems", "parse_problems", "problem_from_record"]


def problem_from_record(record: Any, where: str) -> Problem:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    question = record.get("question")
    if question is None:
        raise ValueError(f"{where}: missing field 'question'")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: field 'question' must be a non-empty string")
    answer = record.get("answer")
    if answer is not None and not isinstance(answer, (str, int, float, list)):
        raise ValueError(f"{where}: field 'answer' must be a string, a number or a list")
    raw_id = record.get("id", record.get("index"))
    return Problem(question=question, answer=answer, id=None if raw_id is None else str(raw_id))


def load_problems(path: str | Path, *, limit: int | None = None) -> list[Problem]:
    path = Path(path)
    try:
        # utf-8-sig: spreadsheet and Windows tools start their UTF-8 exports with a BOM.
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, not a problem file") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    return parse_problems(text, path, limit=limit)


def parse_problems(text: str, path: str | Path, *, limit: int | None = None) -> list[Problem]:
    """The problems in `text`, the content of the file `path` (its name decides the format and
    prefixes every error): what `load_problems` does after reading, for uploaded files."""
    path = Path(path)
    text = text.removeprefix("\ufeff")
    problems: list[Problem] = []
    if path.suffix == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: invalid JSON: {exc.msg} (line {exc.lineno})") from None
        if not isinstance(records, list):
            raise ValueError(f"{path}: a .json problem file must hold an array of objects")
        for i, record in enumerate(records):
            problems.append(problem_from_record(record, f"{path}: item {i}"))
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from None
            problems.append(problem_from_record(record, f"{path}:{lineno}"))
    if not problems:
        raise ValueError(f"{path}: no problems in file")
    for i, problem in enumerate(problems):
        if problem.id is None:
            problems[i] = Problem(problem.question, problem.answer, id=str(i))
    return problems[:limit] if limit else problems
