"""The search benchmark's fixed work through the full distributed stack (`make bench-pipeline`).

Starts the local stack (policy and executor gRPC services, one Celery worker process
running all 20 searches at once) against this machine's RabbitMQ and PostgreSQL, with
the policy service logging every request. Enqueues the first 20 GSM8K test problems with
deploy/configs/bench.yaml, waits until all are done, then replays the logged prompts and
token counts as one offline engine batch. Repeats all of it `--repeat` times (5) with a
fresh stack and database each time and reports the run with the median ratio, beside
every run's figures. Compares with the in-process figure of the latest
`make bench-search` in docs/benchmarks.json. Writes the "pipeline" record there
and its section of docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import psutil

from search_bench import (PeakMemory, bench_work, engine_mode, machine_line, mean_of, median_run, occupancy,
                          read_records, replace_section, run_engine, run_summaries, runs_line, write_record)

REPO = Path(__file__).resolve().parents[1]
COMMAND = "make bench-pipeline"


def _cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU time used so far by each stack process (with its children), by this benchmark
    process and by the broker and DB."""
    out: dict[str, float] = {}

    def total(proc: psutil.Process) -> float:
        times = proc.cpu_times()
        return times.user + times.system

    for name, pid in pids.items():
        try:
            root = psutil.Process(pid)
            out[name] = sum(total(p) for p in [root, *root.children(recursive=True)])
        except psutil.Error:
            out[name] = 0.0
    # The benchmark itself (enqueue, polling, memory sampling), without the stack it started.
    out["bench-harness"] = total(psutil.Process())
    for proc in psutil.process_iter(["name"]):
        label = {"beam.smp": "rabbitmq", "postgres": "postgres"}.get(proc.info["name"] or "")
        if label:
            try:
                out[label] = out.get(label, 0.0) + total(proc)
            except psutil.Error:
                pass
    return out


def measure_once(problems, config, model_dir: str, run_tag: str) -> dict:
    """One pass of the fixed work through a freshly started stack, then its replay."""
    import psycopg

    from rstar_cli.launcher import StackSpec, start_stack, stop_stack, wait_healthy
    from rstar_policy.recording import read_request_log, read_request_timings
    from rstar_store import Store
    from rstar_worker.app import SEARCH_QUEUE, SEARCH_TASK, app

    work = Path(tempfile.mkdtemp(prefix="rstar-bench-"))
    request_log = work / "requests.jsonl"
    db_name = f"rstar_bench_{run_tag}"
    spec = StackSpec(
        run_dir=work / "stack",
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/{db_name}",
        workers=1,
        worker_concurrency=len(problems),
        executors=1,
        with_reward=False,
        base_port=52000,
        env={"RSTAR_MODEL": model_dir, "RSTAR_QUEUE_PREFIX": os.environ["RSTAR_QUEUE_PREFIX"],
             "RSTAR_POLICY_REQUEST_LOG": str(request_log), "VLLM_LOGGING_LEVEL": "WARNING"},
    )
    start_stack(spec)
    try:
        wait_healthy(spec, timeout_s=600)
        pid_map = json.loads((spec.run_dir / "stack.json").read_text())["pids"]
        store = Store.from_url(spec.database_url)
        store.get_or_create_run("bench", config_name="bench", config=config.to_dict())
        batch = store.add_batch("bench", 1, config.seed, problems, config.to_dict(), source="GSM8K_test.json")
        cpu_before = _cpu_seconds(pid_map)
        with PeakMemory(pids=list(pid_map.values())) as mem:
            t0 = time.time()
            for task_id in batch.new_task_ids:
                app.send_task(SEARCH_TASK, args=[task_id], queue=SEARCH_QUEUE)
            while True:
                progress = store.run_progress("bench")
                if progress.states["done"] + progress.states["failed"] >= len(problems):
                    break
                # Polling is cheap but not free, and on 2 cores every CPU-second the harness
                # takes is the engine's; the end time comes from the database below.
                time.sleep(1.0)
            # The run ends when the last result was committed (the worker stamps finished_at in
            # that transaction), not when the poll noticed it (failed tasks have no result: then now).
            finished = [datetime.fromisoformat(r["finished_at"]).timestamp()
                        for r in store.iter_results("bench") if r["finished_at"]]
            t1 = max(finished, default=time.time())
            wall = t1 - t0
        cpu_after = _cpu_seconds(pid_map)
        store.close()
    finally:
        stop_stack(spec.run_dir, grace_s=10)
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')

    log = read_request_log(request_log)
    tokens = sum(sum(lengths) for _, _, lengths in log)
    engine = run_engine(model_dir, log, config.seed)
    pipeline_tps = tokens / wall
    return {
        "pipeline_vs_engine_ratio": round(pipeline_tps / engine["tokens_per_s"], 3),
        "pipeline_tokens_per_s": round(pipeline_tps, 1),
        "engine_tokens_per_s": round(engine["tokens_per_s"], 1),
        "problems_per_min": round(len(problems) / wall * 60, 2),
        "pipeline_wall_s": round(wall, 1),
        "generated_tokens": tokens,
        "policy_requests": len(log),
        "done": progress.states["done"],
        "failed": progress.states["failed"],
        "stack_peak_rss_mb": round(mem.peak / 2**20),
        # CPU seconds each part used during the run (the policy entry includes its engine).
        "cpu_s": {k: round(cpu_after.get(k, 0.0) - v, 1) for k, v in sorted(cpu_before.items())},
        "cpu_capacity_s": round(wall * (os.cpu_count() or 1), 1),
        "sequences_in_flight": occupancy(read_request_timings(request_log), t0, t1),
    }


