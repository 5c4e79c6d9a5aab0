"""rstar reward service: the process preference model (PPM), the ORM/PQM baselines and the in-process scorer."""

from .ppm import (
    MANIFEST_FILE,
    OBJECTIVES,
    VALUE_HEAD_FILE,
    PPMOutput,
    PPMRewardModel,
    ProcessPreferenceModel,
    ScoringStats,
    build_ppm_dir,
    outcome_loss,
    pairwise_loss,
    q_value_loss,
    render_prefix,
)

__all__ = [
    "MANIFEST_FILE",
    "OBJECTIVES",
    "PPMOutput",
    "PPMRewardModel",
    "ProcessPreferenceModel",
    "ScoringStats",
    "VALUE_HEAD_FILE",
    "build_ppm_dir",
    "outcome_loss",
    "pairwise_loss",
    "q_value_loss",
    "render_prefix",
]
