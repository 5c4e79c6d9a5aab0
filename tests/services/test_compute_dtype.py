"""The compute type the policy and the PPM pick by default: bf16 only where the hardware has it."""

from __future__ import annotations

import pytest

from rstar_models.hardware import cpu_flags, cpu_has_fast_bf16, preferred_dtype

AVX2_HOST = """processor\t: 0
model name\t: AMD EPYC
flags\t\t: fpu vme sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2 bmi2
"""
ZEN4_HOST = AVX2_HOST.replace("avx2 bmi2", "avx2 bmi2 avx512f avx512bw avx512_bf16")
ARM_HOST = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 bf16 i8mm\n"


def test_cpu_flags_reads_x86_flags_and_arm_features():
    assert {"avx2", "fma"} <= cpu_flags(AVX2_HOST)
    assert "bf16" in cpu_flags(ARM_HOST)
    assert cpu_flags("processor\t: 0\n") == frozenset()


@pytest.mark.parametrize("cpuinfo, fast", [
    (AVX2_HOST, False),  # bf16 emulated: float32 is ~4x faster (measured, rstar_models.hardware)
    (ZEN4_HOST, True),
    (ARM_HOST, True),
    ("", True),  # flags unknown (not Linux): keep bf16 as the models are stored
])
def test_bf16_is_fast_only_with_avx512_or_arm_bf16(cpuinfo, fast):
    assert cpu_has_fast_bf16(cpu_flags(cpuinfo)) is fast


def test_this_machine_computes_in_float32_exactly_when_its_cpu_lacks_bf16():
    import torch

    if torch.cuda.is_available():
        pytest.skip("GPU host: the CPU rule does not apply")
    expected = "bfloat16" if cpu_has_fast_bf16(cpu_flags()) else "float32"
    assert preferred_dtype() == expected


def test_services_and_embedded_mode_default_to_the_machine_dtype_and_accept_an_override(monkeypatch):
    from rstar_cli.embedded import EmbeddedSettings
    from rstar_policy.service import PolicyServiceSettings
    from rstar_reward.service import RewardServiceSettings

    assert PolicyServiceSettings.from_env({}).engine("m").dtype is None
    assert PolicyServiceSettings.from_env({"RSTAR_POLICY_DTYPE": "bfloat16"}).engine("m").dtype == "bfloat16"
    assert RewardServiceSettings.from_env({}).dtype is None
    assert RewardServiceSettings.from_env({"RSTAR_REWARD_DTYPE": "float32"}).dtype == "float32"
    monkeypatch.delenv("RSTAR_POLICY_DTYPE", raising=False)
    assert EmbeddedSettings.from_env().policy_dtype is None
    monkeypatch.setenv("RSTAR_POLICY_DTYPE", "float32")
    assert EmbeddedSettings.from_env().policy_dtype == "float32"
