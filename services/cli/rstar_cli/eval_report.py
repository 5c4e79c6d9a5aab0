"""The files of an `rstar eval` output folder: per-item rows, resume, summary, Markdown, plot.

An output folder holds

* ``items.jsonl``: one row per (benchmark, item, method, N, model versions, search config):
  id, question, gold, prediction, correct, tokens, seconds, method, N, versions, config_id
  and the answers considered. Rows are appended and flushed one item at a time, so a
  killed run loses at most the items in flight; `pending` tells a re-run what is left.
  Rows of several runs (other methods, N, versions) may share one folder: the reports
  then compare them.
* ``runs.jsonl``: one line per invocation (command, date, machine, config).
* ``summary.json``, ``report.md``, ``accuracy.png``: rewritten from all rows after every run.

Groups are rows with the same (benchmark, method, N, versions, config_id). Every accuracy
carries its item count and 95 % Wilson interval (`rstar_core.stats`). Paired comparisons
(exact McNemar test on the items both groups graded): within one series (method,
versions, config) each N against the smallest N; across series at the same N; and every
series' largest N against greedy of the same benchmark.

Not here: running searches or grading (`eval_cmd`), the methods (`rstar_core.evaluation`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
from itertools import combinations
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from rstar_core.evaluation import METHODS
from rstar_core.practice import practice_level
from rstar_core.stats import Accuracy, paired_test

__all__ = ["ITEMS_FILE", "MARKDOWN_FILE", "PLOT_FILE", "RUNS_FILE", "SUMMARY_FILE", "accuracy_text", "config_id",
           "machine_line", "pending", "read_jsonl", "render_markdown", "row_key", "save_figure", "summarise",
           "versions_key", "write_plot", "write_reports"]

ITEMS_FILE = "items.jsonl"
RUNS_FILE = "runs.jsonl"
SUMMARY_FILE = "summary.json"
MARKDOWN_FILE = "report.md"
PLOT_FILE = "accuracy.png"

# Settings that change throughput only: runs that differ in them are the same experiment.
_THROUGHPUT_KEYS = ("concurrent_problems",)


def config_id(config: Mapping[str, Any]) -> str:
    """A short digest of the budgets a run starts from (before its method fixes its own settings).

    `rollouts` is left out: a tree method's N is its rollouts and the other methods run one.
    Settings that only change throughput are left out too.
    """
    shaped = {k: v for k, v in config.items() if k not in (*_THROUGHPUT_KEYS, "rollouts")}
    return hashlib.sha256(json.dumps(shaped, sort_keys=True, default=str).encode()).hexdigest()[:8]


def versions_key(versions: Mapping[str, Any]) -> str:
    # An ORM or PQM scorer (the reward-model ablation) is recorded under its own kind.
    extra = "".join(f"|{kind}={versions[kind]}" for kind in ("orm", "pqm") if versions.get(kind))
    return f"{versions.get('policy') or '-'}|{versions.get('ppm') or '-'}{extra}"


def _reward_version(versions: Mapping[str, Any]) -> str | None:
    """The version of the reward model a row scored with (PPM, ORM or PQM), if any."""
    return next((versions[k] for k in ("ppm", "orm", "pqm") if versions.get(k)), None)


def row_key(row: Mapping[str, Any]) -> tuple[str, str, str, int, str, str]:
    return (row["benchmark"], str(row["id"]), row["method"], int(row["N"]), versions_key(row["versions"]),
            row["config_id"])


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of `path` (none if it does not exist); a torn line from a crash is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            row = json.loads(line)
            if isinstance(row, dict):
                rows.append(row)
    return rows


def pending(item_ids: Sequence[str], rows: Iterable[Mapping[str, Any]], *, benchmark: str, method: str,
            ns: Sequence[int], versions: Mapping[str, Any], config: str) -> dict[str, list[int]]:
    """For each item, the N of `ns` it still lacks a row for (finished items map to [])."""
    done = set()
    for row in rows:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            done.add(row_key(row))
    vkey = versions_key(versions)
    return {i: [n for n in ns if (benchmark, str(i), method, n, vkey, config) not in done] for i in item_ids}


# ---------------------------------------------------------------------- summary


def _group_key(row: Mapping[str, Any]) -> tuple:
    return (row["benchmark"], row["method"], versions_key(row["versions"]), row["config_id"], int(row["N"]))


def _method_order(method: str) -> int:
    return METHODS.index(method) if method in METHODS else len(METHODS)


def summarise(rows: Sequence[Mapping[str, Any]], runs: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Accuracy per group and the paired comparisons, JSON-ready (the latest row per key counts)."""
    latest: dict[tuple, Mapping[str, Any]] = {}
    for row in rows:
        with contextlib.suppress(KeyError, TypeError, ValueError):  # a row of another shape: not ours
            latest[row_key(row)] = row
    by_group: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in latest.values():
        by_group.setdefault(_group_key(row), []).append(row)
    keys = sorted(by_group, key=lambda k: (k[0], _method_order(k[1]), k[2], k[3], k[4]))
    several_versions = len({k[2] for k in keys}) > 1
    several_configs = len({k[3] for k in keys}) > 1
    several_benchmarks = len({k[0] for k in keys}) > 1
    groups = []
    for key in keys:
        benchmark, method, _vkey, config, n = key
        members = by_group[key]
        graded = [r for r in members if r.get("correct") is not None]
        acc = Accuracy.from_outcomes([bool(r["correct"]) for r in graded])
        versions = members[0]["versions"]
        prefix = f"{benchmark}: " if several_benchmarks else ""
        suffix = ""
        if several_versions:
            reward = _reward_version(versions)
            shown = [_short(versions.get("policy"))] + ([_short(reward)] if reward else [])
            suffix += f" [{', '.join(shown)}]"
        if several_configs:
            suffix += f" cfg {config}"
        group = {
            # `series`: the label without N, one line of the plot.
            "label": f"{prefix}{method}@{n}{suffix}", "series": f"{prefix}{method}{suffix}",
            "benchmark": benchmark, "method": method, "N": n, "versions": versions,
            "config_id": config, "items": len(members), "graded": acc.n, "correct": acc.correct,
            "accuracy": acc.rate, "ci_low": acc.low, "ci_high": acc.high,
            "tokens_per_item": _mean(r.get("tokens", 0) for r in members),
            "seconds_per_item": _mean(r.get("seconds", 0.0) for r in members),
        }
        levels = _by_level(graded)
        if levels:
            group["by_level"] = levels
        groups.append(group)
    outcomes = {g["label"]: {str(r["id"]): bool(r["correct"]) for r in by_group[k] if r.get("correct") is not None}
                for g, k in zip(groups, keys)}
    comparisons = []
    for a, b in _pairs(groups):
        shared = sorted(set(outcomes[a["label"]]) & set(outcomes[b["label"]]))
        if not shared:
            continue
        test = paired_test([outcomes[a["label"]][i] for i in shared], [outcomes[b["label"]][i] for i in shared])
        comparisons.append({"a": a["label"], "b": b["label"], "items": test.n, "a_only": test.a_only,
                            "b_only": test.b_only, "diff": test.diff, "p_value": test.p_value})
    configs: dict[str, Any] = {}
    for run in runs:
        if run.get("config_id"):
            configs[run["config_id"]] = run.get("config")
    return {"groups": groups, "comparisons": comparisons, "configs": configs, "runs": list(runs)}


