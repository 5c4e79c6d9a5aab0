"""`rstar report RUN [EVAL_DIR ...]`: one Markdown page for a self-evolution run and its evaluations.

RUN is one of

* the name of an `rstar evolve` run: its round table comes from the store
  (`RSTAR_DATABASE_URL`, as `rstar rounds` reads it), and its evaluations are the eval
  folders (folders with an ``items.jsonl``) under ``<work-dir>/<RUN>/``, where
  `rstar eval --run RUN` writes by default;
* a folder (RUN is a folder whenever a directory of that path exists): the eval folders
  under it (itself included), and the round table of the newest ``rounds.json`` in it or in
  one of those folders (`rstar eval --run` writes one beside its reports; so does
  `rstar rounds --json`), if there is one. No store is needed.

More eval folders may follow RUN. The page (``--out``, default ``run_report.md`` in
``<work-dir>/<RUN>/`` or in the folder) holds the round table with the accuracy-per-round
plot (``rounds.png`` beside the page), then each eval folder's table and test-time scaling
plot, its reports first rewritten from its rows. The round plot draws the run's held-out
accuracies per round (95 % intervals) and, at the round whose policy it ran, every
evaluation's accuracy.

`write_rounds` puts a run's round table and that plot in an eval folder (`rstar eval --run`).
Not here: the round table's rows (`rounds`), the eval reports themselves (`eval_report`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["PAGE", "ROUNDS_JSON", "ROUNDS_PLOT", "add_report_parser", "eval_folders", "plot_rounds", "render_page",
           "write_rounds"]

ROUNDS_JSON = "rounds.json"
ROUNDS_PLOT = "rounds.png"
PAGE = "run_report.md"
DEFAULT_WORK_DIR = "runs/evolve"


# ---------------------------------------------------------------------- round table and plot


def read_rounds(run: str) -> list[dict[str, Any]]:
    """The round table of the evolve run `run`, from the store (a usage error if it has none)."""
    from .main import _open_store
    from .rounds import rounds_table

    with _open_store() as store:
        try:
            steps = store.list_evolve_steps(run)
        except LookupError:
            steps = []
    if not steps:
        raise ValueError(f"run {run!r} has no recorded rounds (is it an `rstar evolve` run?)")
    return rounds_table(steps)


def write_rounds(run: str, out_dir: Path, summaries: Sequence[Mapping[str, Any]], command: str) -> list[dict[str, Any]]:
    """The run's round table as ``rounds.json`` and its accuracy per round as ``rounds.png`` in `out_dir`.

    `command` (what produced the figure) is printed under it with the date and machine.
    """
    from .eval_report import _write_text, machine_line

    rows = read_rounds(run)
    _write_text(out_dir / ROUNDS_JSON, json.dumps(rows, indent=2) + "\n")
    plot_rounds(rows, out_dir / ROUNDS_PLOT, summaries, caption=_caption(command, machine_line()), title=run)
    return rows


def _round_points(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[int, Mapping[str, Any]]]]:
    """Series name -> [(position of the round, its accuracy cell)], from the round table."""
    series: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for x, row in enumerate(rows):
        cells = [("held-out GSM8K, greedy", row.get("heldout_accuracy")),
                 ("held-out GSM8K, search", row.get("heldout_search_accuracy"))]
        cells += [(f"practice L{level}, greedy", acc)
                  for level, acc in sorted((row.get("practice_accuracy_by_level") or {}).items())]
        for name, acc in cells:
            if acc:
                series.setdefault(name, []).append((x, acc))
    return series


def _eval_points(rows: Sequence[Mapping[str, Any]],
                 summaries: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[int, Mapping[str, Any]]]]:
    """Evaluation groups whose policy is a round's policy, at that round (accuracy cells like the table's)."""
    round_of = {row["policy"]: x for x, row in enumerate(rows) if row.get("policy")}
    series: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for summary in summaries:
        for g in summary.get("groups", []):
            x = round_of.get((g.get("versions") or {}).get("policy"))
            if x is not None and g["graded"]:
                acc = {"rate": g["accuracy"], "low": g["ci_low"], "high": g["ci_high"]}
                series.setdefault(f"eval {g['benchmark']} {g['method']}@{g['N']}", []).append((x, acc))
    return series


def plot_rounds(rows: Sequence[Mapping[str, Any]], path: Path, summaries: Sequence[Mapping[str, Any]] = (),
                *, caption: str | None, title: str) -> list[str]:
    """Accuracy per round (95 % CI): the round table's held-out sets, solid; evaluations of round policies, dashed.

    Returns the names of the series drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .eval_report import save_figure

    fig, ax = plt.subplots(figsize=(7.5, 5))
    styles = [(_round_points(rows), "-"), (_eval_points(rows, summaries), "--")]
    for series, line in styles:
        for name, points in series.items():
            xs = [x for x, _ in points]
            ys = [100 * a["rate"] for _, a in points]
            err = [[100 * (a["rate"] - a["low"]) for _, a in points], [100 * (a["high"] - a["rate"]) for _, a in points]]
            ax.errorbar(xs, ys, yerr=err, marker="o", linestyle=line, capsize=3, label=name)
    ax.set_xticks(range(len(rows)), [str(row["round"]) for row in rows])
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy, % (95 % CI)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"rstar evolve {title}: accuracy per round")
    ax.grid(True, alpha=0.3)
    names = ax.get_legend_handles_labels()[1]
    if names:
        ax.legend(fontsize=7)
    save_figure(fig, path, caption)
    return names


