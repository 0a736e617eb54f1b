"""Measuring real MoE inference: sweep specs, the ``hf`` and ``vllm`` backends, result files.

Modules (the GPU machine has no pydantic and no altair, so nothing here imports them):

- :mod:`perfmodel.validate.sweep_spec` - the points of a sweep and their ids.
- :mod:`perfmodel.validate.results` - the JSONL result schema, atomic appends, resume.
- :mod:`perfmodel.validate.sweep` - the backend-agnostic sweep driver (resume, OOM rows, time budget).
- :mod:`perfmodel.validate.hf_runner` - the ``hf`` backend: transformers modeling code, StaticCache,
  CUDA-graph replay of decode steps, torch.profiler kernel split.
- :mod:`perfmodel.validate.vllm_backend` - the ``vllm`` backend (offline engine).
- :mod:`perfmodel.validate.cli` / :mod:`perfmodel.validate.measure` - the ``measure`` command.
"""
