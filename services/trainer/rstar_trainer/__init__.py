"""rstar trainer: per-round SFT of the policy and training of the PPM, and their datasets.

Runs in-process (embedded `rstar evolve`) or as a Celery worker on the `train` queue
(`python -m rstar_trainer`, the compose `trainer` service). Not here: choosing the
examples (`rstar_core.curation`), the model store (`rstar_models.registry`).
"""
