"""Search throughput against the raw engine on the same prompts and tokens (`make bench-search`).

1. Runs the fixed benchmark config (deploy/configs/bench.yaml: first 20 GSM8K test
   problems, n=4, 2 rollouts, depth 4, 256 tokens per step, T=0.7) through the embedded
   search, recording every generation request and how many tokens each sample produced.
2. Replays exactly those prompts and token counts as ONE offline batch through a fresh
   `vllm.LLM` (ignore_eos, max_tokens = the sample's length): the raw engine figure.
3. Measures the sandbox's per-execution overhead (`print(1)`, warm pool): back to back,
   and with the calls `SEARCH_LIKE_SPACING_S` apart as in a search (`rstar_executor.bench`).

Steps 1-3 are repeated `--repeat` times (5), each on fresh engines: runs of this work
differ (no per-request seed on CPU, so each run draws different samples: a single ratio
moves by about ±0.1), so the run with the median ratio is reported, beside every run's
figures and the mean ratio.

Writes docs/benchmarks.json (machine-readable, with command and config) and the
"Search benchmark" section of docs/benchmarks.md. Speed goals are checked here, never in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]

from rstar_core.config import load_config
from rstar_core.metrics import format_adherence
from rstar_core.ports import GenerationRequest
from rstar_policy.recording import RecordingPolicy

COMMAND = "make bench-search"
# Figures measured on this machine class with the same model and work (issue #2).
RESEARCH_CODE = {"end_to_end_tokens_per_s": 24, "without_thread_oversubscription": "418-442",
                 "offline_engine_tokens_per_s": "556-610"}


class PeakMemory:
    """Peak total RSS of some processes and their children (default: this one).

    Samples every `interval_s`; the list of child processes is re-read only every
    `refresh_s`, because walking /proc is the costly part and on a 2-core machine the
    sampler must not take CPU from the engine it measures (sampling every 50 ms with a
    walk each time, plus 4 database polls a second, the pipeline benchmark's process took
    ~7 % of the machine).
    """

    def __init__(self, pids=None, interval_s: float = 0.2, refresh_s: float = 2.0):
        self.peak = 0
        self.pids = pids or [os.getpid()]
        self.interval_s = interval_s
        self.refresh_s = refresh_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self) -> list:
        procs = []
        for pid in self.pids:
            try:
                root = psutil.Process(pid)
                procs += [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
        return procs

    def _run(self):
        procs, refreshed = [], 0.0
        while True:
            if time.monotonic() - refreshed >= self.refresh_s:
                procs, refreshed = self._tree(), time.monotonic()
            self.peak = max(self.peak, total_rss(procs))
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


async def run_search(problems, config):
    from rstar_cli.embedded import embedded_runtime
    from rstar_executor.bench import SEARCH_LIKE_SPACING_S, measure_overhead

    async with embedded_runtime(config) as runtime:
        # Warm the engine (first-call costs are start-up, not search).
        await runtime.policy.generate(GenerationRequest(prompt="Hello", n=1, max_tokens=8))
        policy = RecordingPolicy(runtime.policy)
        runtime.policy = policy
        mcts = runtime.mcts(config)
        trees, solved = [], 0
        with PeakMemory() as mem:
            start, t0 = time.perf_counter(), time.time()
            async for _, result in mcts.search_many(problems):
                trees.append(result.tree)
                solved += bool(result.correct)
            wall, t1 = time.perf_counter() - start, time.time()
        sandbox = await measure_overhead(runtime.executor, n=300)
        sandbox_spaced = await measure_overhead(runtime.executor, n=200, spacing_s=SEARCH_LIKE_SPACING_S)
    return {"trees": trees, "solved": solved, "wall_s": wall, "peak_rss_mb": mem.peak / 2**20,
            "log": policy.entries, "sandbox": sandbox, "sandbox_spaced": sandbox_spaced,
            "in_flight": occupancy(policy.timings, t0, t1), "window": (t0, t1)}


def occupancy(timings, t0: float, t1: float, slices: int = 10) -> dict:
    """How many sequences the engine had in flight during [t0, t1], from the request timings.

    A sample counts from its request's start until it finished. Returns the time-weighted
    mean over the whole run and over each tenth of it (the tail shows as falling numbers).
    """
    events = []
    for start, finished in timings:
        for done in finished:
            events.append((max(start, t0), 1))
            events.append((min(done, t1), -1))
    events.sort()
    edges = [t0 + (t1 - t0) * k / slices for k in range(slices + 1)]
    area = [0.0] * slices
    level, last = 0, t0
    for t, delta in [*events, (t1, 0)]:
        # Spread level * (t - last) over the slices it covers.
        for k in range(slices):
            lo, hi = max(last, edges[k]), min(t, edges[k + 1])
            if hi > lo:
                area[k] += level * (hi - lo)
        level, last = level + delta, max(last, t)
    width = (t1 - t0) / slices
    return {"mean": round(sum(area) / (t1 - t0), 1), "by_tenth": [round(a / width, 1) for a in area]}


def run_engine(model_dir: str, log, seed: int, **engine_kwargs) -> dict:
    """The same prompts and sample lengths as one offline batch (the raw engine figure).

    `engine_kwargs` go to `vllm.LLM` on top of the search's settings (bench/step_trace.py).
    """
    from vllm import SamplingParams

    prompts, params = [], []
    for prompt, temperature, lengths in log:
        for n_tokens in lengths:
            if n_tokens:
                prompts.append(prompt)
                params.append(SamplingParams(n=1, temperature=temperature, max_tokens=n_tokens, ignore_eos=True))
    with offline_engine(model_dir, seed, **engine_kwargs) as llm:
        llm.generate(["Hello"], SamplingParams(max_tokens=8), use_tqdm=False)
        with PeakMemory() as mem:
            start, t0 = time.perf_counter(), time.time()
            outs = llm.generate(prompts, params, use_tqdm=False)
            wall, t1 = time.perf_counter() - start, time.time()
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall, "sequences": len(prompts),
            "peak_rss_mb": mem.peak / 2**20, "window": (t0, t1)}


@contextlib.contextmanager
def offline_engine(model_dir: str, seed: int, **engine_kwargs):
    """A `vllm.LLM` with the search's policy-engine settings (bench_work fixes RSTAR_ENFORCE_EAGER),
    stopped on exit."""
    from vllm import LLM

    from rstar_policy.engine import EngineSettings

    engine = EngineSettings(model=model_dir, seed=seed, enforce_eager=engine_is_eager())
    llm = LLM(model=model_dir, dtype=engine_dtype(), seed=seed, enforce_eager=engine.enforce_eager,
              enable_prefix_caching=engine.enable_prefix_caching, max_model_len=engine.max_model_len,
              block_size=engine.block_size, max_num_seqs=engine.max_num_seqs,
              gpu_memory_utilization=engine.gpu_memory_utilization, **engine_kwargs)
    try:
        yield llm
    finally:
        # Stop the engine core process now: left to interpreter exit, multiprocessing waits on it.
        llm.llm_engine.engine_core.shutdown()


def engine_is_eager() -> bool:
    from rstar_policy.engine import enforce_eager_from_env

    return enforce_eager_from_env(os.environ, default=False)


def engine_dtype() -> str:
    """What the search's engine computes in: embedded mode's setting (``RSTAR_POLICY_DTYPE``),
    else this machine's preferred type, so the replay computes like the search it replays."""
    from rstar_cli.embedded import EmbeddedSettings
    from rstar_models.hardware import preferred_dtype

    return EmbeddedSettings.from_env().policy_dtype or preferred_dtype()