def _pairs(groups: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(A, B) pairs to compare, in a stable order without repeats (see the module docstring)."""
    def series(g):
        return (g["benchmark"], g["method"], versions_key(g["versions"]), g["config_id"])

    pairs: list[tuple[Mapping[str, Any], Mapping[str, Any]]] = []
    seen: set[tuple[str, str]] = set()

    def add(a, b):
        if a is not b and (a["label"], b["label"]) not in seen and (b["label"], a["label"]) not in seen:
            seen.add((a["label"], b["label"]))
            pairs.append((a, b))

    by_series: dict[tuple, list] = {}
    for g in groups:
        by_series.setdefault(series(g), []).append(g)
    for members in by_series.values():
        members = sorted(members, key=lambda g: g["N"])
        for g in members[1:]:
            add(g, members[0])
    for a, b in combinations(groups, 2):
        if a["benchmark"] == b["benchmark"] and a["N"] == b["N"] and series(a) != series(b):
            add(a, b)
    for greedy in (g for g in groups if g["method"] == "greedy"):
        for s, members in by_series.items():
            if s[0] == greedy["benchmark"] and s[1] != "greedy":
                add(max(members, key=lambda g: g["N"]), greedy)
    return pairs


def _by_level(graded: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    levels: dict[int, list[bool]] = {}
    for row in graded:
        level = row.get("level") or practice_level(str(row["id"]))
        if level is not None:
            levels.setdefault(int(level), []).append(bool(row["correct"]))
    out = {}
    for level in sorted(levels):
        acc = Accuracy.from_outcomes(levels[level])
        out[str(level)] = {"graded": acc.n, "correct": acc.correct, "accuracy": acc.rate, "ci_low": acc.low,
                           "ci_high": acc.high}
    return out


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def _short(version: str | None) -> str:
    return "-" if not version else (version if len(version) <= 40 else version[:37] + "...")


# ---------------------------------------------------------------------- Markdown


def _pct(rate: float) -> str:
    return f"{100 * rate:.1f}"


def accuracy_text(g: Mapping[str, Any]) -> str:
    if not g["graded"]:
        return "no gold answers"
    return (f"{_pct(g['accuracy'])} % ({g['correct']}/{g['graded']}; "
            f"95 % CI {_pct(g['ci_low'])}-{_pct(g['ci_high'])})")


def _p(p: float) -> str:
    return f"{p:.3g}" if p >= 0.001 else "< 0.001"


def render_markdown(summary: Mapping[str, Any]) -> str:
    runs = summary.get("runs") or []
    lines = ["# rstar eval", ""]
    if runs:
        last = runs[-1]
        lines.append(f"Produced by `{last['command']}` on {last['date']}, {last['machine']}."
                     + (f" The rows come from {len(runs)} runs into this folder ({RUNS_FILE} lists them)."
                        if len(runs) > 1 else ""))
        lines.append("")
    lines += ["Accuracy with its 95 % Wilson interval; tokens are the policy's generated tokens per item "
              "(dropped candidates included).", "",
              "| benchmark | method | N | policy | reward model | accuracy | items | tokens/item | s/item |",
              "|---|---|---:|---|---|---|---:|---:|---:|"]
    for g in summary["groups"]:
        v = g["versions"]
        lines.append(f"| {g['benchmark']} | {g['method']} | {g['N']} | {_short(v.get('policy'))} | "
                     f"{_short(_reward_version(v))} | {accuracy_text(g)} | {g['items']} | "
                     f"{g['tokens_per_item']:.0f} | {g['seconds_per_item']:.1f} |")
    if len({g["config_id"] for g in summary["groups"]}) > 1:
        lines += ["", "Search configs (`config_id` in summary.json): "
                  + ", ".join(sorted({g["config_id"] for g in summary["groups"]})) + "."]
    levelled = [g for g in summary["groups"] if g.get("by_level")]
    if levelled:
        levels = sorted({lv for g in levelled for lv in g["by_level"]}, key=int)
        lines += ["", "## By practice level", "",
                  "| method | N | " + " | ".join(f"L{lv}" for lv in levels) + " |",
                  "|---|---:|" + "---|" * len(levels)]
        for g in levelled:
            cells = []
            for lv in levels:
                a = g["by_level"].get(lv)
                cells.append(f"{_pct(a['accuracy'])} % ({a['correct']}/{a['graded']})" if a else "")
            lines.append(f"| {g['label']} | {g['N']} | " + " | ".join(cells) + " |")
    if summary["comparisons"]:
        lines += ["", "## Paired comparisons", "",
                  "Exact McNemar test on the items both graded; p is two-sided.", "",
                  "| A | B | items | A only right | B only right | A − B | p |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for c in summary["comparisons"]:
            lines.append(f"| {c['a']} | {c['b']} | {c['items']} | {c['a_only']} | {c['b_only']} | "
                         f"{100 * c['diff']:+.1f} pts | {_p(c['p_value'])} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- plot


def write_plot(summary: Mapping[str, Any], path: Path) -> None:
    """Accuracy against generated tokens per item (log x), one panel per benchmark, one line per
    series, points labelled N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for g in summary["groups"]:
        if g["graded"]:
            panels.setdefault(g["benchmark"], {}).setdefault(g["series"], []).append(g)
    names = sorted(panels) or ["no graded items"]
    fig, axes = plt.subplots(1, len(names), figsize=(7.5 * len(names), 5), squeeze=False)
    for ax, benchmark in zip(axes[0], names):
        series = panels.get(benchmark, {})
        prefix = f"{benchmark}: "
        for name, groups in series.items():
            groups = sorted(groups, key=lambda g: g["N"])
            xs = [max(g["tokens_per_item"], 1.0) for g in groups]
            ys = [100 * g["accuracy"] for g in groups]
            err = [[100 * (g["accuracy"] - g["ci_low"]) for g in groups],
                   [100 * (g["ci_high"] - g["accuracy"]) for g in groups]]
            label = name[len(prefix):] if name.startswith(prefix) else name
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
            for x, y, g in zip(xs, ys, groups):
                ax.annotate(f"N={g['N']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("generated tokens per item (log scale)")
        ax.set_ylabel("accuracy, % (95 % CI)")
        ax.set_ylim(bottom=-1)
        ax.set_title(f"rstar eval: {benchmark}")
        ax.grid(True, which="both", alpha=0.3)
        if series:
            ax.legend(fontsize=8)
    runs = summary.get("runs") or []
    caption = f"{runs[-1]['command']}\n{runs[-1]['date']}, {runs[-1]['machine']}" if runs else None
    save_figure(fig, path, caption)


def save_figure(fig, path: Path, caption: str | None) -> None:
    """Write `fig` to `path` (PNG, replaced atomically) with the command/date/machine `caption`, and close it."""
    import matplotlib.pyplot as plt

    if caption:
        fig.text(0.01, 0.01, caption, fontsize=6, va="bottom", wrap=True)
        fig.subplots_adjust(bottom=0.2)
    tmp = path.with_name(path.name + ".partial.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


# ---------------------------------------------------------------------- files


def write_reports(out_dir: Path) -> dict[str, Any]:
    """Summary JSON, Markdown and plot from every row and run in `out_dir`; returns the summary."""
    summary = summarise(read_jsonl(out_dir / ITEMS_FILE), read_jsonl(out_dir / RUNS_FILE))
    _write_text(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    _write_text(out_dir / MARKDOWN_FILE, render_markdown(summary))
    write_plot(summary, out_dir / PLOT_FILE)
    return summary


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def machine_line() -> str:
    """Architecture, CPU model, cores and the accelerator: what the seconds depend on."""
    from rstar_models.hardware import cpu_model

    cpu = cpu_model()
    gpu = "no GPU"
    torch = sys.modules.get("torch")  # only if the run loaded it: never imported for this line
    if torch is not None:
        with contextlib.suppress(Exception):
            if torch.cuda.is_available():
                gpu = f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    elif Path("/proc/driver/nvidia/gpus").is_dir():
        gpu = "NVIDIA GPU"
    return f"{platform.machine()}, {cpu}, {os.cpu_count()} cores, {gpu}"
