"""How fast this host's engine decodes at each batch size (`make bench-engine`).

The search and pipeline benchmarks compare with a replay on the same host, so their
ratios travel between machines; their tokens per second do not. This measures the bare
engine's decode speed on the benchmark's prompts (first 20 GSM8K test questions in the
base prompt, already in the prefix cache) at batch 1 to 256, 64 tokens per sequence with
ignore_eos, so that two hosts, or two sessions on shared hosts, can be compared. Writes
the "engine_curve" record of docs/benchmarks.json and its section of docs/benchmarks.md.
"""

from __future__ import annotations

import time
from pathlib import Path

from search_bench import bench_work, engine_mode, machine_line, offline_engine, replace_section, write_record

COMMAND = "make bench-engine"
BATCHES = (1, 4, 16, 64, 256)
TOKENS = 64


def measure(model_dir: str, prompts: list[str], seed: int) -> list[dict]:
    from vllm import SamplingParams

    rows = []
    with offline_engine(model_dir, seed) as llm:
        # Fill the prefix cache, so the timed calls measure decoding.
        llm.generate(prompts, SamplingParams(max_tokens=1), use_tqdm=False)
        for batch in BATCHES:
            batch_prompts = [prompts[i % len(prompts)] for i in range(batch)]
            params = SamplingParams(temperature=0.7, max_tokens=TOKENS, ignore_eos=True)
            start = time.perf_counter()
            llm.generate(batch_prompts, params, use_tqdm=False)
            wall = time.perf_counter() - start
            rows.append({"batch": batch, "tokens_per_s": round(batch * TOKENS / wall, 1),
                         "ms_per_step": round(wall / TOKENS * 1000, 1)})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    args, problems, config, model_dir = bench_work()
    from rstar_core.steps import get_format

    fmt = get_format(config.prompt_format)
    prompts = [fmt.render_prompt(p.question) for p in problems]
    record = {
        "command": COMMAND,
        "machine": machine_line(),
        "date": time.strftime("%Y-%m-%d"),
        "engine": engine_mode(),
        "tokens_per_sequence": TOKENS,
        "results": measure(model_dir, prompts, config.seed),
    }
    write_record(Path(args.out_json), "engine_curve", record)
    rows = "\n".join(f"| {r['batch']} | {r['tokens_per_s']} | {r['ms_per_step']} |" for r in record["results"])
    replace_section(Path(args.out_md), "engine-curve", f"""<!-- engine-curve:start -->
## Engine speed of this host (`{COMMAND}`)

{record['date']}, {record['machine']}, {record['engine']} engine; the benchmark's prompts
(cached), {TOKENS} tokens per sequence.

| sequences in the batch | tokens/s | ms per engine step |
|---|---|---|
{rows}
<!-- engine-curve:end -->
""")


if __name__ == "__main__":
    main()
