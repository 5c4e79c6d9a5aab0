"""`rstar evolve`: the self-evolution round driver, durable step by step.

One run is a sequence of steps, each recorded in the store's `evolve_steps` (run, round,
step) with its result, so killing the driver anywhere and running the same command again
resumes at the step it was in: a finished step is never redone, a search resumes with the
problems that have no result yet, a training resumes from its last checkpoint.

Round 0 (bootstrap): `evaluate_base` (the base model on the held-out sets), `bootstrap`
(the pool's worked GSM8K solutions converted to our step format and verified in the
sandbox; practice problems have none: the search must find theirs), `data`, `train_sft`, `evaluate`, `decide`.
Round r >= 1: `search` (the pool with the promoted policy; from round 3 on with the
promoted PPM scoring new nodes), `data` (SFT: top-2 correct trajectories per tree, unioned
with every earlier round and round 0, deduplicated; PPM: step pairs, held out by problem),
`train_sft` (from the original base model), `train_ppm` (from this round's policy),
`evaluate`, `decide` (promote both models only if held-out greedy accuracy did not drop;
otherwise keep the previous ones and say so).
A recipe with `method: process-supervision` runs MCTS process supervision's rounds instead
(`evolve_process`): no round 0; each round walks the pool with the promoted policy, trains
that policy on the scored steps, and evaluates and decides as above.
MCTS++ switches of the recipe (`evolve_mctspp`): with `grpo.enabled`, `grpo_data` and
`train_grpo` (GRPO from the round's SFT policy, whose result is the round's candidate) run
after the PPM and before `evaluate`; with `step_dpo.enabled`, `step_dpo_data` and `train_dpo`
(step-DPO on the round's PPM pairs, from the SFT policy) run before them; `sft_filter_min_ppm`
filters the `data` step's SFT set.
With `reward_baselines` (`evolve_baselines`), `baselines_data`, `train_orm` / `train_pqm` and
`promote_baselines` follow `decide` in every search round: the ORM and PQM of the reward-model
ablation, from the round's trees.

Searches run in this process by default; `--distributed` enqueues them on the `search`
queue and the training on the `train` queue and waits for the store to say they are done
(the services must serve the promoted versions: on a `make up` stack the driver rolls them
itself). Evaluation always runs in this process (greedy decoding and a fixed-budget search
through the embedded engine).

Not here: the search, the trainers, the registry; the round table's rendering (`rounds`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from rstar_core.config import SearchConfig
from rstar_core.curation import SFTExample, decontaminate, ppm_examples, sft_examples, split_by_problem, union_sft
from rstar_core.grading import answers_match
from rstar_core.practice import generate_practice, practice_level
from rstar_core.types import Problem, Tree

from .evolve_recipe import EvolveRecipe
from .problems import problem_from_record

__all__ = ["EvolveSettings", "Evolver"]

log = logging.getLogger(__name__)

EVAL_FILES = ("GSM8K_test.json", "MATH_test.json", "math500_test.json", "aime2024_test.json", "amc23_test.json",
              "olympiadbench_test.json", "collegemath_test.json", "gaokao2023en_test.json", "omni_test.json")
HELDOUT_FRACTION = 0.1
POLL_S = 5.0


@dataclass(frozen=True)
class EvolveSettings:
    run: str
    pool_file: Path
    recipe: EvolveRecipe
    rounds: int
    work_dir: Path
    data_dir: Path
    # The original base model directory (every round's SFT starts from it).
    base_model: str
    distributed: bool = False
    # Where `make up` keeps its stack (rolled onto promoted versions in distributed mode).
    stack_dir: Path = Path("runs/local")


class Evolver:
    def __init__(self, settings: EvolveSettings, store, registry, *, echo: Callable[[str], None] = print) -> None:
        self.s = settings
        self.store = store
        self.registry = registry
        self.echo = echo
        self.recipe = settings.recipe

    # ------------------------------------------------------------------ the rounds

    def run(self) -> None:
        self.store.get_or_create_run(self.s.run, config_name=f"evolve:{self.recipe.name}",
                                     config={"recipe": self.recipe.name, "pool": str(self.s.pool_file)})
        pool = self._step(0, "pool", self._pool)
        self._step(0, "evaluate_base", lambda: self._evaluate(self.s.base_model, "base", None))
        if self.recipe.method == "process-supervision":
            from .evolve_process import process_round

            for round in range(1, self.s.rounds + 1):
                process_round(self, round, pool)
            return
        self._round0(pool)
        for round in range(1, self.s.rounds + 1):
            self._round(round, pool)

    def _round0(self, pool: dict[str, Any]) -> None:
        if not self.recipe.bootstrap.enabled:
            return
        self._step(0, "bootstrap", lambda: self._bootstrap(pool))
        data = self._step(0, "data", lambda: self._data(0))
        self._train_and_decide(0, data)

    def _round(self, round: int, pool: dict[str, Any]) -> None:
        self._step(round, "search", lambda: self._search(round, pool))
        data = self._step(round, "data", lambda: self._data(round))
        self._train_and_decide(round, data)

    def _train_and_decide(self, round: int, data: dict[str, Any]) -> None:
        if data["sft"] is None:
            self.echo(f"round {round}: no correct trajectory in this round or an earlier one: "
                      "nothing to train, the models stay")
            return
        policy = self._train(round, "train_sft", self.s.base_model, data["sft"]["path"], self.recipe.sft,
                             parent=self._promoted_version("policy"))
        ppm = None
        if data.get("ppm"):
            ppm = self._train(round, "train_ppm", policy["path"], data["ppm"]["path"], self.recipe.ppm,
                              parent=self._promoted_version("ppm"))
        if self.recipe.step_dpo_enabled:  # MCTS++: step-DPO from the SFT policy on the round's pairs
            from .evolve_mctspp import step_dpo_stage

            policy = step_dpo_stage(self, round, policy, data)
        if self.recipe.grpo_enabled:  # MCTS++: GRPO from the SFT policy is the round's candidate
            from .evolve_mctspp import grpo_stage

            policy = grpo_stage(self, round, policy, ppm)
        evaluation = self._step(round, "evaluate", lambda: self._evaluate(
            policy["path"], "sft", ppm["path"] if ppm else self._promoted_path("ppm")))
        decision = self._step(round, "decide", lambda: self._decide(round, policy, ppm, evaluation))
        if self.recipe.reward_baselines and round >= 1:
            from .evolve_baselines import reward_baselines

            reward_baselines(self, round, policy, decision)

    # ------------------------------------------------------------------ steps

    def _step(self, round: int, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        record = self.store.get_evolve_step(self.s.run, round, name)
        if record is not None and record.state == "done":
            return record.result
        self.echo(f"round {round}: {name} ...")
        self.store.start_evolve_step(self.s.run, round, name)
        start = time.perf_counter()
        try:
            result = fn()
        except BaseException as exc:
            self.store.fail_evolve_step(self.s.run, round, name, f"{type(exc).__name__}: {exc}")
            raise
        result = {**result, "wall_s": round_s(time.perf_counter() - start)}
        self.store.finish_evolve_step(self.s.run, round, name, result)
        self.echo(f"round {round}: {name} done in {result['wall_s']:.0f} s")
        return result

    def _pool(self) -> dict[str, Any]:
        """The search pool: the recipe's slice of the pool file plus practice problems, decontaminated."""
        spec = self.recipe.pool
        records = _read_jsonl(self.s.pool_file)
        chosen = [r for r in records if not spec.sources or r.get("source") in spec.sources]
        if spec.limit is not None:
            chosen = chosen[:spec.limit]
        problems = [problem_from_record(r, f"{self.s.pool_file}: record {r.get('id')}") for r in chosen]
        if spec.practice.n_per_level:
            problems += [p.problem for p in generate_practice(spec.practice.levels, spec.practice.n_per_level,
                                                               spec.practice.seed, "pool")]
        kept, dropped = decontaminate(problems, _eval_questions(self.s.data_dir))
        if not kept:
            raise ValueError(f"{self.s.pool_file}: no pool problem left after the recipe's filters")
        path = self._dir(0) / "pool.jsonl"
        _write_jsonl(path, [{"id": p.id, "question": p.question, "answer": p.answer} for p in kept])
        return {"path": str(path), "problems": len(kept), "decontaminated": dropped,
                "practice": sum(practice_level(p.id) is not None for p in kept)}

    def _bootstrap(self, pool: dict[str, Any]) -> dict[str, Any]:
        from rstar_core.bootstrap import convert_gsm8k

        records = [r for r in _read_jsonl(self.s.pool_file) if r.get("reference_solution")]
        eval_questions = _eval_questions(self.s.data_dir)
        kept_records, dropped = _decontaminate_records(records, eval_questions)
        if self.recipe.bootstrap.limit is not None:
            kept_records = kept_records[:self.recipe.bootstrap.limit]
        conversions = [convert_gsm8k(r["question"], r["reference_solution"], str(r.get("id"))) for r in kept_records]
        examples, counts = verified_examples(conversions)
        path = self._dir(0) / "bootstrap.jsonl"
        _write_jsonl(path, [_example_json(e) for e in examples])
        counts = {**counts, "decontaminated": dropped}
        return {"path": str(path), "examples": len(examples), "counts": counts}

    def _search(self, round: int, pool: dict[str, Any]) -> dict[str, Any]:
        policy_path, prompt_format = self._policy_for_search()
        ppm_path = self._promoted_path("ppm") if round >= 3 else None
        config = self.recipe.search_config(round, prompt_format=prompt_format, **_initial_values(ppm_path),
                                           terminal_reward="ground_truth",
                                           seed=self.recipe.search_config(round).seed + round)
        problems = [problem_from_record(r, f"{pool['path']}: {r.get('id')}") for r in _read_jsonl(Path(pool["path"]))]
        batch = self.store.add_batch(self.s.run, round, config.seed, problems, config.to_dict(), source=pool["path"])
        if self.s.distributed:
            self._search_distributed(round, batch.task_ids, policy_path, ppm_path)
        else:
            asyncio.run(self._search_embedded(batch.task_ids, config, policy_path, ppm_path))
        progress = self.store.run_progress(self.s.run, round=round)
        buckets: dict[str, int] = {}
        for row in self.store.iter_results(self.s.run, round=round):
            buckets[row["difficulty"]] = buckets.get(row["difficulty"], 0) + 1
        return {"policy": policy_path, "ppm": ppm_path, "config": config.to_dict(), "problems": len(problems),
                "failed": progress.states.get("failed", 0), "solved_by_bucket": buckets,
                "any_correct": progress.any_correct, "tokens": progress.tokens, "search_s": progress.search_s}

    async def _search_embedded(self, task_ids: Sequence[int], config: SearchConfig, policy: str,
                               ppm: str | None) -> None:
        from tqdm import tqdm

        from .embedded import EmbeddedSettings, embedded_runtime

        specs = [self.store.task_spec(t) for t in dict.fromkeys(task_ids)]
        todo = [s for s in specs if s.state not in ("done", "cancelled")]
        if not todo:
            return
        worker = f"evolve:{socket.gethostname()}:{os.getpid()}"
        for spec in todo:
            self.store.claim_task(spec.id, worker)
        settings = _embedded_settings(policy, ppm)
        async with embedded_runtime(config, settings) as runtime:
            mcts = runtime.mcts(config)
            bar = tqdm(total=len(specs), initial=len(specs) - len(todo), desc="search", unit="problem",
                       file=sys.stderr, dynamic_ncols=True)
            async for i, result in mcts.search_many([s.problem for s in todo], return_exceptions=True):
                if isinstance(result, Exception):
                    self.store.mark_failed(todo[i].id, f"{type(result).__name__}: {result}", final=True)
                else:
                    self.store.record_result(todo[i].id, result)
                bar.update(1)
            bar.close()

    def _search_distributed(self, round: int, task_ids: Sequence[int], policy: str, ppm: str | None) -> None:
        from rstar_worker.app import SEARCH_QUEUE, SEARCH_TASK, app

        self._ensure_served(policy, ppm)
        queued = [t for t in dict.fromkeys(task_ids) if self.store.task_spec(t).state == "queued"]
        for task_id in queued:
            app.send_task(SEARCH_TASK, args=[task_id], queue=SEARCH_QUEUE)
        self.echo(f"round {round}: {len(queued)} searches published to '{SEARCH_QUEUE}', waiting ...")
        while True:
            progress = self.store.run_progress(self.s.run, round=round)
            if progress.states.get("queued", 0) + progress.states.get("running", 0) == 0:
                return
            time.sleep(POLL_S)

    def _data(self, round: int) -> dict[str, Any]:
        from rstar_trainer.datasets import write_ppm_dataset, write_sft_dataset

        bootstrap = self.store.get_evolve_step(self.s.run, 0, "bootstrap")
        lists = [[_example_from_json(r) for r in _read_jsonl(Path(bootstrap.result["path"]))]] if bootstrap else []
        pairs = []
        for r in range(1, round + 1):
            trees = [Tree.from_dict(row["tree"]) for row in self.store.iter_results(self.s.run, round=r,
                                                                                      with_tree=True)]
            lists.append(sft_examples(trees, r))
            pairs += ppm_examples(trees, r)
        examples = union_sft(*lists)
        filtered: dict[str, Any] = {}
        if self.recipe.sft_filter_min_ppm is not None:
            from .evolve_mctspp import filter_sft_by_ppm

            examples, filtered = filter_sft_by_ppm(self, examples)
        sources = {"run": self.s.run, "rounds": list(range(round + 1))}
        result: dict[str, Any] = {"sft": None, "ppm": None}
        if not examples:  # nothing correct yet: the round trains nothing (`_train_and_decide`)
            return result
        sft = write_sft_dataset(examples, self._dir(round) / "sft_data", round=round, sources=sources,
                                counts={"before_dedup": sum(len(x) for x in lists), **filtered})
        result["sft"] = {"path": sft.path, "examples": len(examples), "content_hash": sft.content_hash}
        if pairs:
            heldout = split_by_problem((p.problem_id for p in pairs), HELDOUT_FRACTION)
            try:
                ppm = write_ppm_dataset(pairs, heldout, self._dir(round) / "ppm_data", round=round, sources=sources)
            except ValueError as exc:
                self.echo(f"round {round}: no PPM this round: {exc}")
            else:
                result["ppm"] = {"path": ppm.path, "pairs": len(pairs), "content_hash": ppm.content_hash,
                                 **ppm.manifest["counts"]}
        return result

    def _train(self, round: int, step: str, start_model: str, dataset: str, config: dict[str, Any],
               parent: str | None) -> dict[str, Any]:
        from rstar_trainer.jobs import TrainJob, run_train_job

        job = TrainJob(run=self.s.run, round=round, step=step, start_model=start_model, dataset=dataset,
                       work_dir=str(self._dir(round) / step), config=config, parent=parent, base=self.s.base_model)
        done = self.store.get_evolve_step(self.s.run, round, step)
        if done is not None and done.state == "done":
            return done.result
        self.echo(f"round {round}: {step} ...")
        if not self.s.distributed:
            # In a process of its own: this one ran the vLLM engine (one torch thread, its memory).
            return run_train_job(job, self.store, self.registry, isolated=True)
        from rstar_worker.app import TRAIN_QUEUE, app

        app.send_task("rstar.train", args=[job.to_json()], queue=TRAIN_QUEUE)
        self.echo(f"round {round}: {step} sent to '{TRAIN_QUEUE}', waiting ...")
        while True:
            record = self.store.get_evolve_step(self.s.run, round, step)
            if record is not None and record.state == "done":
                return record.result
            if record is not None and record.state == "failed":
                raise RuntimeError(f"{step} of round {round} failed on the trainer: {record.error}")
            time.sleep(POLL_S)

    def _decide(self, round: int, policy: dict[str, Any], ppm: dict[str, Any] | None,
                evaluation: dict[str, Any]) -> dict[str, Any]:
        previous_eval = self._evaluation_of(self._promoted_version("policy"))
        new, old = evaluation["greedy_all"]["rate"], previous_eval["greedy_all"]["rate"]
        promote = new >= old - self.recipe.promote_tolerance
        if promote:
            self.registry.promote(policy["version"])
            if ppm:
                self.registry.promote(ppm["version"])
            self._roll_out(policy["path"], ppm["path"] if ppm else None)
        else:
            self.registry.reject(policy["version"])
            if ppm:
                self.registry.reject(ppm["version"])
        verdict = "promoted" if promote else "rejected (held-out accuracy dropped; the previous models stay)"
        self.echo(f"round {round}: greedy held-out {100 * new:.1f}% vs {100 * old:.1f}% -> {verdict}")
        return {"promoted": promote, "policy": policy["version"], "ppm": ppm["version"] if ppm else None,
                "heldout_greedy": new, "previous_heldout_greedy": old}

    # ------------------------------------------------------------------ evaluation

    def _evaluate(self, policy: str, prompt_format: str, ppm: str | None) -> dict[str, Any]:
        spec = self.recipe.eval
        gsm8k = _load_eval(self.s.data_dir / spec.gsm8k_file, spec.gsm8k_limit)
        practice = [p.problem for p in generate_practice((1, 2, 3, 4, 5), spec.practice_per_level,
                                                         spec.practice_seed, "heldout")] if spec.practice_per_level else []
        greedy = self.recipe.greedy_config(prompt_format)
        search = self.recipe.eval_search_config(prompt_format=prompt_format, **_initial_values(ppm),
                                                terminal_reward="ppm" if ppm else "ground_truth")
        search_items = gsm8k[:spec.search_limit]

        async def run():
            from .embedded import embedded_runtime

            async with embedded_runtime(search, _embedded_settings(policy, ppm)) as runtime:
                greedy_out = await _solve(runtime.mcts(greedy), gsm8k + practice, "greedy")
                search_out = await _solve(runtime.mcts(search), search_items, "search") if search_items else {}
                return greedy_out, search_out

        greedy_out, search_out = asyncio.run(run())
        ids = [p.id for p in gsm8k]
        by_level = {level: [p.id for p in practice if practice_level(p.id) == level] for level in range(1, 6)}
        return {
            "policy": policy, "ppm": ppm, "prompt_format": prompt_format,
            "gsm8k_ids": ids,
            "greedy_gsm8k": [greedy_out["correct"][i] for i in ids],
            "greedy_practice": {str(lv): [greedy_out["correct"][i] for i in pids] for lv, pids in by_level.items()},
            "search_gsm8k": [search_out["correct"][p.id] for p in search_items] if search_items else [],
            "greedy_all": _rate(list(greedy_out["correct"].values())),
            "tokens": greedy_out["tokens"] + search_out.get("tokens", 0),
            "greedy_s": greedy_out["wall_s"], "search_s": search_out.get("wall_s", 0.0),
        }

    def _evaluation_of(self, version: str | None) -> dict[str, Any]:
        """The evaluation that produced `version` (None: the base model's)."""
        for step in self.store.list_evolve_steps(self.s.run):
            if step.step == "decide" and step.state == "done" and step.result.get("policy") == version:
                record = self.store.get_evolve_step(self.s.run, step.round, "evaluate")
                return record.result
        return self.store.get_evolve_step(self.s.run, 0, "evaluate_base").result

    # ------------------------------------------------------------------ models

    def _promoted(self, kind: str):
        """This run's current version of `kind`: the one of its versions promoted last (a
        rollback onto one promotes it again) and not rejected since; None before its first
        promotion. Another run's promotion moves the store's pointer (what the services serve),
        not this run's model: its next round still starts from its own."""
        own = [v for v in self.store.list_model_versions(kind, run=self.s.run)
               if v.promoted_at is not None and v.status != "rejected"]
        return max(own, key=lambda v: v.promoted_at, default=None)

    def _policy_for_search(self) -> tuple[str, str]:
        promoted = self._promoted("policy")
        return (str(promoted.path), "sft") if promoted else (self.s.base_model, "base")

    def _promoted_version(self, kind: str) -> str | None:
        promoted = self._promoted(kind)
        return promoted.version if promoted else None

    def _promoted_path(self, kind: str) -> str | None:
        promoted = self._promoted(kind)
        return str(promoted.path) if promoted else None

    def _roll_out(self, policy: str, ppm: str | None) -> None:
        if not self.s.distributed:
            return
        from .launcher import roll_service

        rolled = roll_service(self.s.stack_dir, "policy", {"RSTAR_MODEL": policy})
        if ppm:
            rolled = roll_service(self.s.stack_dir, "reward", {"RSTAR_REWARD_MODEL": ppm}) and rolled
        if not rolled:
            self.echo("no local stack to roll: point the compose/k8s services at the promoted versions "
                      "(README, 'Rolling out a model version') before the next round's search")

    def _ensure_served(self, policy: str, ppm: str | None) -> None:
        """The policy service must answer with the version this round searches with."""
        from rstar_models.store import model_version
        from rstar_rpc.clients import GrpcPolicyClient
        from rstar_rpc.settings import ClientSettings

        expected = model_version(policy)

        async def served() -> str:
            client = GrpcPolicyClient(ClientSettings.from_env("policy"))
            try:
                await client.refresh_model_version()
                return client.model_version
            finally:
                await client.close()

        actual = asyncio.run(served())
        if actual != expected:
            raise RuntimeError(f"the policy service serves {actual!r}, this round searches with {expected!r}: "
                               f"roll it out (rstar models promote) and run the same command again")

    def _dir(self, round: int) -> Path:
        path = self.s.work_dir / self.s.run / f"round-{round}"
        path.mkdir(parents=True, exist_ok=True)
        return path


