"""The `rstar eval` report folders the console shows: found under two roots, read, never written.

A report folder is a folder holding an ``items.jsonl`` (what `rstar eval` and `rstar report`
call an eval folder; the file names come from `rstar_cli.eval_report`). Two roots hold them:

* ``eval``: `RSTAR_EVAL_DIR` (default ``runs/eval``), where `rstar eval` writes by default;
* ``evolve``: `RSTAR_EVOLVE_DIR` (default ``runs/evolve``, `rstar evolve --work-dir`); the
  folders under ``<root>/<RUN>/`` are the evaluations of the evolve run RUN, as
  `rstar report RUN` finds them (`rstar eval --run RUN` writes ``<RUN>/eval/<bench>-<method>``).

A report is named by its root and its path under it: ``eval/gsm8k-maj``,
``evolve/<RUN>/eval/gsm8k-maj``. A name is resolved only to a folder inside its root (no
``..``, no symbolic link leading out) that holds an ``items.jsonl``, and only the files in
`FILES` of such a folder are ever served, so a request cannot read anything else on disk.

The table comes from the folder's ``summary.json`` (rewritten by every run); when it is
missing or unreadable (a run killed before its reports) it is computed from the rows in
memory, with `eval_report.summarise`, and nothing is written.

Not here: running evaluations or writing reports (`rstar eval`, `rstar report`).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rstar_cli.eval_report import ITEMS_FILE, MARKDOWN_FILE, PLOT_FILE, RUNS_FILE, SUMMARY_FILE, read_jsonl, summarise
from rstar_cli.report import ROUNDS_PLOT

__all__ = ["FILES", "EvalReports"]

# The files of a report folder the console serves, with their media types.
FILES = {PLOT_FILE: "image/png", ROUNDS_PLOT: "image/png", MARKDOWN_FILE: "text/markdown; charset=utf-8"}


class EvalReports:
    def __init__(self, eval_dir: str | Path, evolve_dir: str | Path) -> None:
        # Resolved once: relative roots are relative to the console's working directory.
        self.roots = {"eval": Path(eval_dir).resolve(), "evolve": Path(evolve_dir).resolve()}

    def reports(self, run: str | None = None) -> list[dict[str, Any]]:
        """Every report folder, newest first; with `run`, only the evaluations of that evolve run."""
        if run is not None:
            parts = _parts(run, "run")
            candidates = [("evolve", self.roots["evolve"].joinpath(*parts))]
        else:
            candidates = list(self.roots.items())
        found = []
        for root_name, top in candidates:
            if not top.is_dir():
                continue
            for items in top.rglob(ITEMS_FILE):
                folder = self._inside(root_name, items.parent)
                if folder is not None:
                    found.append(self._entry(root_name, folder))
        return sorted(found, key=lambda e: (e["updated_at"], e["id"]), reverse=True)

    def report(self, report_id: str) -> dict[str, Any]:
        """One report: its groups (the table), paired comparisons, runs and the URLs of its plots."""
        root_name, folder = self.folder(report_id)
        summary, written = _summary(folder)
        return {**self._entry(root_name, folder), "summary_written": written,
                "groups": summary.get("groups", []), "comparisons": summary.get("comparisons", []),
                "runs": summary.get("runs") or []}

    def folder(self, report_id: str) -> tuple[str, Path]:
        """(root name, folder) of a report id; LookupError unless it names a report folder inside its root."""
        root_name, _, rest = report_id.partition("/")
        if root_name not in self.roots:
            raise LookupError(f"no evaluation report {report_id!r}: names start with "
                              f"{' or '.join(repr(r + '/') for r in self.roots)}")
        try:
            parts = _parts(rest, "report") if rest else []
        except ValueError:
            raise LookupError(f"no evaluation report {report_id!r}") from None
        folder = self._inside(root_name, self.roots[root_name].joinpath(*parts))
        if folder is None:
            raise LookupError(f"no evaluation report {report_id!r}")
        return root_name, folder

    def file(self, report_id: str, name: str) -> tuple[Path, str]:
        """(path, media type) of one of the report's `FILES`; LookupError for any other name or a missing file."""
        _root, folder = self.folder(report_id)
        if name not in FILES:
            raise LookupError(f"{name!r} is not served: a report's files are {', '.join(sorted(FILES))}")
        path = folder / name
        # The file itself may not be a link out of the folder either.
        if not path.is_file() or path.resolve().parent != folder:
            raise LookupError(f"report {report_id!r} has no {name}")
        return path, FILES[name]

    # --- helpers ------------------------------------------------------------------------

    def _inside(self, root_name: str, folder: Path) -> Path | None:
        """`folder` resolved, if it lies inside the root and holds an items.jsonl; else None."""
        root = self.roots[root_name]
        try:
            resolved = folder.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if resolved != root and root not in resolved.parents:
            return None
        return resolved if (resolved / ITEMS_FILE).is_file() else None

    def _entry(self, root_name: str, folder: Path) -> dict[str, Any]:
        root = self.roots[root_name]
        relative = folder.relative_to(root).as_posix()
        report_id = root_name if relative == "." else f"{root_name}/{relative}"
        run = relative.split("/", 1)[0] if root_name == "evolve" and relative != "." else None
        runs = read_jsonl(folder / RUNS_FILE)
        last = runs[-1] if runs else {}
        mtime = (folder / ITEMS_FILE).stat().st_mtime
        base = f"/api/evaluation-files/{quote(report_id, safe='/')}"
        return {"id": report_id, "root": root_name, "path": relative, "run": run,
                "updated_at": datetime.fromtimestamp(mtime, timezone.utc).isoformat(timespec="seconds"),
                "command": last.get("command"), "date": last.get("date"), "machine": last.get("machine"),
                "n_runs": len(runs),
                "plot": f"{base}/{PLOT_FILE}" if (folder / PLOT_FILE).is_file() else None,
                "rounds_plot": f"{base}/{ROUNDS_PLOT}" if (folder / ROUNDS_PLOT).is_file() else None,
                "markdown": f"{base}/{MARKDOWN_FILE}" if (folder / MARKDOWN_FILE).is_file() else None}


def _parts(text: str, what: str) -> list[str]:
    """The path segments of a name under a root: no empty, '.', '..' or absolute parts."""
    parts = text.split("/")
    if not text or any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
        raise ValueError(f"{what} must be a relative path without '.' or '..' parts, got {text!r}")
    return parts


def _summary(folder: Path) -> tuple[dict[str, Any], bool]:
    """(summary, True) from summary.json, else (computed from the rows, False)."""
    try:
        summary = json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
        if isinstance(summary, dict) and isinstance(summary.get("groups"), list):
            return summary, True
    except (OSError, ValueError):
        pass
    return summarise(read_jsonl(folder / ITEMS_FILE), read_jsonl(folder / RUNS_FILE)), False
