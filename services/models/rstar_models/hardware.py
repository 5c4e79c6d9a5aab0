"""Which floating-point type the models should compute in on this machine.

bfloat16 halves memory and is what the models are stored in, but a CPU without AVX-512 has
no bf16 arithmetic: vLLM and PyTorch then emulate it, and it is several times slower than
float32. Measured on a 2-core AVX2-only host (docs/benchmarks.md, "Compute type"): the
compiled vLLM engine generated 42.8 tokens/s in bf16 against 164 in float32 at batch 64,
and a transformers forward (the PPM) ran 67 against 370 tokens/s. So unless a dtype is set
(``RSTAR_POLICY_DTYPE``, ``RSTAR_REWARD_DTYPE``), models compute in bfloat16 on GPUs that
support it and on CPUs with AVX-512 or ARM bf16, in float16 on older GPUs, and in float32
on other CPUs.

Not here: loading models (`engine`, `rstar_reward.ppm`).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

__all__ = ["cpu_flags", "cpu_has_fast_bf16", "cpu_model", "preferred_dtype"]

log = logging.getLogger(__name__)

# Any of these means the CPU computes bf16 natively or with AVX-512 conversions
# ("bf16" is the ARM flag; x86 reports avx512_bf16 / amx_bf16).
_FAST_BF16_FLAGS = frozenset({"avx512f", "avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (x86 ``flags``, ARM ``Features``); empty if unknown."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (what a benchmark's speed depends on), else the architecture."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_fast_bf16(flags: frozenset[str]) -> bool:
    """True when bf16 is not emulated on this CPU; unknown flags (not Linux) count as fast."""
    return not flags or bool(flags & _FAST_BF16_FLAGS)


@functools.cache
def preferred_dtype() -> str:
    """``"bfloat16"``, ``"float16"`` or ``"float32"``: the fastest safe type on this machine."""
    import torch

    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    flags = cpu_flags()
    dtype = "bfloat16" if cpu_has_fast_bf16(flags) else "float32"
    if dtype == "float32":
        log.info("this CPU has no AVX-512 or bf16 instructions: models compute in float32")
    return dtype
