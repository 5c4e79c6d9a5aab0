"""Training speed: our SFT trainer against a plain torch loop on the same batches (`make bench-train`).

1. SFT set: the first `--examples` GSM8K train solutions converted to our step format and
   verified in the sandbox (round 0's own data).
2. `train_sft` (TRL `SFTTrainer`, completion-only loss, length-grouped batches, bf16
   autocast where the CPU has it) for `--steps` optimizer steps; its progress log gives
   the non-padding tokens per second of every step.
3. A plain loop over *the same batches*: the trainer's own dataloader (same order, same
   collator, same labels), the same fresh model, AdamW at the same settings, autocast as
   the trainer does it: forward, backward, step, nothing else. Its tokens per second on
   the same steps is the ceiling the trainer is measured against (goal: trainer ≥ 0.9 of it).
4. PPM pairs per second: `train_ppm` for `--steps` steps on pairs built from the same
   solutions (chosen: a verified step; rejected: that step with its numbers changed).

The first `WARMUP_STEPS` steps of each are left out (allocation, first-call costs).
Writes the "train" record of docs/benchmarks.json and its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path

from search_bench import machine_line, replace_section, write_record

REPO = Path(__file__).resolve().parents[1]
COMMAND = "make bench-train"
WARMUP_STEPS = 2


def sft_examples(limit: int):
    from rstar_cli.evolve import verified_examples
    from rstar_core.bootstrap import convert_gsm8k

    pool = Path(os.environ.get("RSTAR_DATA_DIR", REPO.parent / "shared" / "data")) / "train" / "problem_pool.jsonl"
    records = []
    with pool.open() as f:
        for line in f:
            record = json.loads(line)
            if record.get("reference_solution"):
                records.append(record)
            if len(records) == limit:
                break
    examples, _ = verified_examples([convert_gsm8k(r["question"], r["reference_solution"], str(r["id"]))
                                     for r in records])
    return examples


def ppm_examples(sft):
    from rstar_core.curation import PPMExample

    def corrupt(step: str) -> str:
        return re.sub(r"\d+", lambda m: str(int(m.group()) + 7), step)

    pairs = []
    for ex in sft:
        for i, step in enumerate(ex.steps[:-2]):  # code steps (the last two: print and answer)
            pairs.append(PPMExample(ex.problem_id, ex.question, ex.steps[:i], (step,), (corrupt(step),),
                                    1.0, -1.0, False, 0))
    return pairs


def plain_loop_tokens_per_s(model_dir: str, dataset_dir: Path, config, steps: int) -> tuple[float, list[float]]:
    """The same batches as the trainer, through forward + backward + AdamW only."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

    from rstar_trainer.common import precision_args
    from rstar_trainer.datasets import load_training_set
    from rstar_trainer.run_config import training_arguments

    data, _ = load_training_set(dataset_dir, "sft")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as work:
        args = TRLConfig(**training_arguments(config, work, progress_bar=False), max_length=config.max_length,
                         completion_only_loss=True, **precision_args())
        trainer = SFTTrainer(model=model, args=args, train_dataset=data.select_columns(["prompt", "completion"]),
                             processing_class=tokenizer)
        loader = trainer.get_train_dataloader()
    bf16 = bool(args.bf16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    model.train()
    rates = []
    batches = iter(loader)
    for _ in range(steps):
        batch = next(batches)
        tokens = int(batch["attention_mask"].sum())
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        rates.append(tokens / (time.perf_counter() - start))
    kept = rates[WARMUP_STEPS:]
    return sum(kept) / len(kept), rates


def trainer_tokens_per_s(work: Path) -> tuple[float, list[float]]:
    rows = [json.loads(line) for line in (work / "progress.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s")]
    # The progress log's rate of step k spans steps k-1..k: the first rate is already step 2's.
    kept = rates[WARMUP_STEPS - 1:]
    return sum(kept) / len(kept), rates


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=160)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out-json", default=str(REPO / "docs" / "benchmarks.json"))
    parser.add_argument("--out-md", default=str(REPO / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    if args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must be > {WARMUP_STEPS}")

    import torch
    from rstar_models.store import prepare_model
    from rstar_trainer.datasets import write_ppm_dataset, write_sft_dataset
    from rstar_trainer.ppm_config import PPMConfig
    from rstar_trainer.ppm_trainer import train_ppm
    from rstar_trainer.sft_config import SFTConfig
    from rstar_trainer.sft_trainer import train_sft

    threads = torch.get_num_threads()
    model_dir = str(prepare_model())
    sft = sft_examples(args.examples)
    pairs = ppm_examples(sft)
    config = SFTConfig(learning_rate=5e-5, max_steps=args.steps, batch_size=args.batch_size, grad_accum=1,
                       max_length=768, weight_decay=0.0, save_steps=10_000, threads=threads)
    ppm_config = PPMConfig(learning_rate=2e-5, max_steps=args.steps, batch_size=4, grad_accum=1, max_length=512,
                           save_steps=10_000, threads=threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sft_set = write_sft_dataset(sft, tmp / "sft", round=0, sources={"bench": COMMAND})
        ppm_set = write_ppm_dataset(pairs, set(), tmp / "ppm", round=0, sources={"bench": COMMAND})
        sft_metrics = train_sft(model_dir, sft_set.path, tmp / "sft-out", tmp / "sft-work", config,
                                progress_bar=False)
        trainer_rate, trainer_rates = trainer_tokens_per_s(tmp / "sft-work")
        plain_rate, plain_rates = plain_loop_tokens_per_s(model_dir, Path(sft_set.path), config, args.steps)
        ppm_metrics = train_ppm(str(tmp / "sft-out"), ppm_set.path, tmp / "ppm-out",
                                tmp / "ppm-work", ppm_config, progress_bar=False)
    record = {
        "command": COMMAND,
        "machine": machine_line(),
        "date": time.strftime("%Y-%m-%d"),
        "threads": threads,
        "sft": {"examples": len(sft), "steps": args.steps, "batch_size": args.batch_size,
                "precision": sft_metrics["precision"],
                "trainer_tokens_per_s": round(trainer_rate, 1), "plain_loop_tokens_per_s": round(plain_rate, 1),
                "ratio": round(trainer_rate / plain_rate, 3),
                "trainer_rates": [round(r, 1) for r in trainer_rates],
                "plain_rates": [round(r, 1) for r in plain_rates]},
        "ppm": {"pairs": len(pairs), "steps": args.steps, "batch_size": ppm_config.batch_size,
                "pairs_per_s": ppm_metrics["pairs_per_s"], "train_s": ppm_metrics["train_s"]},
    }
    print(record, flush=True)
    write_reports(record, Path(args.out_json), Path(args.out_md))


def write_reports(record: dict, out_json: Path, out_md: Path) -> None:
    """The "train" record of docs/benchmarks.json and its section of docs/benchmarks.md."""
    write_record(out_json, "train", record)
    s, p = record["sft"], record["ppm"]
    replace_section(out_md, "train-bench", f"""<!-- train-bench:start -->
## Training speed (`{COMMAND}`)

{record['date']}, {record['machine']}, {record['threads']} torch threads, SmolLM2-135M-Instruct, {s['precision']}.
SFT on {s['examples']} verified GSM8K conversions, batch {s['batch_size']}, {s['steps']} optimizer steps
(the first {WARMUP_STEPS} left out); the plain loop runs the trainer's own batches.

| metric | value |
|---|---|
| SFT trainer (TRL), non-padding tokens/s | **{s['trainer_tokens_per_s']}** |
| plain torch loop (forward, backward, AdamW) on the same batches | {s['plain_loop_tokens_per_s']} |
| trainer ÷ plain loop | **{s['ratio']}** (goal ≥ 0.9) |
| PPM training pairs/s (batch {p['batch_size']} pairs, {p['steps']} steps) | **{p['pairs_per_s']}** |
<!-- train-bench:end -->
""")


if __name__ == "__main__":
    main()
