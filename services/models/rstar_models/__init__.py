"""rstar models: what the policy, the reward model and the trainer share about model files.

* `hardware`: which floating-point type models compute in on this machine.
* `store`: preparing a model (the bundled SmolLM2 GGUF, a local directory or a Hub id) into
  a local safetensors directory with a version manifest.
* `registry`: the model store of trained versions (one directory per version, written
  atomically) and their lineage and status in the system of record.

Not here: loading a model for serving (the policy's vLLM engine, the reward's PPM) or
training one (the trainer).
"""
