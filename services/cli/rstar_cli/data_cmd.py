"""`rstar data`: build the problem sets and the round-0 dataset.

    rstar data practice --levels 1-5 --n 100 --seed 0 --split pool --out practice.jsonl
        Seeded arithmetic word problems (`rstar_core.practice`), one JSON object per line:
        {id, question, answer, level}.
    rstar data bootstrap --gsm8k train/gsm8k_train.jsonl --out data/round0 [--limit K]
        GSM8K worked solutions converted to our step format and verified in the real sandbox
        (`rstar_core.bootstrap`): DIR/trajectories.jsonl ({id, question, answer, steps}) and
        DIR/manifest.json (counts by outcome, source path, sha256 of the JSONL, wall time).

Bad input (unknown level, --n below 1, a missing or malformed file) ends in one
`rstar: error: ...` line with exit code 2, before any work starts.

Non-goals: no dataset registry or database rows (the trainer's export owns those), no
downloads from the Hub, no resuming a half-written bootstrap (it is re-run whole; the full
GSM8K train set takes minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rstar_core.bootstrap import Conversion, convert_gsm8k, verify
from rstar_core.ports import CodeExecutor
from rstar_core.practice import generate_practice

__all__ = ["add_data_parser", "build_bootstrap", "cmd_data_bootstrap", "cmd_data_practice", "parse_levels",
           "read_gsm8k"]

TRAJECTORIES_FILE = "trajectories.jsonl"
MANIFEST_FILE = "manifest.json"
_LEVELS = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    """Add `data practice` and `data bootstrap` to the `rstar` subcommands."""
    data = sub.add_parser("data", help="build problem sets and the round-0 dataset")
    data_sub = data.add_subparsers(dest="data_command", required=True)

    practice = data_sub.add_parser("practice", help="write seeded arithmetic word problems as JSONL")
    practice.add_argument("--levels", default="1-5", help="levels (operations per problem): 1-5, 2,4 or 3")
    practice.add_argument("--n", type=int, required=True, help="problems per level")
    practice.add_argument("--seed", type=int, default=0)
    practice.add_argument("--split", choices=("pool", "heldout"), default="pool")
    practice.add_argument("--out", required=True, help="output JSONL file")
    practice.set_defaults(func=cmd_data_practice)

    bootstrap = data_sub.add_parser("bootstrap", help="convert and verify GSM8K worked solutions (round 0)")
    bootstrap.add_argument("--gsm8k", required=True, help="GSM8K JSONL with {question, answer}")
    bootstrap.add_argument("--out", required=True, help="output directory")
    bootstrap.add_argument("--limit", type=int, help="only the first K problems")
    bootstrap.set_defaults(func=cmd_data_bootstrap)


def parse_levels(text: str) -> tuple[int, ...]:
    """``1-5`` -> (1, 2, 3, 4, 5); ``2,4`` -> (2, 4); ``3`` -> (3,)."""
    levels: list[int] = []
    for part in text.split(","):
        match = _LEVELS.match(part)
        if not match:
            raise ValueError(f"--levels: expected levels like 1-5, 2,4 or 3, got {text!r}")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if high < low:
            raise ValueError(f"--levels: empty range {part.strip()!r}")
        levels.extend(range(low, high + 1))
    return tuple(levels)


def cmd_data_practice(args: argparse.Namespace) -> int:
    from .main import _as_usage_error

    with _as_usage_error():
        if args.n < 1:
            raise ValueError(f"--n must be >= 1, got {args.n}")
        problems = generate_practice(parse_levels(args.levels), args.n, args.seed, args.split)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for item in problems:
            record = {"id": item.problem.id, "question": item.problem.question,
                      "answer": item.problem.answer, "level": item.level}
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"wrote {len(problems)} {args.split} problems to {out}")
    return 0


def cmd_data_bootstrap(args: argparse.Namespace) -> int:
    from rstar_executor import SandboxExecutor

    from .main import _as_usage_error

    with _as_usage_error():
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        records = read_gsm8k(args.gsm8k, limit=args.limit)

    async def run() -> dict[str, Any]:
        async with SandboxExecutor() as executor:
            return await build_bootstrap(records, Path(args.gsm8k), Path(args.out), executor)

    manifest = asyncio.run(run())
    counts = manifest["counts"]
    print(f"kept {counts['correct']}/{counts['total']} ({manifest['verified_share']:.1%}) in "
          f"{manifest['wall_s']:.1f}s; rejected {counts['rejected']}; wrote {args.out}/{TRAJECTORIES_FILE}")
    return 0


def read_gsm8k(path: str | Path, *, limit: int | None = None) -> list[tuple[str, str, str]]:
    """(id, question, worked solution) per line of a GSM8K JSONL file, validated up front.

    Ids follow the training pool: ``gsm8k-train-<line index>`` for ``gsm8k_train.jsonl`` (the
    file name with ``_`` as ``-``), unless a record has its own ``id``.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except (IsADirectoryError, UnicodeDecodeError):
        raise ValueError(f"{path}: not a UTF-8 text file") from None
    prefix = path.stem.replace("_", "-")
    records = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        where = f"{path}:{index + 1}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: invalid JSON: {exc.msg}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object")
        for key in ("question", "answer"):
            if not isinstance(record.get(key), str) or not record[key].strip():
                raise ValueError(f"{where}: field {key!r} must be a non-empty string")
        records.append((str(record.get("id", f"{prefix}-{index}")), record["question"], record["answer"]))
        if limit is not None and len(records) == limit:
            break
    if not records:
        raise ValueError(f"{path}: no problems in file")
    return records


async def build_bootstrap(records: list[tuple[str, str, str]], source: Path, out_dir: Path,
                          executor: CodeExecutor) -> dict[str, Any]:
    """Convert and verify `records`; write the kept trajectories and the manifest; return it."""
    started = time.perf_counter()
    conversions: list[Conversion] = [convert_gsm8k(question, solution, id) for id, question, solution in records]
    verified = await verify(conversions, executor)
    wall_s = time.perf_counter() - started
    content = "".join(json.dumps(t.to_record(), ensure_ascii=False) + "\n" for t in verified.trajectories)
    payload = content.encode("utf-8")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / TRAJECTORIES_FILE).write_bytes(payload)
    counts = verified.counts
    manifest = {
        "kind": "bootstrap",
        "source": str(source.resolve()),
        "file": TRAJECTORIES_FILE,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "records": len(verified.trajectories),
        "verified_share": counts["correct"] / counts["total"] if counts["total"] else 0.0,
        "counts": counts,
        "wall_s": round(wall_s, 2),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
