"""Training settings: shared validation, recipe mappings, and the Accelerate launch configs we ship."""

from pathlib import Path

import pytest

from rstar_trainer.ppm_config import PPMConfig
from rstar_trainer.run_config import training_arguments
from rstar_trainer.sft_config import SFTConfig, config_from_mapping

REPO = Path(__file__).resolve().parents[2]


def test_each_config_keeps_its_own_defaults_over_the_shared_fields():
    assert SFTConfig().weight_decay == 0.1 and PPMConfig().weight_decay == 0.0
    assert SFTConfig().batch_size == 4 and PPMConfig().batch_size == 16
    assert "eval_batch_size" in PPMConfig().to_dict() and "eval_batch_size" not in SFTConfig().to_dict()


@pytest.mark.parametrize("cls", [SFTConfig, PPMConfig])
@pytest.mark.parametrize(("key", "value", "message"), [
    ("batch_size", 0, "batch_size must be a positive integer"),
    ("save_steps", True, "save_steps must be a positive integer"),
    ("learning_rate", 0, "learning_rate must be > 0"),
    ("max_steps", 0, "max_steps must be -1"),
    ("warmup_ratio", 1.0, "warmup_ratio must be in"),
    ("weight_decay", -1, "weight_decay must be >= 0"),
    ("threads", 0, "threads must be a positive integer or null"),
    ("gradient_checkpointing", "yes", "gradient_checkpointing must be true or false"),
])
def test_bad_values_are_named_for_both_runs(cls, key, value, message):
    with pytest.raises(ValueError, match=f"recipe.yaml: sft: {message}"):
        config_from_mapping(cls, {key: value}, source="recipe.yaml: sft")


def test_ppm_checks_its_own_field_and_unknown_keys_are_listed():
    with pytest.raises(ValueError, match="eval_batch_size must be a positive integer"):
        PPMConfig(eval_batch_size=0)
    with pytest.raises(ValueError, match=r"x: unknown key\(s\) eval_batch_size, lr"):
        config_from_mapping(SFTConfig, {"lr": 1e-5, "eval_batch_size": 2}, source="x")
    assert config_from_mapping(SFTConfig, None, source="x") == SFTConfig()


def test_training_arguments_follow_the_config():
    args = training_arguments(SFTConfig(max_steps=7, batch_size=2, grad_accum=3, group_by_length=False, seed=5),
                              "/tmp/w", progress_bar=False)
    assert args["max_steps"] == 7 and args["per_device_train_batch_size"] == 2
    assert args["gradient_accumulation_steps"] == 3 and args["train_sampling_strategy"] == "random"
    assert args["seed"] == args["data_seed"] == 5 and args["disable_tqdm"] is True
    # Off unless asked for, also for TRL's SFTConfig, whose own default is on.
    assert args["gradient_checkpointing"] is False
    assert training_arguments(SFTConfig(gradient_checkpointing=True), "/tmp/w",
                              progress_bar=False)["gradient_checkpointing"] is True
    from transformers import TrainingArguments

    TrainingArguments(**args, use_cpu=True)  # every keyword is one transformers knows


@pytest.mark.parametrize("name", ["single_gpu", "ddp", "fsdp", "deepspeed_zero3"])
def test_the_shipped_accelerate_configs_parse(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "deploy" / "accelerate" / f"{name}.yaml"))
    assert config.compute_environment.value == "LOCAL_MACHINE"
    expected = {"single_gpu": "NO", "ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero3": "DEEPSPEED"}[name]
    assert config.distributed_type.value == expected
    assert config.mixed_precision == "bf16"


@pytest.mark.parametrize(("dtype", "expected"), [("float32", (False, False)), ("bfloat16", (True, False)),
                                                 ("float16", (False, True))])
def test_precision_is_always_explicit_so_trl_cannot_turn_on_emulated_bf16(monkeypatch, dtype, expected):
    # TRL's SFT, DPO and GRPO configs default to bf16; on an AVX2-only CPU that emulates every
    # matrix product (an SFT step of minutes). Both switches are therefore always given.
    from trl import SFTConfig as TRLSFTConfig

    from rstar_trainer.common import precision_args

    monkeypatch.setattr("rstar_models.hardware.preferred_dtype", lambda: dtype)
    args = precision_args()
    assert (args["bf16"], args["fp16"]) == expected
    if dtype == "float32":
        assert TRLSFTConfig(output_dir="/tmp/x", use_cpu=True).bf16  # what TRL would do on its own
        assert not TRLSFTConfig(output_dir="/tmp/x", **args).bf16