# ---------------------------------------------------------------------- helpers


def verified_examples(conversions) -> tuple[list[SFTExample], dict[str, Any]]:
    """Round 0's SFT examples: the converted solutions that print the ground truth in the sandbox."""
    from rstar_core.bootstrap import verify
    from rstar_executor import SandboxExecutor

    async def run():
        async with SandboxExecutor() as executor:
            return await verify(conversions, executor)

    verified = asyncio.run(run())
    return ([SFTExample(t.problem.id, t.problem.question, tuple(t.steps), "bootstrap", 0)
             for t in verified.trajectories], verified.counts)


async def _solve(mcts, problems: Sequence[Problem], label: str) -> dict[str, Any]:
    """Search each problem without its answer; grade the picked answer afterwards."""
    from tqdm import tqdm

    hidden = [Problem(p.question, None, p.id) for p in problems]
    correct: dict[str, bool] = {}
    tokens = 0
    start = time.perf_counter()
    bar = tqdm(total=len(problems), desc=label, unit="problem", file=sys.stderr, dynamic_ncols=True)
    async for i, result in mcts.search_many(hidden, return_exceptions=True):
        problem = problems[i]
        if isinstance(result, Exception):
            correct[problem.id] = False
        else:
            tokens += result.tree.stats.generated_tokens
            correct[problem.id] = result.answer is not None and await asyncio.to_thread(
                answers_match, result.answer, problem.answer)
        bar.update(1)
    bar.close()
    return {"correct": correct, "tokens": tokens, "wall_s": round_s(time.perf_counter() - start)}


