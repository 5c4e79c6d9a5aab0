"""Engine steps of one search and of its replay, side by side (a diagnostic; not in `make bench`).

Runs the search benchmark's work once as `make bench-search` does (same config, engine
settings and replay) with vLLM's per-iteration details on (`enable_logging_iteration_details`),
and records every engine step of both runs: sequences decoding, prompt tokens prefilled
and the step's time. Then splits the search's extra wall time over the replay into

- idle: time in neither run's engine steps (the engine waited for work: Python between
  steps, result processing, sandbox, grading, new requests not yet submitted);
- slower steps: the search's steps against what the same steps cost in the replay, by a
  least-squares fit of the replay's step time on (1, sequences decoding, prompt tokens);
  contention from the search's own processes shows here;
- more steps: what the search's steps would cost at the replay's rate minus the replay's
  busy time; steps at low occupancy (a deep chain running alone at the end) show here.

    .venv/bin/python bench/step_trace.py --out-json /tmp/steps.json   # Makefile's environment

Prints the split and a table by batch size; `--out-json` keeps every step for further study
(never docs/benchmarks.json, the benchmarks' record).
Not here: any figure of the benchmark record (docs/benchmarks.*); this only explains one.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from search_bench import REPO, bench_work, run_engine, run_search  # noqa: E402

DETAILS = {"disable_log_stats": False, "enable_logging_iteration_details": True}
BATCH_BUCKETS = (1, 4, 16, 64, 128, 256)


class StepRecorder:
    """Collects the per-iteration details vLLM's LoggingStatLogger would log, one per step."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def add(self, details) -> None:
        if details is None or details.is_dummy:
            return
        self.steps.append({"t": time.time(), "index": details.iteration_index,
                           "prefill_requests": details.num_ctx_requests, "prefill_tokens": details.num_ctx_tokens,
                           "decoding": details.num_generation_requests, "generated": details.num_generation_tokens,
                           "ms": details.elapsed_ms})

    def take(self, window: tuple[float, float]) -> list[dict]:
        """The steps received inside `window` (wall-clock seconds), and forget all."""
        t0, t1 = window
        steps = [s for s in self.steps if t0 <= s["t"] <= t1 + 0.5]
        self.steps = []
        return steps


def record_steps() -> StepRecorder:
    """Route vLLM's per-iteration details (instead of its log line) to a recorder, and switch
    them on in the engines the embedded runtime builds."""
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.metrics.loggers import LoggingStatLogger

    recorder = StepRecorder()
    LoggingStatLogger._log_iteration_details = lambda self, stats, engine_idx: recorder.add(stats.iteration_details)
    build = AsyncLLM.from_engine_args.__func__

    def with_details(cls, engine_args, *args, **kwargs):
        for name, value in DETAILS.items():
            setattr(engine_args, name, value)
        return build(cls, engine_args, *args, **kwargs)

    AsyncLLM.from_engine_args = classmethod(with_details)
    return recorder


def fit_step_cost(steps: list[dict]) -> np.ndarray:
    """Least squares: ms ~ a + b * sequences decoding + c * prompt tokens."""
    x = np.array([[1.0, s["decoding"], s["prefill_tokens"]] for s in steps])
    y = np.array([s["ms"] for s in steps])
    return np.linalg.lstsq(x, y, rcond=None)[0]


def predicted_ms(steps: list[dict], coef: np.ndarray) -> float:
    return float(sum(coef[0] + coef[1] * s["decoding"] + coef[2] * s["prefill_tokens"] for s in steps))


def by_batch(steps: list[dict]) -> list[dict]:
    rows, lo = [], 0
    for hi in BATCH_BUCKETS:
        chosen = [s for s in steps if lo < s["decoding"] <= hi]
        rows.append({"decoding": f"{lo + 1}-{hi}", "steps": len(chosen),
                     "seconds": round(sum(s["ms"] for s in chosen) / 1000, 2),
                     "tokens": sum(s["generated"] for s in chosen)})
        lo = hi
    prefill_only = [s for s in steps if s["decoding"] == 0]
    rows.insert(0, {"decoding": "0 (prefill only)", "steps": len(prefill_only),
                    "seconds": round(sum(s["ms"] for s in prefill_only) / 1000, 2), "tokens": 0})
    return rows


def summary(search_steps, replay_steps, search_wall, replay_wall) -> dict:
    coef = fit_step_cost(replay_steps)
    busy_s = sum(s["ms"] for s in search_steps) / 1000
    busy_r = sum(s["ms"] for s in replay_steps) / 1000
    at_replay_rate = predicted_ms(search_steps, coef) / 1000
    return {
        "wall_s": {"search": round(search_wall, 2), "replay": round(replay_wall, 2),
                   "difference": round(search_wall - replay_wall, 2)},
        "steps": {"search": len(search_steps), "replay": len(replay_steps)},
        "busy_s": {"search": round(busy_s, 2), "replay": round(busy_r, 2)},
        "replay_step_cost_ms": {"fixed": round(float(coef[0]), 2), "per_sequence": round(float(coef[1]), 3),
                                "per_prompt_token": round(float(coef[2]), 4)},
        "split_of_difference_s": {
            "idle": round((search_wall - busy_s) - (replay_wall - busy_r), 2),
            "slower_steps": round(busy_s - at_replay_rate, 2),
            "more_steps": round(at_replay_rate - busy_r, 2),
        },
        "by_batch": {"search": by_batch(search_steps), "replay": by_batch(replay_steps)},
    }


def main() -> None:
    args, problems, config, model_dir = bench_work()
    recorder = record_steps()
    search = asyncio.run(run_search(problems, config))
    search_steps = recorder.take(search["window"])
    replay = run_engine(model_dir, search["log"], config.seed, **DETAILS)
    replay_steps = recorder.take(replay["window"])
    tokens = sum(sum(lengths) for _, _, lengths in search["log"])
    result = summary(search_steps, replay_steps, search["wall_s"], replay["wall_s"])
    result["tokens"] = {"search": tokens, "replay": replay["tokens"]}
    result["ratio"] = round((tokens / search["wall_s"]) / replay["tokens_per_s"], 3)
    result["date"] = time.strftime("%Y-%m-%d %H:%M")
    print(json.dumps(result, indent=2))
    out = Path(args.out_json)
    if out.resolve() != (REPO / "docs" / "benchmarks.json").resolve():
        out.write_text(json.dumps({**result, "search_steps": search_steps,
                                                   "replay_steps": replay_steps}) + "\n")


if __name__ == "__main__":
    main()
