"""The SFT and PPM trainers on the real small model: loss falls, weights change, outputs load,
a killed run resumes, bad input changes nothing."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rstar_core.curation import PPMExample, SFTExample
from rstar_trainer.datasets import write_ppm_dataset, write_sft_dataset
from rstar_trainer.ppm_config import PPMConfig
from rstar_trainer.sft_config import SFTConfig
from tools import scratch_dir

pytestmark = pytest.mark.slow

TINY_SFT = dict(learning_rate=1e-4, batch_size=4, grad_accum=1, max_length=256, save_steps=2, threads=2)


def _example(i: int) -> SFTExample:
    a, b = i + 2, i + 5
    return SFTExample(f"p{i}", f"Sara has {a} apples and buys {b} more. How many apples does she have?",
                      (f"# She has {a} apples.\napples = {a}", f"# She buys {b} more.\ntotal = apples + {b}",
                       f"# Print the answer.\nprint(total)\nOutput: {a + b}", f"The answer is \\boxed{{{a + b}}}."),
                      "search", 1)


@pytest.fixture(scope="module")
def sft_set(tmp_path_factory):
    path = tmp_path_factory.mktemp("sets") / "sft"
    write_sft_dataset([_example(i) for i in range(16)], path, round=1, sources={})
    return path


@pytest.fixture(scope="module")
def ppm_set(tmp_path_factory):
    pairs = []
    for i in range(12):
        ex = _example(i)
        wrong = ex.steps[1].replace("+", "*")
        pairs.append(PPMExample(ex.problem_id, ex.question, ex.steps[:1], (ex.steps[1],), (wrong,), 0.5, -0.5,
                                False, 1))
    path = tmp_path_factory.mktemp("sets") / "ppm"
    write_ppm_dataset(pairs, {"p0", "p1", "p2", "p3"}, path, round=1, sources={})
    return path


@pytest.fixture(scope="module")
def sft_run(model_dir, sft_set, tmp_path_factory):
    from rstar_trainer.sft_trainer import train_sft

    with scratch_dir(tmp_path_factory, "sft") as root:
        metrics = train_sft(model_dir, sft_set, root / "out", root / "work", SFTConfig(max_steps=4, **TINY_SFT),
                            progress_bar=False)
        yield metrics, root


def test_sft_loss_falls_and_weights_change(model_dir, sft_run):
    metrics, root = sft_run
    assert metrics["steps"] == 4 and metrics["last_loss"] < metrics["first_loss"]
    assert metrics["tokens"] > 0 and metrics["tokens_per_s"] > 0
    base = load_file(str(Path(model_dir) / "model.safetensors"))
    tuned = load_file(str(root / "out" / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert tuned[name].dtype == torch.bfloat16
    assert not torch.equal(base[name], tuned[name])
    progress = [json.loads(line) for line in (root / "work" / "progress.jsonl").read_text().splitlines()]
    assert [p["step"] for p in progress] == [1, 2, 3, 4] and all(p["learning_rate"] for p in progress)


def test_sft_output_loads_and_generates(sft_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, root = sft_run
    model = AutoModelForCausalLM.from_pretrained(str(root / "out"))
    tokenizer = AutoTokenizer.from_pretrained(str(root / "out"))
    ids = tokenizer("Sara has 3 apples", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] > ids["input_ids"].shape[1]
    record = json.loads((root / "out" / "rstar_training.json").read_text())
    assert record["config"]["max_steps"] == 4 and record["dataset"]["kind"] == "sft"


def test_killed_sft_resumes_from_its_last_checkpoint(model_dir, sft_set, tmp_path):
    script = textwrap.dedent(f"""
        from rstar_trainer.sft_config import SFTConfig
        from rstar_trainer.sft_trainer import train_sft
        train_sft({model_dir!r}, {str(sft_set)!r}, {str(tmp_path / 'out')!r}, {str(tmp_path / 'work')!r},
                  SFTConfig(max_steps=8, **{TINY_SFT!r}), progress_bar=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    state = tmp_path / "work" / "checkpoint-2" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state.exists(), "the first run saved no checkpoint before it was killed"
    assert not (tmp_path / "out").exists(), "a killed run leaves no final model"
    # A checkpoint a kill interrupted mid-save (no trainer state yet) is never resumed from.
    (tmp_path / "work" / "checkpoint-9").mkdir()
    from rstar_trainer.sft_trainer import train_sft

    metrics = train_sft(model_dir, sft_set, tmp_path / "out", tmp_path / "work", SFTConfig(max_steps=8, **TINY_SFT),
                        progress_bar=False)
    assert metrics["resumed_from"] in ("checkpoint-2", "checkpoint-4", "checkpoint-6")
    assert metrics["steps"] == 8
    assert not (tmp_path / "work" / "checkpoint-9").exists()
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_ppm_training_learns_pairs_and_round_trips(sft_run, ppm_set, tmp_path):
    from rstar_reward import ProcessPreferenceModel
    from rstar_trainer.ppm_trainer import pair_accuracy, train_ppm

    _, root = sft_run
    config = PPMConfig(learning_rate=5e-5, max_steps=6, batch_size=4, grad_accum=1, max_length=256, save_steps=3,
                       threads=2)
    metrics = train_ppm(root / "out", ppm_set, tmp_path / "ppm", tmp_path / "work", config, progress_bar=False)
    assert metrics["steps"] == 6 and metrics["last_loss"] < metrics["first_loss"]
    assert metrics["heldout_pairs"] > 0 and 0 <= metrics["heldout_pair_accuracy"] <= 1
    model = ProcessPreferenceModel.from_pretrained(tmp_path / "ppm", dtype="float32")
    assert model.base_model == str(root / "out")
    from datasets import load_from_disk

    heldout = load_from_disk(str(ppm_set))["heldout"]
    assert pair_accuracy(model, heldout, config) == pytest.approx(metrics["heldout_pair_accuracy"], abs=0.26)


def test_bad_input_is_refused_before_anything_is_written(model_dir, sft_set, tmp_path):
    from rstar_trainer.sft_trainer import train_sft

    config = SFTConfig(max_steps=1, **TINY_SFT)
    with pytest.raises(ValueError, match="not a model directory"):
        train_sft(tmp_path / "nope", sft_set, tmp_path / "out", tmp_path / "work", config)
    with pytest.raises(ValueError, match="does not exist"):
        train_sft(model_dir, tmp_path / "no-set", tmp_path / "out", tmp_path / "work", config)
    foreign = tmp_path / "foreign"
    write_sft_dataset([_example(0)], foreign, round=1, sources={})
    manifest = json.loads((foreign / "rstar_dataset.json").read_text())
    (foreign / "rstar_dataset.json").write_text(json.dumps({**manifest, "tokenizer": "vocab-sha256:0000"}))
    with pytest.raises(ValueError, match="tokenized for tokenizer vocab-sha256:0000"):
        train_sft(model_dir, foreign, tmp_path / "out", tmp_path / "work", config)
    assert not (tmp_path / "out").exists()


def test_a_full_disk_leaves_no_half_model(model_dir, sft_set, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    from rstar_trainer.sft_trainer import train_sft

    def full_disk(self, path, *args, **kwargs):
        Path(path, "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full_disk)
    with pytest.raises(RuntimeError, match="no space left"):
        train_sft(model_dir, sft_set, tmp_path / "out", tmp_path / "work", SFTConfig(max_steps=1, save_steps=5,
                  **{k: v for k, v in TINY_SFT.items() if k != "save_steps"}), progress_bar=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_cpu_native_loss_equals_trls_fused_head(model_dir, sft_set, sft_run, tmp_path, monkeypatch):
    # On a CPU `train_sft` uses the model's own loss (`_NativeLossSFTTrainer`) instead of TRL's
    # fused LM head: one step through the fused head must log the same loss and accuracy.
    import rstar_trainer.sft_trainer as sft_trainer

    metrics, root = sft_run
    assert not sft_trainer._fused_head_pays(torch.nn.Linear(1, 1))  # this is the native path
    native = json.loads((root / "work" / "progress.jsonl").read_text().splitlines()[0])
    monkeypatch.setattr(sft_trainer, "_fused_head_pays", lambda model: True)
    sft_trainer.train_sft(model_dir, sft_set, tmp_path / "out", tmp_path / "work",
                          SFTConfig(max_steps=1, **TINY_SFT), progress_bar=False)
    fused = json.loads((tmp_path / "work" / "progress.jsonl").read_text().splitlines()[0])
    assert fused["loss"] == pytest.approx(native["loss"], rel=2e-3)