def _initial_values(ppm: str | None) -> dict[str, bool]:
    """Initial node values: the PPM's once there is one; before that, a recipe's
    use_confidence_init (Marco-o1's token confidence) stands."""
    return {"use_ppm_init": True, "use_confidence_init": False} if ppm else {"use_ppm_init": False}


def _embedded_settings(policy: str, ppm: str | None):
    from .embedded import EmbeddedSettings

    base = EmbeddedSettings.from_env()
    return EmbeddedSettings(model=policy, reward_model=ppm or "", model_cache=base.model_cache,
                            max_model_len=base.max_model_len, cpu_kvcache_gib=base.cpu_kvcache_gib,
                            enforce_eager=base.enforce_eager, policy_dtype=base.policy_dtype)


def _rate(outcomes: list[bool]) -> dict[str, Any]:
    from rstar_core.stats import Accuracy

    acc = Accuracy.from_outcomes(outcomes)
    return {"correct": acc.correct, "n": acc.n, "rate": acc.rate, "low": acc.low, "high": acc.high}


def _load_eval(path: Path, limit: int) -> list[Problem]:
    from .problems import load_problems

    problems = load_problems(path, limit=limit)
    return [Problem(p.question, p.answer, f"{path.stem}-{p.id}") for p in problems]


def _eval_questions(data_dir: Path) -> list[str]:
    questions = []
    for name in EVAL_FILES:
        path = data_dir / "eval" / name
        if path.is_file():
            questions += [r["question"] for r in json.loads(path.read_text(encoding="utf-8"))]
    return questions


def _decontaminate_records(records: list[dict], eval_questions: list[str]) -> tuple[list[dict], int]:
    from rstar_core.curation import normalise_question

    banned = {normalise_question(q) for q in eval_questions}
    kept = [r for r in records if normalise_question(r["question"]) not in banned]
    return kept, len(records) - len(kept)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from None
    return rows


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def _example_json(example: SFTExample) -> dict[str, Any]:
    return {"problem_id": example.problem_id, "question": example.question, "steps": list(example.steps),
            "source": example.source, "round": example.round, "mean_q": example.mean_q}


def _example_from_json(row: dict[str, Any]) -> SFTExample:
    return SFTExample(row["problem_id"], row["question"], tuple(row["steps"]), row["source"], row["round"],
                      row.get("mean_q", 0.0))


def round_s(seconds: float) -> float:
    return round(seconds, 1)
