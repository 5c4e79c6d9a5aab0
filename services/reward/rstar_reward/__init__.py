"""rstar reward service: the process preference model (PPM) and its in-process scorer."""

from .ppm import (
    MANIFEST_FILE,
    VALUE_HEAD_FILE,
    PPMOutput,
    PPMRewardModel,
    ProcessPreferenceModel,
    ScoringStats,
    build_ppm_dir,
    pairwise_loss,
    render_prefix,
)

__all__ = [
    "MANIFEST_FILE",
    "PPMOutput",
    "PPMRewardModel",
    "ProcessPreferenceModel",
    "ScoringStats",
    "VALUE_HEAD_FILE",
    "build_ppm_dir",
    "pairwise_loss",
    "render_prefix",
]