def engine_mode() -> str:
    return f"{'eager' if engine_is_eager() else 'compiled'} {engine_dtype()}"


def read_records(path: Path) -> dict:
    """Every benchmark's record in docs/benchmarks.json (empty when there is none yet)."""
    return json.loads(path.read_text()) if path.exists() else {}


def write_record(path: Path, name: str, record: dict) -> None:
    """Replace one benchmark's record in the JSON file, keeping the others."""
    records = read_records(path)
    records[name] = record
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=2) + "\n")


def bench_work():
    """Arguments and the fixed work shared by both benchmarks: (args, problems, config, model dir)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(REPO / "deploy" / "configs" / "bench.yaml"))
    parser.add_argument("--problems", type=int, default=20)
    parser.add_argument("--out-json", default=str(REPO / "docs" / "benchmarks.json"))
    parser.add_argument("--out-md", default=str(REPO / "docs" / "benchmarks.md"))
    parser.add_argument("--repeat", type=int, default=5,
                        help="independent runs (fresh engine each); the run with the median ratio is reported")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    # Throughput configuration: a compiled engine for the search, the stack and the replay
    # alike (RSTAR_ENFORCE_EAGER=1 measures the eager engine instead).
    os.environ.setdefault("RSTAR_ENFORCE_EAGER", "0")

    from rstar_cli.problems import load_problems
    from rstar_models.store import prepare_model

    data_dir = Path(os.environ.get("RSTAR_DATA_DIR", REPO.parent / "shared" / "data"))
    problems = load_problems(data_dir / "eval" / "GSM8K_test.json", limit=args.problems)
    return args, problems, load_config(args.config), str(prepare_model())


def median_run(runs: list[dict], key: str) -> dict:
    """The run whose `key` is the median (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: r[key])
    return ordered[(len(ordered) - 1) // 2]


def mean_of(runs: list[dict], key: str) -> float:
    return round(sum(r[key] for r in runs) / len(runs), 3)


def run_summaries(runs: list[dict], key: str, tps_key: str) -> list[dict]:
    """The few numbers of every run, kept beside the median one."""
    return [{key: r[key], tps_key: r[tps_key], "engine_tokens_per_s": r["engine_tokens_per_s"],
             "problems_per_min": r["problems_per_min"], "generated_tokens": r["generated_tokens"]} for r in runs]


def measure_once(problems, config, model_dir: str) -> dict:
    """One search of the fixed work on a fresh engine, then its replay on another fresh engine."""
    search = asyncio.run(run_search(problems, config))
    search_tokens = sum(sum(lengths) for _, _, lengths in search["log"])
    engine = run_engine(model_dir, search["log"], config.seed)
    search_tps = search_tokens / search["wall_s"]
    return {
        "search_vs_engine_ratio": round(search_tps / engine["tokens_per_s"], 3),
        "search_tokens_per_s": round(search_tps, 1),
        "engine_tokens_per_s": round(engine["tokens_per_s"], 1),
        "problems_per_min": round(len(problems) / search["wall_s"] * 60, 2),
        "sandbox_overhead_ms_p50": round(search["sandbox"]["p50_ms"], 2),
        "sandbox_overhead_ms_p90": round(search["sandbox"]["p90_ms"], 2),
        "sandbox_overhead_ms_p50_spaced": round(search["sandbox_spaced"]["p50_ms"], 2),
        "sandbox_spacing_ms": round(search["sandbox_spaced"]["spacing_s"] * 1000),
        "search_peak_rss_mb": round(search["peak_rss_mb"]),
        "engine_peak_rss_mb": round(engine["peak_rss_mb"]),
        "search_wall_s": round(search["wall_s"], 1),
        "engine_wall_s": round(engine["wall_s"], 1),
        "generated_tokens": search_tokens,
        "engine_tokens": engine["tokens"],
        "policy_requests": len(search["log"]),
        "solved": f"{search['solved']}/{len(problems)}",
        "format_adherence": format_adherence(search["trees"]),
        "sequences_in_flight": search["in_flight"],
    }


def main() -> None:
    args, problems, config, model_dir = bench_work()

    runs = []
    for k in range(args.repeat):
        runs.append(measure_once(problems, config, model_dir))
        print(f"run {k + 1}/{args.repeat}: ratio {runs[-1]['search_vs_engine_ratio']}", flush=True)
    results = dict(median_run(runs, "search_vs_engine_ratio"))
    results["search_vs_engine_ratio_mean"] = mean_of(runs, "search_vs_engine_ratio")
    results["runs"] = run_summaries(runs, "search_vs_engine_ratio", "search_tokens_per_s")
    record = {
        "command": COMMAND,
        "config_file": str(Path(args.config).relative_to(REPO)),
        "config": config.to_dict(),
        "problems": f"GSM8K_test.json first {len(problems)}",
        "model": model_dir.split("/")[-1],
        "machine": machine_line(),
        "date": time.strftime("%Y-%m-%d"),
        "repeat": args.repeat,
        "engine": engine_mode(),
        "results": results,
        "research_code_same_work": RESEARCH_CODE,
    }
    write_record(Path(args.out_json), "search", record)
    write_markdown(Path(args.out_md), record)
    print(json.dumps(results, indent=2))


def machine_line() -> str:
    """Architecture, CPU model and vector ISA, cores and memory: tokens per second differ between hosts."""
    import torch

    from rstar_models.hardware import cpu_model

    cpu = cpu_model()
    return (f"{platform.machine()}, {cpu} ({torch.backends.cpu.get_cpu_capability()}), {os.cpu_count()} cores, "
            f"{round(psutil.virtual_memory().total / 2**30)} GiB, no GPU")


def runs_line(runs: list[dict], key: str, tps_key: str) -> str:
    return "; ".join(f"{r[key]} ({r[tps_key]} vs {r['engine_tokens_per_s']} tokens/s)" for r in runs)


def write_markdown(path: Path, record: dict) -> None:
    r = record["results"]
    fa = r["format_adherence"]
    section = f"""<!-- search-bench:start -->
## Search benchmark (`{record['command']}`)

{record['date']}, {record['machine']}, model {record['model']}, {record['engine']} engine, config `{record['config_file']}`
({record['problems']}, n={record['config']['expansion_width']}, {record['config']['rollouts']} rollouts,
depth {record['config']['max_depth']}, {record['config']['max_tokens_per_step']} tokens per step,
T={record['config']['temperature']}).

Every figure but the "every run" row comes from the run with the median ratio.

| metric | value |
|---|---|
| search tokens/s (end to end, embedded) | **{r['search_tokens_per_s']}** |
| raw engine tokens/s (same prompts and token counts, one offline batch) | {r['engine_tokens_per_s']} |
| search ÷ engine, median of {record['repeat']} runs | **{r['search_vs_engine_ratio']}** (goal ≥ 0.85; mean {r['search_vs_engine_ratio_mean']}) |
| every run: ratio (search vs engine tokens/s) | {runs_line(r['runs'], 'search_vs_engine_ratio', 'search_tokens_per_s')} |
| problems/minute | {r['problems_per_min']} |
| generated tokens / policy requests | {r['generated_tokens']} / {r['policy_requests']} |
| peak RSS, search (process + engine) / raw engine | {r['search_peak_rss_mb']} MB / {r['engine_peak_rss_mb']} MB |
| sandbox overhead per execution, p50 / p90 (warm, all isolation on) | **{r['sandbox_overhead_ms_p50']} ms** / {r['sandbox_overhead_ms_p90']} ms back to back (goal ≤ 5 ms p50); {r['sandbox_overhead_ms_p50_spaced']} ms p50 with calls {r['sandbox_spacing_ms']} ms apart, as in a search |
| solved (majority vote over the tree) | {r['solved']} |
| sequences in flight in the engine: mean, and by tenth of the run | {r['sequences_in_flight']['mean']}; {' '.join(str(x) for x in r['sequences_in_flight']['by_tenth'])} |
| format: code candidates that ran / candidates kept / answer leaves / problems with an answer | {fa['code_run_rate']} / {fa['valid_candidate_rate']} / {fa['answer_leaf_rate']} / {fa['answered_tree_rate']} |

The published research code on the same machine, model and work: {RESEARCH_CODE['end_to_end_tokens_per_s']} tokens/s
end to end ({RESEARCH_CODE['without_thread_oversubscription']} once its `torch.set_num_threads(12)` is removed), against
{RESEARCH_CODE['offline_engine_tokens_per_s']} tokens/s for one offline engine batch over its prompts.
<!-- search-bench:end -->
"""
    replace_section(path, "search-bench", section)


def total_rss(procs) -> int:
    """Summed RSS of the processes that are still there (one may exit while we read)."""
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def replace_section(path: Path, name: str, section: str) -> None:
    """Put `section` (wrapped in <!-- name:start/end --> markers) into the file, replacing its old copy."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEvery number here names the command that produced it.\n\n"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->\n"
    if start in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text += "\n" + section
    path.write_text(text)


if __name__ == "__main__":
    main()