# ---------------------------------------------------------------------- the page


def eval_folders(root: Path) -> list[Path]:
    """Every folder at or under `root` that holds an `rstar eval` items.jsonl, in path order."""
    from .eval_report import ITEMS_FILE

    return sorted({p.parent for p in root.rglob(ITEMS_FILE)}) if root.is_dir() else []


def render_page(title: str, produced: str, rounds: Sequence[Mapping[str, Any]] | None, rounds_plot: str | None,
                evals: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """The page: the round table and its plot, then each evaluation (label, summary) with its plot.

    Plot paths are relative to the page; an evaluation's plot is `<label>/accuracy.png`.
    """
    from .eval_report import PLOT_FILE, render_markdown
    from .rounds import render_markdown as render_rounds

    lines = [f"# rstar report: {title}", "", produced, ""]
    if rounds:
        lines += ["## Self-evolution rounds", "",
                  "Accuracies in % with 95 % Wilson intervals; `p` is an exact McNemar test against the base model "
                  "on the same items.", "", render_rounds(rounds).rstrip("\n"), ""]
        if rounds_plot:
            lines += [f"![accuracy per round]({rounds_plot})", ""]
    if evals:
        lines += ["## Evaluations", ""]
    for label, summary in evals:
        body = render_markdown(summary).splitlines()
        # Its own title becomes this section's; its sections move two levels down.
        body = [("##" + line if line.startswith("## ") else line) for line in body[1:]]
        plot = Path(label, PLOT_FILE).as_posix()
        lines += [f"### {label}", *body, "", f"![test-time scaling: accuracy against generated tokens]({plot})", ""]
    if not rounds and not evals:
        lines += ["Nothing to report: no round table and no eval folder.", ""]
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    from .eval_report import ITEMS_FILE, _write_text, machine_line, write_reports
    from .main import _as_usage_error

    with _as_usage_error():
        for folder in args.evals:
            if not (Path(folder) / ITEMS_FILE).is_file():
                raise ValueError(f"{folder}: not an `rstar eval` folder (no {ITEMS_FILE})")
        if Path(args.run).is_dir():
            root = Path(args.run)
            folders = eval_folders(root)
            rounds = _newest_rounds([root, *folders])
        else:
            root = Path(args.work_dir) / args.run
            folders = eval_folders(root)
            rounds = read_rounds(args.run)
        folders = list(dict.fromkeys(p.resolve() for p in [*folders, *map(Path, args.evals)]))
        if not rounds and not folders:
            raise ValueError(f"{args.run}: nothing to report: no round table (rounds.json) and no eval folder "
                             f"(a folder with {ITEMS_FILE}) in it")
    page = Path(args.out) if args.out else root / PAGE
    page.parent.mkdir(parents=True, exist_ok=True)
    here = page.parent.resolve()
    summaries = [(os.path.relpath(folder, here), write_reports(folder)) for folder in folders]
    machine = machine_line()
    plot = None
    if rounds:
        _write_text(here / ROUNDS_JSON, json.dumps(rounds, indent=2) + "\n")
        plot_rounds(rounds, here / ROUNDS_PLOT, [s for _, s in summaries], caption=_caption(_command(args), machine),
                    title=Path(args.run).name)
        plot = ROUNDS_PLOT
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    produced = f"Produced by `{_command(args)}` on {date}, {machine}."
    _write_text(page, render_page(Path(args.run).name, produced, rounds, plot, summaries))
    print(f"wrote {page} ({len(rounds)} round rows, {len(summaries)} evaluations)")
    return 0


def _newest_rounds(folders: Sequence[Path]) -> list[dict[str, Any]]:
    files = [f / ROUNDS_JSON for f in folders if (f / ROUNDS_JSON).is_file()]
    if not files:
        return []
    newest = max(files, key=lambda f: f.stat().st_mtime)
    try:
        return json.loads(newest.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{newest}: not a round table ({exc})") from None


def _command(args: argparse.Namespace) -> str:
    parts = ["rstar", "report", args.run, *args.evals]
    if args.work_dir != DEFAULT_WORK_DIR:
        parts += ["--work-dir", args.work_dir]
    if args.out:
        parts += ["--out", args.out]
    return shlex.join(parts)


def _caption(command: str, machine: str) -> str:
    return f"{command}\n{datetime.now(timezone.utc).isoformat(timespec='seconds')}, {machine}"


def add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="one Markdown page: an evolve run's round table and accuracy per round, and "
                                      "its eval folders' tables and scaling plots",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="an `rstar evolve` run name (round table from the store, eval folders "
                                              "under <work-dir>/RUN/) or a folder (eval folders under it, round "
                                              "table from its newest rounds.json)")
    p.add_argument("evals", nargs="*", metavar="EVAL_DIR", help="more `rstar eval` output folders")
    p.add_argument("--work-dir", default=DEFAULT_WORK_DIR, help=f"the evolve runs' folder (default {DEFAULT_WORK_DIR})")
    p.add_argument("--out", help=f"the page (default {PAGE} in <work-dir>/RUN/ or in the folder RUN)")
    p.set_defaults(func=cmd_report)