def main() -> None:
    args, problems, config, model_dir = bench_work()
    tag = uuid.uuid4().hex[:8]
    # Isolate this benchmark's queues before anything imports the Celery app.
    os.environ["RSTAR_QUEUE_PREFIX"] = f"bench-{tag}-"

    runs = []
    for k in range(args.repeat):
        runs.append(measure_once(problems, config, model_dir, f"{tag}_{k}"))
        print(f"run {k + 1}/{args.repeat}: ratio {runs[-1]['pipeline_vs_engine_ratio']}", flush=True)
    median = median_run(runs, "pipeline_vs_engine_ratio")
    out_json = Path(args.out_json)
    inprocess = read_records(out_json).get("search", {}).get("results", {})
    results = {
        "pipeline_vs_engine_ratio": median["pipeline_vs_engine_ratio"],
        "pipeline_vs_engine_ratio_mean": mean_of(runs, "pipeline_vs_engine_ratio"),
        "pipeline_vs_inprocess_ratio": (round(median["pipeline_tokens_per_s"] / inprocess["search_tokens_per_s"], 3)
                                        if inprocess else None),
        "inprocess_tokens_per_s": inprocess.get("search_tokens_per_s"),
        "inprocess_problems_per_min": inprocess.get("problems_per_min"),
        **median,
        "runs": run_summaries(runs, "pipeline_vs_engine_ratio", "pipeline_tokens_per_s"),
    }
    record = {
        "command": COMMAND,
        "config_file": str(Path(args.config).relative_to(REPO)),
        "config": config.to_dict(),
        "problems": f"GSM8K_test.json first {len(problems)}",
        "stack": f"policy + executor gRPC services, 1 Celery worker process (threads, concurrency {len(problems)}), "
                 "RabbitMQ, PostgreSQL, all on this machine; a fresh stack for every run",
        "machine": machine_line(),
        "date": time.strftime("%Y-%m-%d"),
        "repeat": args.repeat,
        "engine": engine_mode(),
        "results": results,
    }
    write_record(out_json, "pipeline", record)
    write_markdown(Path(args.out_md), record)
    print(json.dumps(results, indent=2))


def write_markdown(path: Path, record: dict) -> None:
    r = record["results"]
    section = f"""<!-- pipeline-bench:start -->
## Pipeline benchmark (`{record['command']}`)

{record['date']}, {record['machine']}, {record['engine']} engine; {record['stack']}. Same work as the search benchmark
(config `{record['config_file']}`, {record['problems']}).

Every figure but the "every run" row comes from the run with the median ratio.

| metric | value |
|---|---|
| pipeline tokens/s (enqueue to last result in PostgreSQL) | **{r['pipeline_tokens_per_s']}** |
| raw engine tokens/s (same prompts and token counts, one offline batch) | {r['engine_tokens_per_s']} |
| pipeline ÷ engine, median of {record['repeat']} runs | **{r['pipeline_vs_engine_ratio']}** (goal ≥ 0.85; mean {r['pipeline_vs_engine_ratio_mean']}) |
| every run: ratio (pipeline vs engine tokens/s) | {runs_line(r['runs'], 'pipeline_vs_engine_ratio', 'pipeline_tokens_per_s')} |
| in-process search tokens/s (latest `make bench-search`) | {r['inprocess_tokens_per_s']} |
| pipeline ÷ in-process | **{r['pipeline_vs_inprocess_ratio']}** |
| problems/minute, pipeline / in-process | {r['problems_per_min']} / {r['inprocess_problems_per_min']} |
| generated tokens / policy requests | {r['generated_tokens']} / {r['policy_requests']} |
| tasks done / failed | {r['done']} / {r['failed']} |
| peak RSS of the stack's processes | {r['stack_peak_rss_mb']} MB |
| sequences in flight in the engine: mean, and by tenth of the run | {r['sequences_in_flight']['mean']}; {' '.join(str(x) for x in r['sequences_in_flight']['by_tenth'])} |
| CPU seconds used during the run, by process (of {r['cpu_capacity_s']} available) | {', '.join(f"{k} {v}" for k, v in r['cpu_s'].items())} |
<!-- pipeline-bench:end -->
"""
    replace_section(path, "pipeline-bench", section)


if __name__ == "__main__":
    main()
